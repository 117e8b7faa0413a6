"""The eraser's torch side: LaMa (big-lama's generator) and MI-GAN, their strict loaders and their ONNX graphs.

Random weights only; the models are tiny copies with the official key structure, except where a test needs the
full-size key set (built on the meta device, or MI-GAN's 6M-parameter 256 generator)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from eraser_models import randomize  # noqa: E402
from parity import record  # noqa: E402

from inpaintrt.export.eraser_lama import (  # noqa: E402
    LamaGenerator, export_lama_onnx, irfft2_matmul, load_lama_state_dict, rfft2_matmul)
from inpaintrt.export.eraser_migan import (  # noqa: E402
    MiganGenerator, export_migan_onnx, load_migan_state_dict, migan_layout, official_channels)


def lama_inputs(h, w, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, h, w, generator=g)
    mask = (torch.rand(batch, 1, h, w, generator=g) > 0.6).float()
    return image, mask


def dft_like_ops(model):
    found = []

    def walk(graph):
        for node in graph.node:
            found.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    for function in model.functions:
        walk(function)
    return found


# --- LaMa --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lama():
    return randomize(LamaGenerator(ngf=8, n_downsampling=3, n_blocks=2), seed=1)


@pytest.fixture(scope="module")
def lama_graph(lama, tmp_path_factory):
    return export_lama_onnx(lama, tmp_path_factory.mktemp("lama") / "lama.onnx")


@pytest.mark.parametrize("h,w", [(5, 7), (8, 6), (7, 8), (6, 5), (1, 1), (33, 50), (64, 64)])
def test_matmul_dft_matches_torch_fft(h, w):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=g)
    re, im = rfft2_matmul(x)
    ref = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
    assert re.shape == ref.shape
    forward = max(float((re - ref.real).abs().max()), float((im - ref.imag).abs().max()))
    # arbitrary half spectra: the DC / Nyquist imaginary parts must be ignored as torch's c2r does
    sr, si = torch.randn(2, 3, h, w // 2 + 1, generator=g), torch.randn(2, 3, h, w // 2 + 1, generator=g)
    inverse = float((irfft2_matmul(sr, si, (h, w))
                     - torch.fft.irfftn(torch.complex(sr, si), s=(h, w), dim=(-2, -1), norm="ortho")).abs().max())
    record("lama matmul DFT vs torch.fft (max abs)", max(forward, inverse))
    assert forward < 1e-5 and inverse < 1e-5


def test_lama_matmul_path_matches_fft_path(lama):
    image, mask = lama_inputs(40, 56)  # latent 5 x 7: odd height and width
    x = torch.cat([image * (1 - mask), mask], dim=1)
    with torch.no_grad():
        ref = lama.set_spectral("fft")(x)
        got = lama.set_spectral("matmul")(x)
        lama.set_spectral("fft")
    assert got.shape == (1, 3, 40, 56)
    assert 0.01 < float(ref.std()) and float(((ref > 0.001) & (ref < 0.999)).float().mean()) > 0.9  # not saturated
    diff = float((got - ref).abs().max())
    record("lama matmul vs fft generator (max abs)", diff)
    assert diff <= 1e-4


def test_lama_global_branch_matters(lama):
    """The parity above would be empty if the spectral path did nothing: zeroing it must move the output."""
    image, mask = lama_inputs(40, 56)
    x = torch.cat([image * (1 - mask), mask], dim=1)
    probe = LamaGenerator(ngf=8, n_downsampling=3, n_blocks=2)
    probe.load_state_dict(lama.state_dict())
    with torch.no_grad():
        for m in probe.modules():
            if type(m).__name__ == "FourierUnit":
                m.conv_layer.weight.zero_()
        moved = float((probe.eval()(x) - lama(x)).abs().max())
    assert moved > 1e-3


@pytest.mark.parametrize("h,w,batch", [(40, 56, 1), (64, 48, 1), (24, 32, 2)])
def test_lama_onnx_matches_torch(lama, lama_graph, h, w, batch):
    session = ort.InferenceSession(str(lama_graph), providers=["CPUExecutionProvider"])
    image, mask = lama_inputs(h, w, seed=h + w, batch=batch)
    with torch.no_grad():
        ref = lama.set_spectral("fft")(torch.cat([image * (1 - mask), mask], dim=1)).numpy()
    (got,) = session.run(["output"], {"image": image.numpy(), "mask": mask.numpy()})
    assert got.shape == (batch, 3, h, w)
    diff = float(np.abs(got - ref).max())
    record("lama onnx vs torch.fft (max abs)", diff)
    assert diff <= 1e-3


def test_lama_onnx_has_no_dft_and_dynamic_sizes(lama_graph):
    model = onnx.load(str(lama_graph))
    ops = dft_like_ops(model)
    assert not {"DFT", "STFT"} & set(ops)
    assert {"MatMul", "Cos", "Sin", "Range"} <= set(ops)  # the DFT matrices are built in the graph
    for value in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width", (value.name, dims)
    assert [i.name for i in model.graph.input] == ["image", "mask"]


def test_lama_official_key_names():
    """Names and shapes of big-lama's generator.model.* (advimman/lama ffc.py, FFCResNetGenerator with
    big-lama's config: ngf 64, 3 downsamplings, 18 blocks, ratio 0.75), built without memory on the meta device."""
    with torch.device("meta"):
        keys = {k: tuple(v.shape) for k, v in LamaGenerator().state_dict().items()}
    expected = {
        "model.1.ffc.convl2l.weight": (64, 4, 7, 7),
        "model.1.bn_l.running_mean": (64,),
        "model.3.ffc.convl2l.weight": (256, 128, 3, 3),
        "model.4.ffc.convl2l.weight": (128, 256, 3, 3),
        "model.4.ffc.convl2g.weight": (384, 256, 3, 3),
        "model.4.bn_g.num_batches_tracked": (),
        "model.5.conv1.ffc.convg2l.weight": (128, 384, 3, 3),
        "model.5.conv1.ffc.convg2g.conv1.0.weight": (192, 384, 1, 1),
        "model.5.conv1.ffc.convg2g.conv1.1.running_var": (192,),
        "model.5.conv1.ffc.convg2g.fu.conv_layer.weight": (384, 384, 1, 1),
        "model.5.conv1.ffc.convg2g.fu.bn.weight": (384,),
        "model.5.conv1.ffc.convg2g.conv2.weight": (384, 192, 1, 1),
        "model.22.conv2.bn_g.running_var": (384,),
        "model.24.weight": (512, 256, 3, 3),
        "model.24.bias": (256,),
        "model.31.running_mean": (64,),
        "model.34.weight": (3, 64, 7, 7),
        "model.34.bias": (3,),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key
    assert len(keys) == 989
    assert not any(k.startswith(("model.0.", "model.23.", "model.35.")) or ".lfu." in k
                   or ("convl2g" in k and k.startswith(("model.1.", "model.2.", "model.3."))) for k in keys)


def test_lama_loads_lightning_checkpoint(lama):
    weights = {f"generator.{k}": v.clone() for k, v in lama.state_dict().items()}
    weights["discriminator.model0.0.ffc.convl2l.weight"] = torch.zeros(3)
    weights["loss_resnet_pl.impl.conv1.weight"] = torch.zeros(2)
    fresh = load_lama_state_dict(LamaGenerator(ngf=8, n_blocks=2), {"state_dict": weights, "epoch": 3}).eval()
    x = torch.cat(lama_inputs(24, 32), dim=1)[:, :4]
    with torch.no_grad():
        assert torch.equal(fresh(x), lama(x))
    assert torch.equal(fresh.state_dict()["model.5.conv1.bn_g.running_mean"],
                       lama.state_dict()["model.5.conv1.bn_g.running_mean"])
    load_lama_state_dict(LamaGenerator(ngf=8, n_blocks=2), weights)  # the bare state_dict too
    load_lama_state_dict(LamaGenerator(ngf=8, n_blocks=2), lama.state_dict())  # and a plain model.* dict


def test_lama_strict_loading_names_keys(lama):
    weights = dict(lama.state_dict())
    weights["model.5.conv1.ffc.convg2g.lfu.conv_layer.weight"] = torch.zeros(1)
    del weights["model.6.conv2.ffc.convg2g.fu.conv_layer.weight"]
    with pytest.raises(ValueError) as info:
        load_lama_state_dict(LamaGenerator(ngf=8, n_blocks=2), weights)
    text = str(info.value)
    assert "missing keys: 1 (model.6.conv2.ffc.convg2g.fu.conv_layer.weight)" in text
    assert "unexpected keys: 1 (model.5.conv1.ffc.convg2g.lfu.conv_layer.weight)" in text
    assert "best.ckpt" in text
    with pytest.raises(ValueError, match=r"wrong shapes: \d+ \(model\.1\.bn_l\.bias \(8,\) != \(16,\)"):
        load_lama_state_dict(LamaGenerator(ngf=16, n_blocks=2), lama.state_dict())
    with pytest.raises(ValueError, match=r"missing keys: \d+ \(.*unexpected keys: \d+ \("):  # a block more
        load_lama_state_dict(LamaGenerator(ngf=8, n_blocks=3), lama.state_dict())


# --- MI-GAN ------------------------------------------------------------------------------------------------

TINY_RES = 32


@pytest.fixture(scope="module")
def migan():
    return randomize(MiganGenerator(TINY_RES, official_channels(TINY_RES, ch_base=256, ch_max=16)), seed=2)


def migan_inputs(res, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, res, res, generator=g) * 2 - 1
    return image, (torch.rand(batch, 1, res, res, generator=g) > 0.4).float()


def test_migan_loader_detects_layout(migan):
    loaded = load_migan_state_dict({k: v.clone() for k, v in migan.state_dict().items()})
    assert loaded.resolution == TINY_RES and not loaded.training
    image, mask = migan_inputs(TINY_RES)
    x = torch.cat([mask - 0.5, image * mask], dim=1)
    with torch.no_grad():
        out = loaded(x)
        assert torch.equal(out, migan(x))
    assert out.shape == (1, 3, TINY_RES, TINY_RES) and float(out.std()) > 0.01
    real = MiganGenerator(256)  # the official widths: 128 at 256, 256 at 128, 512 below
    assert load_migan_state_dict(real.state_dict()).resolution == 256
    assert migan_layout(real.state_dict()) == (256, official_channels(256))
    with torch.device("meta"):
        big = MiganGenerator(512).state_dict()
    assert migan_layout(big) == (512, {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64})


def test_migan_official_key_names():
    """The b512 keys MI-GAN's current migan_inference.py gives (as listed in its issue #12's load error)."""
    with torch.device("meta"):
        keys = MiganGenerator(512).state_dict()
    expected = {f"synthesis.b512.{k}" for k in (
        "conv1.noise_strength", "conv1.noise_const", "conv1.conv1.weight", "conv1.conv1.bias", "conv1.conv2.weight",
        "conv1.upsample.filter_const", "conv1.upsample.filter.weight", "conv2.noise_strength", "conv2.noise_const",
        "conv2.conv1.weight", "conv2.conv1.bias", "conv2.conv2.weight", "torgb.weight", "torgb.bias",
        "upsample.filter_const", "upsample.filter.weight")} | {f"encoder.b512.{k}" for k in (
        "fromrgb.weight", "fromrgb.bias", "conv1.conv1.weight", "conv1.conv1.bias", "conv1.conv2.weight",
        "conv2.conv1.weight", "conv2.conv1.bias", "conv2.conv2.weight", "conv2.downsample.filter.weight")}
    assert {k for k in keys if ".b512." in k} == expected
    assert tuple(keys["synthesis.b512.conv1.upsample.filter_const"].shape) == (1, 1, 512, 512)
    assert tuple(keys["encoder.b512.fromrgb.weight"].shape) == (64, 4, 1, 1)
    assert "encoder.b4.conv2.downsample.filter.weight" not in keys and "synthesis.b4.conv2.noise_const" not in keys


def test_migan_strict_loading_names_keys(migan):
    weights = dict(migan.state_dict())
    # the layout from before 2023-10-22: a ConvTranspose2d where filter_const is now
    weights["synthesis.b16.upsample.insert_zeros.weight"] = torch.zeros(3, 1, 2, 2)
    del weights["synthesis.b16.upsample.filter_const"]
    with pytest.raises(ValueError) as info:
        load_migan_state_dict(weights)
    text = str(info.value)
    assert "missing keys: 1 (synthesis.b16.upsample.filter_const)" in text
    assert "unexpected keys: 1 (synthesis.b16.upsample.insert_zeros.weight)" in text
    assert "migan_256" in text
    extra = dict(migan.state_dict(), **{"encoder.b32.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: 1 \(encoder\.b32\.extra\.weight\)"):
        load_migan_state_dict(extra)
    with pytest.raises(ValueError, match="cannot tell the MI-GAN resolution"):
        load_migan_state_dict({k: v for k, v in migan.state_dict().items() if "fromrgb" not in k})


def test_migan_onnx_matches_torch(migan, tmp_path):
    path = export_migan_onnx(migan, tmp_path / "migan.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image", "mask"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 2):  # the batch axis is dynamic; the resolution is the generator's
        image, mask = migan_inputs(TINY_RES, batch=batch, seed=batch)
        with torch.no_grad():
            ref = migan(torch.cat([mask - 0.5, image * mask], dim=1)).numpy() * 0.5 + 0.5
        # the stored graph speaks every eraser's terms: the picture in [0, 1], the mask 1 = hole
        feeds = {"image": (image.numpy() + 1) / 2, "mask": 1 - mask.numpy()}
        (got,) = session.run(["output"], feeds)
        assert got.shape == (batch, 3, TINY_RES, TINY_RES)
        diff = float(np.abs(got - ref).max())
        record("migan onnx vs torch (max abs)", diff)
        assert diff <= 1e-3
