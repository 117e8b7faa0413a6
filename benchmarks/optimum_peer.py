"""optimum-intel's OVStableDiffusionInpaintPipeline as a peer in bench_cpu.py.

optimum-intel 2.2 cannot be installed beside the project's diffusers 0.42.1 (huggingface-hub ranges that do
not meet), so it lives in a venv of its own (`bash benchmarks/optimum_venv.sh`) and bench_cpu.py runs this
variant's child processes with that venv's python. This module is the optimum-intel specific part:

- `export`: once per model, outside the timed children (like our own export): optimum-intel converts the
  diffusers folder to OpenVINO IR, weights kept in fp32 (no int8 compression), into `<out>/<name>-optimum-intel`.
- `pipeline_parts`: in a child, load that IR with OpenVINO's bf16 inference precision and return the
  end-to-end call and the per-part calls that bench_cpu.py times, like its `_ours` and `_theirs`.

Noise: the OV pipeline subclasses diffusers' StableDiffusionInpaintPipeline and keeps its `__call__`; the
VAE encoder's moments become diffusers' DiagonalGaussianDistribution. Every draw therefore goes through
diffusers' `randn_tensor`, which `inpaintrt.export.replay.numpy_randn` replaces, so this peer's image is made
from the same numpy noise as the others and its PSNR against diffusers fp32 is meaningful.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv-optimum" / "bin" / "python"
SETUP = "bash benchmarks/optimum_venv.sh"
# ours -> OpenVINO's inference precision hint (the same config inpaintrt's openvino backend compiles with)
PRECISIONS = {"bf16": "bf16", "fp32": "f32"}


def default_python() -> str | None:
    return str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else None


def ir_dir(out: Path, name: str) -> Path:
    return out / f"{name}-optimum-intel"


def export(model: Path, ir: Path, python: str) -> None:
    """Convert the diffusers folder to OpenVINO IR with optimum-intel, in the peer's venv, once: written
    to a temporary folder and renamed into place when complete, so a stopped export is redone."""
    if (ir / "model_index.json").exists():
        return
    subprocess.run([python, __file__, "--export", str(model), str(ir)], check=True)


def _export(model: Path, ir: Path) -> None:
    from optimum.intel import OVStableDiffusionInpaintPipeline

    partial, source = ir.with_name(ir.name + ".partial"), ir.with_name(ir.name + ".source")
    shutil.rmtree(partial, ignore_errors=True)
    # load_in_8bit=False: keep fp32 weights (optimum-intel compresses models over 1e9 weights to int8 by
    # default); compile=False: only convert here, the children compile
    pipe = OVStableDiffusionInpaintPipeline.from_pretrained(str(_readable_copy(model, source)), export=True,
                                                            load_in_8bit=False, compile=False)
    pipe.save_pretrained(str(partial))
    partial.rename(ir)
    shutil.rmtree(source, ignore_errors=True)


def _readable_copy(model: Path, source: Path) -> Path:
    """The model folder as this venv's transformers reads it. transformers 5.23 (the project's) saves a
    CLIPTextModel's weights without the `text_model.` prefix; transformers 5.5 (optimum-intel's) does not
    map them back and initialises the text encoder at random, with only a warning, so the peer would run a
    different model. Returns `model` when its names already match, else a copy (links to every other
    file) whose text encoder weights carry the prefix."""
    from safetensors.torch import load_file, save_file

    weights = model / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    if all(k.startswith("text_model.") for k in tensors):
        return model
    shutil.rmtree(source, ignore_errors=True)
    for f in model.rglob("*"):
        if f.is_file() and f != weights:
            (source / f.relative_to(model)).parent.mkdir(parents=True, exist_ok=True)
            (source / f.relative_to(model)).symlink_to(f.resolve())
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()},
              source / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
    return source


def pipeline_parts(ir: Path, steps: int, pixels: int, image, mask, precision: str, prompt: str, negative: str):
    """Load the IR (compiling every part for the CPU) and return (end-to-end call, {part: call})."""
    import torch
    from optimum.intel import OVStableDiffusionInpaintPipeline

    from inpaintrt.export.replay import numpy_randn

    torch.set_grad_enabled(False)
    # PERFORMANCE_HINT LATENCY is optimum-intel's own default, named here as inpaintrt's backend names it
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
    pipe = OVStableDiffusionInpaintPipeline.from_pretrained(str(ir), ov_config=config)
    pipe.set_progress_bar_config(disable=True)
    h = pixels // 8
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(2, pipe.unet.config.in_channels, h, h)
    emb = torch.zeros(2, 77, pipe.unet.config.cross_attention_dim)
    picture, z = torch.zeros(1, 3, pixels, pixels), torch.zeros(1, 4, h, h)

    def run():  # numpy noise of seed 0, as ours draws it
        with numpy_randn(0):
            return pipe(prompt=prompt, negative_prompt=negative, image=image, mask_image=mask, height=pixels,
                        width=pixels, num_inference_steps=steps, output_type="np").images

    parts = {
        "text_encoder": lambda: pipe.text_encoder(ids),
        # the timestep as the pipeline's loop passes it: one scalar for the guided batch of two
        "unet_step": lambda: pipe.unet(x, torch.tensor(500), encoder_hidden_states=emb),
        "vae_encode": lambda: pipe.vae.encode(picture),
        "vae_decode": lambda: pipe.vae.decode(z),
    }
    return run, parts


if __name__ == "__main__":
    if sys.argv[1:2] != ["--export"] or len(sys.argv) != 4:
        sys.exit("usage: optimum_peer.py --export MODEL_DIR IR_DIR (bench_cpu.py runs it)")
    _export(Path(sys.argv[2]), Path(sys.argv[3]))
