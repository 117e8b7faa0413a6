"""Tiny erasers with the official key structure and random weights (BatchNorm running statistics included),
their checkpoints in the official formats, and the engine directories exported from them."""
from __future__ import annotations

from pathlib import Path

import torch

from inpaintrt.export.eraser_lama import LamaGenerator
from inpaintrt.export.eraser_migan import MiganGenerator

MIGAN_RES = 16  # the smallest MI-GAN with every block kind


def randomize(module, seed):
    """Random values for every float tensor, BatchNorm running statistics included, at scales that keep the
    activations moderate (a saturated sigmoid would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                t.fill_(7)  # num_batches_tracked: any value must load
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("noise_strength"):
                t.fill_(0.2)
            elif name.endswith("noise_const"):  # a checkpoint's fixed noise: drawn here too, so a copy is the same
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim == 1:  # BatchNorm scale
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif not name.endswith(("filter_const", "filter.weight")):  # MI-GAN's fixed filters stay
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
    return module.eval()


def tiny_lama(seed=1) -> LamaGenerator:
    return randomize(LamaGenerator(ngf=8, n_downsampling=3, n_blocks=2), seed)


def tiny_migan(seed=2) -> MiganGenerator:
    return randomize(MiganGenerator(MIGAN_RES, {4: 16, 8: 16, 16: 8}), seed)


def save_lightning_checkpoint(generator, path: Path) -> Path:
    """big-lama's best.ckpt layout: a Lightning checkpoint whose state_dict holds generator.* (and more)."""
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    state["discriminator.model.0.weight"] = torch.zeros(2, 3, 1, 1)  # not the generator's: must be left out
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 40, "global_step": 1000, "state_dict": state, "hyper_parameters": {"ngf": 8}}, path)
    return path


def build_erasers(root: Path) -> dict:
    """{"lama": engine dir, "migan": engine dir, "lama_ckpt": ..., "migan_pt": ...} (fp16 graphs in lama's)."""
    from inpaintrt.export.eraser import export_eraser

    lama_ckpt = save_lightning_checkpoint(tiny_lama(), root / "big-lama" / "models" / "best.ckpt")
    (root / "big-lama" / "config.yaml").write_text("generator:\n  kind: ffc_resnet\n  ngf: 8\n")
    migan_pt = root / f"migan_{MIGAN_RES}_places2.pt"
    torch.save(tiny_migan().state_dict(), migan_pt)
    quiet = dict(log=lambda *_: None)
    return {"lama": export_eraser(root / "big-lama", root / "lama-engine", fp16=True, **quiet),
            "migan": export_eraser(migan_pt, root / "migan-engine", **quiet),
            "lama_ckpt": lama_ckpt, "migan_pt": migan_pt}
