"""Segment Anything's torch side: the modules' key layout against the official checkpoints', the layout reader and
strict loader, and the two ONNX graphs against SamPredictor's path in torch.

Tiny random copies with the official key structure (tests/support/sam_models.py); full-size state dicts only on the
meta device. With segment-anything 1.0's wheel on disk (INPAINTRT_SAM_WHEEL, default /tmp/samref/...), its own
modeling code is a second reference."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from parity import record  # noqa: E402
from sam_models import (  # noqa: E402
    SAM_WHEEL, TINY_TINYVIT, TINY_VIT, graph_prompt, official_sam, official_tiny, randomize_sam, tiny_sam)

from inpaintrt.export.segment_sam import (  # noqa: E402
    SAM_VARIANTS, SamModel, export_sam_decoder_onnx, export_sam_encoder_onnx, load_sam, preprocess_size, sam_layout,
    sam_predict)
from inpaintrt.export.segment_sam_onnx import DECODER_INPUTS, DECODER_OUTPUTS, crop_size  # noqa: E402


def relative(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def meta_state(name):
    with torch.device("meta"):
        return SamModel(SAM_VARIANTS[name]).state_dict()


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def vit():
    return tiny_sam(TINY_VIT, seed=3)


@pytest.fixture(scope="module")
def mobile():
    return tiny_sam(TINY_TINYVIT, seed=4)


@pytest.fixture(scope="module")
def decoders(vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("sam-decoder")
    return {multi: session(export_sam_decoder_onnx(vit, root / f"decoder-{multi}.onnx", multimask_output=multi))
            for multi in (True, False)}


# --- key layout ----------------------------------------------------------------------------------------------

def test_vit_official_key_names():
    """Names and shapes of sam_vit_b_01ec64.pth's keys (build_sam_vit_b: 768 wide, 12 blocks, 12 heads)."""
    keys = {k: tuple(v.shape) for k, v in meta_state("vit_b").items()}
    expected = {
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # a 14-wide window
        "image_encoder.blocks.2.attn.rel_pos_w": (127, 64),  # global: the 64-wide grid
        "image_encoder.blocks.11.attn.qkv.weight": (2304, 768),
        "image_encoder.blocks.11.mlp.lin1.weight": (3072, 768),
        "image_encoder.neck.0.weight": (256, 768, 1, 1),
        "image_encoder.neck.3.bias": (256,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "prompt_encoder.point_embeddings.3.weight": (1, 256),
        "prompt_encoder.not_a_point_embed.weight": (1, 256),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.4.weight": (16,),
        "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
        "prompt_encoder.no_mask_embed.weight": (1, 256),
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (128, 256),
        "mask_decoder.transformer.layers.1.self_attn.out_proj.weight": (256, 256),
        "mask_decoder.transformer.layers.1.mlp.lin1.weight": (2048, 256),
        "mask_decoder.transformer.layers.1.norm4.weight": (256,),
        "mask_decoder.transformer.final_attn_token_to_image.v_proj.weight": (128, 256),
        "mask_decoder.transformer.norm_final_attn.bias": (256,),
        "mask_decoder.iou_token.weight": (1, 256),
        "mask_decoder.mask_tokens.weight": (4, 256),
        "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        "mask_decoder.output_upscaling.1.weight": (64,),
        "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key
    assert not any("pixel_" in k or k.startswith("image_encoder.blocks.12.") for k in keys)
    decoder_keys = {k for k in keys if not k.startswith("image_encoder.")}
    # prompt encoder 17 (pe, 4 + 1 point tables, 5 mask convs / norms x 2, no-mask); mask decoder 120 (2 blocks x
    # (3 attentions x 8 + 4 norms x 2 + mlp 4), final attention 8 + norm 2, 2 tokens, upscaling 6, 4 + 1 MLPs x 6)
    assert len(decoder_keys) == 17 + 120
    assert decoder_keys == {k for k in meta_state("tiny_vit") if not k.startswith("image_encoder.")}


def test_tinyvit_official_key_names():
    """mobile_sam.pt's image encoder (build_sam_vit_t: TinyViT 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10)."""
    keys = {k: tuple(v.shape) for k, v in meta_state("tiny_vit").items()}
    expected = {
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.patch_embed.seq.2.bn.running_var": (64,),
        "image_encoder.layers.0.blocks.1.conv2.c.weight": (256, 1, 3, 3),
        "image_encoder.layers.0.blocks.1.conv3.bn.num_batches_tracked": (),
        "image_encoder.layers.0.downsample.conv1.c.weight": (128, 64, 1, 1),
        "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
        "image_encoder.layers.1.blocks.1.attn.qkv.weight": (384, 128),
        "image_encoder.layers.1.blocks.1.mlp.fc1.weight": (512, 128),
        "image_encoder.layers.1.blocks.1.local_conv.c.weight": (128, 1, 3, 3),
        "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
        "image_encoder.layers.2.blocks.5.attn.norm.weight": (160,),
        "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
        "image_encoder.layers.3.blocks.1.attn.attention_biases": (10, 49),
        "image_encoder.layers.3.blocks.1.mlp.norm.bias": (320,),
        "image_encoder.norm_head.weight": (320,),
        "image_encoder.head.weight": (1000, 320),
        "image_encoder.neck.0.weight": (256, 320, 1, 1),
    }
    for key, shape in expected.items():
        assert keys.get(key) == shape, key
    assert "image_encoder.layers.3.downsample.conv1.c.weight" not in keys
    assert not any(k.endswith("attention_bias_idxs") for k in keys)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "tiny_vit"])
def test_sam_layout_tells_variants_apart(name):
    state = meta_state(name)
    assert sam_layout(state) == name
    assert sam_layout({"model": state}) == name
    with torch.device("meta"):
        model = load_sam(state)
    assert model.config.name == name and model.img_size == 1024 and model.embedding_size == 64


def test_sam_layout_refuses_unknown_layouts():
    vit_b = meta_state("vit_b")
    shorter = {k: v for k, v in vit_b.items() if not k.startswith("image_encoder.blocks.11.")}
    with pytest.raises(ValueError, match=r"unknown SAM ViT layout: embedding width 768, 11 blocks"):
        sam_layout(shorter)
    moved = dict(vit_b)
    for axis in "hw":
        moved[f"image_encoder.blocks.2.attn.rel_pos_{axis}"] = torch.empty(27, 64, device="meta")
        moved[f"image_encoder.blocks.3.attn.rel_pos_{axis}"] = torch.empty(127, 64, device="meta")
    with pytest.raises(ValueError, match=r"vit_b's size\) whose global-attention blocks are \(3, 5, 8, 11\)"):
        sam_layout(moved)
    mobile = meta_state("tiny_vit")
    deeper = dict(mobile, **{k.replace("blocks.5.", "blocks.6."): v for k, v in mobile.items()
                             if k.startswith("image_encoder.layers.2.blocks.5.")})
    with pytest.raises(ValueError, match=r"TinyViT encoder with widths \(64, 128, 160, 320\) "
                                         r"and depths \(2, 2, 7, 2\)"):
        sam_layout(deeper)
    with pytest.raises(ValueError, match=r"not a SAM image encoder.*\['generator', 'model'\]"):
        sam_layout({"generator.model.1.weight": torch.zeros(1), "model.weight": torch.zeros(1)})


def test_strict_loading_names_keys(vit):
    weights = dict(vit.state_dict())
    del weights["mask_decoder.iou_prediction_head.layers.1.bias"]
    weights["mask_decoder.hf_token.weight"] = torch.zeros(1, 32)  # SAM-HQ's extra token
    with pytest.raises(ValueError) as info:
        load_sam(weights, TINY_VIT)
    text = str(info.value)
    assert "missing keys: 1 (mask_decoder.iou_prediction_head.layers.1.bias)" in text
    assert "unexpected keys: 1 (mask_decoder.hf_token.weight)" in text
    assert "sam_vit_h_4b8939.pth" in text and "mobile_sam.pt" in text
    wide = dict(vit.state_dict(), **{"image_encoder.blocks.0.attn.rel_pos_h": torch.zeros(15, 16)})
    with pytest.raises(ValueError, match=r"wrong shapes: 1 \(image_encoder\.blocks\.0\.attn\.rel_pos_h \(15, 16\) "
                                         r"!= \(5, 16\)\)"):
        load_sam(wide, TINY_VIT)
    fresh = load_sam({k: v.clone() for k, v in vit.state_dict().items()}, TINY_VIT)
    assert not fresh.training
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(fresh.image_encoder(image), vit.image_encoder(image))


def test_tinyvit_accepts_a_saved_bias_index(mobile):
    """Older TinyViT code saved attn.attention_bias_idxs: equal to ours it is dropped, otherwise refused."""
    weights = dict(mobile.state_dict())
    index = dict(mobile.named_buffers())["image_encoder.layers.2.blocks.0.attn.attention_bias_idxs"]
    assert index.shape == (9, 9) and int(index.max()) == 8 and int(index[0, 4]) == 3 + 1  # offset (1, 1) of a 3-window
    weights["image_encoder.layers.2.blocks.0.attn.attention_bias_idxs"] = index.clone()
    load_sam(weights, TINY_TINYVIT)
    weights["image_encoder.layers.2.blocks.0.attn.attention_bias_idxs"] = index.flip(0)
    with pytest.raises(ValueError, match=r"unexpected keys: 1 \(image_encoder\.layers\.2\.blocks\.0\.attn\."
                                         r"attention_bias_idxs\)"):
        load_sam(weights, TINY_TINYVIT)


# --- ONNX graphs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["vit", "mobile"])
def test_encoder_onnx_matches_torch(which, request, tmp_path):
    model = request.getfixturevalue(which)
    path = export_sam_encoder_onnx(model, tmp_path / "encoder.onnx")
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["image_embeddings"]
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model.image_encoder(image).numpy()
    (got,) = session(path).run(None, {"image": image.numpy()})
    assert got.shape == (1, 32, 8, 8) and ref.std() > 0.1
    error = relative(got, ref)
    record(f"sam {which} encoder onnx vs torch (relative)", error)
    assert error <= 1e-4


def test_big_encoder_keeps_weights_beside_it(vit, tmp_path, monkeypatch):
    """vit_h's encoder (2.5 GB) passes protobuf's 2 GiB: past INLINE_LIMIT the weights go to `<graph>.data`."""
    import inpaintrt.export.segment_sam_onnx as sam_onnx

    monkeypatch.setattr(sam_onnx, "INLINE_LIMIT", 0)
    path = export_sam_encoder_onnx(vit, tmp_path / "encoder.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = vit.image_encoder(image).numpy()
    assert relative(session(path).run(None, {"image": image.numpy()})[0], ref) <= 1e-4


CASES = {  # prompt in the 128-pixel S-frame, original image size (h, w), a low-res mask input or not
    "one point": (dict(points=[[70.5, 40.0]], labels=[1]), (300, 517), False),
    "points": (dict(points=[[10, 20], [100.25, 90], [64, 64]], labels=[1, 0, 1]), (64, 48), False),
    "box": (dict(box=[12.0, 30.5, 90.0, 101.0]), (128, 128), False),
    "points and box": (dict(points=[[50, 60], [20, 110]], labels=[0, 1], box=[5, 6, 120, 99]), (1000, 701), False),
    "point and mask": (dict(points=[[33, 97]], labels=[1]), (37, 90), True),
    "box and mask": (dict(box=[40, 40, 80, 127]), (90, 61), True),
}


def predictor_reference(model, embeddings, prompt, orig, mask, multimask):
    points = torch.tensor(prompt["points"], dtype=torch.float32)[None] if "points" in prompt else None
    labels = torch.tensor(prompt["labels"], dtype=torch.float32)[None] if "points" in prompt else None
    box = torch.tensor(prompt["box"], dtype=torch.float32)[None] if "box" in prompt else None
    return sam_predict(model, torch.from_numpy(embeddings), orig, points, labels, box,
                       torch.from_numpy(mask) if mask is not None else None, multimask)


def graph_feeds(embeddings, prompt, orig, mask):
    coords, labels = graph_prompt(prompt.get("points"), prompt.get("labels"), prompt.get("box"))
    return {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels,
            "mask_input": mask if mask is not None else np.zeros((1, 1, 32, 32), np.float32),
            "has_mask_input": np.array([1.0 if mask is not None else 0.0], np.float32),
            "orig_im_size": np.array(orig, np.float32)}


def case_inputs(name):
    prompt, orig, with_mask = CASES[name]
    seed = list(CASES).index(name)
    embeddings = np.random.default_rng(seed).standard_normal((1, 32, 8, 8)).astype(np.float32)
    mask = (np.random.default_rng(seed + 50).standard_normal((1, 1, 32, 32)) * 3).astype(np.float32) \
        if with_mask else None
    return embeddings, prompt, orig, mask


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("name", list(CASES))
def test_decoder_onnx_matches_predictor(vit, decoders, name, multimask):
    embeddings, prompt, orig, mask = case_inputs(name)
    masks, iou, low = (t.numpy() for t in predictor_reference(vit, embeddings, prompt, orig, mask, multimask))
    got = decoders[multimask].run(list(DECODER_OUTPUTS), graph_feeds(embeddings, prompt, orig, mask))
    k = 3 if multimask else 1
    assert masks.shape == (1, k, *orig) and iou.shape == (1, k) and low.shape == (1, k, 32, 32)
    assert float(masks.std()) > 0.1 * float(np.abs(masks).max()) > 0  # not a flat answer
    for label, ref, out in zip(DECODER_OUTPUTS, (masks, iou, low), got):
        assert out.shape == ref.shape, label
        error = relative(out, ref)
        record(f"sam decoder onnx vs SamPredictor path, {label} (relative)", error)
        assert error <= 1e-4, (label, error)


# sizes whose resized side float32 arithmetic (SamOnnxModel) rounds otherwise than SamPredictor's Python floats
AWKWARD_SIZES = [(6730, 7101), (6446, 7163), (7083, 7199), (6299, 7219), (7101, 6730), (300, 517), (1, 4000)]


def test_crop_size_follows_the_predictor(tmp_path):
    class Crop(torch.nn.Module):
        def forward(self, orig_im_size):
            return crop_size(orig_im_size, 1024)

    path = tmp_path / "crop.onnx"
    torch.onnx.export(Crop(), (torch.tensor([480.0, 640.0]),), str(path), input_names=["orig_im_size"],
                      output_names=["size"], opset_version=17, dynamo=False)
    run = session(path)
    for orig in AWKWARD_SIZES:
        want = preprocess_size(*orig, 1024)
        (got,) = run.run(None, {"orig_im_size": np.array(orig, np.float32)})
        assert tuple(got) == want == tuple(crop_size(torch.tensor(orig, dtype=torch.float32), 1024).tolist()), orig
    assert preprocess_size(6730, 7101, 1024) == (970, 1024)  # float32 would give 971


def test_decoder_prompt_parts_matter(vit):
    """The parity above would hold for a decoder that ignored a prompt part: each one must move the answer."""
    embeddings, prompt, orig, mask = case_inputs("points and box")
    base = predictor_reference(vit, embeddings, prompt, orig, mask, True)[0]
    for changed in (dict(prompt, labels=[1, 1]), dict(prompt, box=[5, 6, 60, 99]),
                    {k: v for k, v in prompt.items() if k != "box"}):
        moved = predictor_reference(vit, embeddings, changed, orig, mask, True)[0]
        assert float((moved - base).abs().max()) > 1e-3
    masked = predictor_reference(vit, embeddings, prompt, orig, case_inputs("point and mask")[3], True)[0]
    assert float((masked - base).abs().max()) > 1e-3


def test_decoder_graph_axes(decoders, vit, tmp_path):
    graph = onnx.load(str(export_sam_decoder_onnx(vit, tmp_path / "d.onnx", multimask_output=False)))
    assert [i.name for i in graph.graph.input] == list(DECODER_INPUTS)
    assert [o.name for o in graph.graph.output] == list(DECODER_OUTPUTS)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.graph.input) + list(graph.graph.output)}
    assert dims["point_coords"] == [1, "num_points", 2] and dims["point_labels"] == [1, "num_points"]
    assert dims["masks"] == [1, 1, "height", "width"] and dims["mask_input"] == [1, 1, 32, 32]
    assert dims["orig_im_size"] == [2] and dims["has_mask_input"] == [1]


# --- the official code as a reference ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    found = official_sam(tmp_path_factory.mktemp("segment-anything"))
    if found is None:
        pytest.skip(f"segment-anything is neither installed nor at {SAM_WHEEL}: pip install --no-deps "
                    "segment-anything==1.0")
    return found


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_builders_have_our_keys(official, name):
    _, build, _ = official
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in build.sam_model_registry[name]().state_dict().items()}
    assert theirs == {k: tuple(v.shape) for k, v in meta_state(name).items()}


def test_official_modules_give_our_outputs(official, tmp_path):
    """Their Sam at our tiny sizes, random weights, loaded strictly into ours: the encoder, SamPredictor's path
    (prompt encoder, mask decoder, Sam.postprocess_masks) and their SamOnnxModel against our graphs."""
    modeling, _, sam_onnx = official
    theirs = randomize_sam(official_tiny(modeling), seed=11)
    ours = load_sam(theirs.state_dict(), TINY_VIT)
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        error = relative(ours.image_encoder(image), theirs.image_encoder(image))
    record("sam encoder vs official (relative)", error)
    assert error <= 1e-5
    graphs = {m: session(export_sam_decoder_onnx(ours, tmp_path / f"{m}.onnx", multimask_output=m)) for m in (1, 0)}
    reference = sam_onnx.SamOnnxModel(theirs, return_single_mask=False)
    for name in CASES:
        embeddings, prompt, orig, mask = case_inputs(name)
        feeds = graph_feeds(embeddings, prompt, orig, mask)
        with torch.no_grad():
            every = reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})  # all four mask tokens
            for multimask in (True, False):
                points = (torch.from_numpy(feeds["point_coords"][:, :len(prompt.get("labels", []))]),
                          torch.from_numpy(feeds["point_labels"][:, :len(prompt.get("labels", []))])) \
                    if "points" in prompt else None
                box = torch.tensor(prompt["box"], dtype=torch.float32)[None] if "box" in prompt else None
                sparse, dense = theirs.prompt_encoder(points, box, torch.from_numpy(mask) if mask is not None else None)
                low, iou = theirs.mask_decoder(torch.from_numpy(embeddings), theirs.prompt_encoder.get_dense_pe(),
                                               sparse, dense, multimask)
                masks = theirs.postprocess_masks(low, preprocess_size(*orig, 128), orig)
                keep = slice(1, None) if multimask else slice(0, 1)
                got = graphs[multimask].run(list(DECODER_OUTPUTS), feeds)
                for label, ref, onnx_ref, out in zip(DECODER_OUTPUTS, (masks, iou, low), every, got):
                    error = relative(out, ref)
                    record(f"sam decoder onnx vs official SamPredictor path, {label} (relative)", error)
                    assert error <= 1e-4, (name, multimask, label, error)
                    error = relative(out, onnx_ref[:, keep])
                    record(f"sam decoder onnx vs official SamOnnxModel, {label} (relative)", error)
                    assert error <= 1e-4, (name, multimask, label, error)
