"""Tiny random-weight Segment Anything engine directories (the official key structure, a 128-pixel frame)."""
from __future__ import annotations

from pathlib import Path

from sam_models import TINY_TINYVIT, TINY_VIT, tiny_sam


def build_sam_engine(path, mobile: bool = False, seed: int = 3, **export) -> Path:
    """Export a tiny SAM (ViT, or MobileSAM's TinyViT with mobile=True) to `path`; returns it."""
    from inpaintrt.export.segmenter import export_sam

    model = tiny_sam(TINY_TINYVIT if mobile else TINY_VIT, seed)
    return export_sam(model, path, source=f"tiny-sam-seed{seed}", log=lambda *_: None, **export)
