"""sha256 of the engines' outputs in six scenarios, to show a refactor leaves results bit-identical.

Builds tiny random-weight models once under --work (reused on later runs), exports them and prints one
line per scenario: run it before and after a change and compare the lines.
    python benchmarks/output_hashes.py --work /tmp/hashes
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))


def _export(work: Path, name: str, build, export):
    engine = work / f"{name}-engine"
    if not (engine / "manifest.json").exists():
        export(build(work / name), engine)
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/inpaintrt-hashes"))
    args = parser.parse_args()
    os.environ.setdefault("INPAINTRT_THREADS", "1")
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import save_pipeline

    from pictures import sample_image, sample_mask  # the suite's pictures

    def sd(**kw):
        return lambda folder: save_pipeline(folder, **kw) if not (folder / "model_index.json").exists() else folder

    quiet = dict(log=lambda *_: None)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sd_export = lambda folder, out: export_engine(load_pipeline(str(folder)), out, **quiet)  # noqa: E731
    nine = _export(work, "tiny9", sd(size="tiny", in_channels=9, seed=9), sd_export)
    four = _export(work, "tiny4", sd(size="tiny", in_channels=4, seed=4), sd_export)
    sdxl = _export(work, "sdxl9", sd(family="sdxl", in_channels=9, seed=23), sd_export)

    def kandinsky_build(folder):
        from inpaintrt.export.random_models_kandinsky import save_kandinsky
        return save_kandinsky(folder, seed=3)

    def kandinsky_export(folders, out):
        from inpaintrt.export.kandinsky import export_kandinsky, load_kandinsky
        decoder, prior = load_kandinsky(str(folders[0]), str(folders[1]))
        export_kandinsky(decoder, prior, out, source="hashes", **quiet)

    kandinsky = _export(work, "kandinsky", kandinsky_build, kandinsky_export)
    from inpaintrt import Engine

    image, mask = sample_image(), sample_mask()
    soft = Image.fromarray((np.asarray(mask, np.float32) * 0.6).astype(np.uint8))
    plain = dict(prompt="a red kite", num_inference_steps=4, generator=0, output_type="np", progress=False)
    scenarios = {
        "9-channel plain": (nine, dict(plain)),
        "a1111 + fill + grow + blur + euler_a + keep_unmasked": (nine, dict(
            plain, prompt="a (red:1.3) kite BREAK sky", masked_content="fill", strength=0.7, mask_grow=3,
            blur_factor=2, scheduler="euler_a", keep_unmasked=True)),
        "4-channel soft mask": (four, dict(plain, mask_mode="soft", strength=0.8, image_override=soft)),
        "padding_mask_crop": (nine, dict(plain, padding_mask_crop=8)),
        "sdxl denoising_end": (sdxl, dict(plain, denoising_end=0.6, num_inference_steps=5)),
        "kandinsky": (kandinsky, dict(plain, num_inference_steps=3, prior_num_inference_steps=2)),
    }
    for name, (directory, kwargs) in scenarios.items():
        the_mask = kwargs.pop("image_override", mask)
        out = Engine.load(directory).inpaint(image, the_mask, **kwargs).images
        print(f"{hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()[:16]}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
