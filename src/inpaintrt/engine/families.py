"""One record per model family of the manifest: which engine class opens it, its defaults, what it supports.

Every other module asks a family's record (`family(name)`) instead of comparing family names, so a new
family, or a new kind of engine directory, is one record here. The engine classes are named, not imported:
a module is imported only when a directory of its family is opened (Kandinsky's prior code stays unread
for a Stable Diffusion engine, and this module imports no engine).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .manifest import DIFFUSION, ERASER, SEGMENTER, EngineDirectoryError

# the manifest's family names (export writes them; nothing else spells them)
SD1, SD2, SDXL, KANDINSKY22 = "sd1", "sd2", "sdxl", "kandinsky22"
LAMA, MIGAN = "lama", "migan"  # erasers: no prompt, one forward pass
SAM, CLIPSEG = "sam", "clipseg"  # mask makers: clicks or a box (Segment Anything), a phrase (CLIPSeg)


@dataclass(frozen=True)
class Family:
    name: str
    title: str  # in messages: "this engine is SDXL"
    engine: str  # "module:Class" of the engine that opens its directories
    strength: float = 1.0  # diffusers' default strength (SDXL's pipeline uses 0.9999)
    steps: int = 50
    guidance: float = 7.5
    controlnet_scale: float | None = None  # controlnet_conditioning_scale's default; None: no ControlNets
    loras: bool = False  # LoRA files and textual-inversion embeddings at load
    micro_conditioning: bool = False  # SDXL's pooled text embeddings, time ids and size arguments
    prior: bool = False  # a prior turns prompts into image embeddings (Kandinsky 2.2); its arguments apply
    outpaint: bool = True
    preview: str | None = "sd"  # the latent space's live-preview matrix (runtime/latent_preview.py)
    callback: str = "sd"  # whose callback tensors diffusers' callback_on_step_end sees (runtime/callbacks.py)
    fp16_vae: bool = True  # the VAE runs in fp16 under TensorRT unless the checkpoint says otherwise
    kind: str = DIFFUSION  # DIFFUSION, ERASER or SEGMENTER: which call and arguments its engine has
    hot: str = "unet"  # the component that runs most: its precision is engine.precision, it keeps its memory arena
    clicks: bool = False  # a mask maker prompted by points and a box (Segment Anything)
    phrases: bool = False  # a mask maker prompted by text (CLIPSeg)
    tensorrt: bool = True  # TensorRT plans are built for it (inpaint-export --backend tensorrt, inpaint-build-plans)

    @property
    def eraser(self) -> bool:
        return self.kind == ERASER

    @property
    def segmenter(self) -> bool:
        return self.kind == SEGMENTER

    def engine_class(self) -> type:
        module, _, name = self.engine.partition(":")
        return getattr(importlib.import_module(module), name)


_SD = "inpaintrt.engine.engine:Engine"
FAMILIES: dict[str, Family] = {record.name: record for record in (
    Family(SD1, "SD 1.x", _SD, controlnet_scale=0.5, loras=True),
    Family(SD2, "SD 2.x", _SD, controlnet_scale=0.5, loras=True),
    # StableDiffusionXLInpaintPipeline's strength; its ControlNet pipeline's scale is 1.0
    Family(SDXL, "SDXL", _SD, strength=0.9999, controlnet_scale=1.0, loras=True, micro_conditioning=True,
           preview="sdxl", callback="sdxl", fp16_vae=False),
    Family(KANDINSKY22, "Kandinsky 2.2", "inpaintrt.engine.kandinsky:KandinskyEngine", steps=100, guidance=4.0,
           prior=True, outpaint=False, preview=None, callback="kandinsky", tensorrt=False),
    *[Family(name, title, "inpaintrt.engine.eraser:EraserEngine", steps=0, guidance=0.0, outpaint=False, preview=None,
             kind=ERASER, hot="eraser") for name, title in ((LAMA, "LaMa"), (MIGAN, "MI-GAN"))],
    Family(SAM, "Segment Anything", "inpaintrt.engine.segment_sam:SamEngine", steps=0, guidance=0.0, outpaint=False,
           preview=None, kind=SEGMENTER, hot="sam_encoder", clicks=True, tensorrt=False),
    Family(CLIPSEG, "CLIPSeg", "inpaintrt.engine.segment_clipseg:ClipSegEngine", steps=0, guidance=0.0,
           outpaint=False, preview=None, kind=SEGMENTER, hot="clipseg", phrases=True, tensorrt=False),
)}


def family(name: str, where: str = "the engine") -> Family:
    """The record of a manifest's family; EngineDirectoryError naming the fix for one this version lacks."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise EngineDirectoryError(f"{where}: the manifest's model family {name!r} is not one this inpaintrt runs "
                                   f"({', '.join(FAMILIES)}); re-export it with this version") from None


def families_with(attribute: str) -> list[str]:
    """The titles of the families where `attribute` is set, for messages ("SD 1.x, SD 2.x, SDXL")."""
    return [record.title for record in FAMILIES.values() if getattr(record, attribute)]
