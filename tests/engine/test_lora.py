"""LoRA at load time (Engine.load(loras=...)) and baked in at export, against diffusers' load_lora_weights +
set_adapters + fuse_lora, on tiny checkpoints with LoRAs made by peft (random non-zero up weights)."""
import json
import shutil

import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.backends import BackendError
from inpaintrt.engine.lora import LoraError
from lora_helpers import diffusers_with_loras, make_lora, to_kohya

SIZE = dict(height=104, width=160)
ARGS = dict(prompt="a red bench in a park", negative_prompt="blurry", num_inference_steps=3, output_type="np", **SIZE)


@pytest.fixture(scope="module")
def loras(checkpoints, tmp_path_factory):
    """{name: file}: per channel count a LoRA with text-encoder and conv (LoCon) layers and a second one,
    each in diffusers' and kohya's layout; a UNet-only LCM-LoRA-layout file."""
    root = tmp_path_factory.mktemp("loras")
    found = {}
    for ch, checkpoint in checkpoints.items():
        found[f"a{ch}"] = make_lora(checkpoint, root / f"a{ch}.safetensors", seed=ch, conv=True)
        found[f"b{ch}"] = make_lora(checkpoint, root / f"b{ch}.safetensors", seed=ch + 1, rank=2, alpha=1.0)
        for name in (f"a{ch}", f"b{ch}"):
            found[f"{name}_kohya"] = to_kohya(found[name], root / f"{name}_kohya.safetensors", alpha=3.0)
    found["lcm"] = make_lora(checkpoints[9], root / "lcm.safetensors", seed=5, text=False)
    return found


def run_both(checkpoint, engine_dir, files, seed=7, scheduler="euler", backend="ort-cpu", **args):
    """(diffusers with the LoRAs fused, the engine with them at load)."""
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = {**ARGS, **args}
    expected = diffusers_inpaint(diffusers_with_loras(checkpoint, files), seed, scheduler, image=image,
                                 mask_image=mask, **args)
    engine = Engine.load(engine_dir, backend=backend, loras=[(str(f), s) for f, s in files])
    got = engine.inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(seed), progress=False,
                         **args).images
    return expected, got, engine


def plain_run(engine_dir, seed=7, scheduler="euler", **args):
    return Engine.load(engine_dir, backend="ort-cpu").inpaint(
        sample_image(160, 104), sample_mask(160, 104), scheduler=scheduler, generator=np.random.default_rng(seed),
        progress=False, **{**ARGS, **args}).images


@pytest.mark.parametrize("channels,names", [
    (9, [("a", 0.8)]), (9, [("a_kohya", 0.8)]), (4, [("a", 0.8), ("b", 0.4)]),
    (4, [("a_kohya", 1.0), ("b_kohya", 0.5)]), (9, [("a", 0.8), ("b_kohya", 0.4)]),
], ids=["9ch-diffusers", "9ch-kohya", "4ch-two-diffusers", "4ch-two-kohya", "9ch-mixed"])
def test_matches_diffusers(checkpoints, engines, loras, channels, names):
    files = [(loras[f"{n.split('_')[0]}{channels}" + ("_kohya" if "kohya" in n else "")], s) for n, s in names]
    expected, got, engine = run_both(checkpoints[channels], engines[channels], files)
    assert got.shape == expected.shape == (1, 104, 160, 3)
    assert record("LoRA image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3
    # the LoRA matters: without it the engine is far from diffusers-with-LoRA
    assert np.abs(plain_run(engines[channels]) - expected).max() > 5e-2
    assert [(e["name"], e["scale"], e["baked"]) for e in engine.loras] == [(f.name, s, False) for f, s in files]
    assert all(e["sha256"].startswith("sha256:") for e in engine.loras)


def test_without_loras_unchanged(engines, loras):
    """The same directory loaded without LoRAs after a LoRA load gives the plain results, bit for bit."""
    before = plain_run(engines[9])
    Engine.load(engines[9], backend="ort-cpu", loras=[(loras["a9"], 1.0)])
    assert np.array_equal(plain_run(engines[9]), before)
    assert Engine.load(engines[9], backend="ort-cpu").loras == []


def test_lcm_lora_recipe(checkpoints, engines, loras):
    """An LCM-LoRA (a UNet-only diffusers-layout file) with the LCM scheduler, 4 steps, no guidance."""
    recipe = dict(num_inference_steps=4, guidance_scale=1.0, negative_prompt=None)
    expected, got, _ = run_both(checkpoints[9], engines[9], [(loras["lcm"], 1.0)], scheduler="lcm", **recipe)
    assert record("LCM-LoRA image, max abs diff", np.abs(got - expected).max()) <= 1e-3
    assert np.abs(plain_run(engines[9], scheduler="lcm", **recipe) - expected).max() > 5e-2


@pytest.fixture(scope="module")
def sdxl_loras(sdxl_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-loras")
    a = make_lora(sdxl_checkpoints["inpaint"], root / "xl.safetensors", seed=3, conv=True)
    return {"diffusers": a, "kohya": to_kohya(a, root / "xl_kohya.safetensors", alpha=2.0, ldm=True)}


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_sdxl_matches_diffusers(sdxl_checkpoints, sdxl_engines, sdxl_loras, layout):
    """Both text encoders and the UNet; kohya's SDXL files name UNet blocks as LDM does (input_blocks_4_1_…)."""
    files = [(sdxl_loras[layout], 0.7)]
    expected, got, _ = run_both(sdxl_checkpoints["inpaint"], sdxl_engines["inpaint"], files, seed=5)
    assert record("SDXL LoRA image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3
    assert np.abs(plain_run(sdxl_engines["inpaint"], seed=5) - expected).max() > 5e-2


def _rewrite(source, path, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source))
    change(tensors)
    save_file(tensors, str(path))
    return path


def test_refused_by_name(engines, loras, sdxl_loras, tmp_path):
    """Anything the engine cannot apply is an error naming the key, never skipped."""
    def load(path):
        return Engine.load(engines[9], backend="ort-cpu", loras=[(path, 1.0)])

    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    cases = {
        "unknown": (lambda t: t.update({"lora_unet_no_such_layer.lora_down.weight": t[f"{key}.lora_down.weight"],
                                        "lora_unet_no_such_layer.lora_up.weight": t[f"{key}.lora_up.weight"]}),
                    "lora_unet_no_such_layer"),
        "dora-shape": (lambda t: t.update({f"{key}.dora_scale": np.ones(4, np.float32)}), f"{key}.dora_scale"),
        "nan": (lambda t: t[f"{key}.lora_up.weight"].__setitem__((0, 0), np.nan), f"{key}.lora_up.weight"),
        "rank": (lambda t: t.update({f"{key}.lora_up.weight": t[f"{key}.lora_up.weight"][:, :3]}),
                 f"{key}.lora_up.weight"),
        "shape": (lambda t: t.update({f"{key}.lora_down.weight": np.ones((4, 5, 1, 1), np.float32)}), key),
        "half": (lambda t: t.pop(f"{key}.lora_up.weight"), key),
    }
    for name, (change, named) in cases.items():
        path = _rewrite(loras["a9_kohya"], tmp_path / f"{name}.safetensors", change)
        with pytest.raises(LoraError, match=named):
            load(path)
    with pytest.raises(LoraError, match="another model architecture"):  # an SDXL LoRA on an SD 1.x engine
        load(sdxl_loras["kohya"])
    with pytest.raises(LoraError, match="does not exist"):
        load(tmp_path / "missing.safetensors")


def test_old_engine_and_other_backends(engines, loras, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(engines[9], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["lora_map"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoraError, match="re-export"):
        Engine.load(old, backend="ort-cpu", loras=[(loras["a9"], 1.0)])
    for backend in ("openvino", "tensorrt"):
        with pytest.raises(BackendError, match="ort-cpu and ort-cuda.*--lora"):
            Engine.load(engines[9], backend=backend, loras=[(loras["a9"], 1.0)])
    with pytest.raises(LoraError, match="scale"):
        Engine.load(engines[9], backend="ort-cpu", loras=[(loras["a9"], "strong")])
