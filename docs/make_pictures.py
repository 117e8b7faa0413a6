"""The before/after pictures of docs/inpaint.md and docs/outpaint.md: outpainting, soft masks, masked content
and mask edits.

They are made by the embedded default model, which has RANDOM weights (see docs/getting-started.md): what it
paints is coloured noise, and the pictures show where and how much each feature changes, not
quality. Usage: `python docs/make_pictures.py ENGINE_DIR` (the engine `inpaint-demo` exports to
out/engine); writes docs/*.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from inpaintrt import Engine
from inpaintrt.engine.outpaint import plan
from inpaintrt.runtime import masking
from inpaintrt.sample import sample_picture, side_by_side

SIZE = 192
ARGS = dict(prompt="a wooden bench in a sunny park", num_inference_steps=12, scheduler="euler", progress=False,
            height=SIZE, width=SIZE, generator=0)


def labelled(pictures: list[Image.Image], labels: list[str]) -> Image.Image:
    row = side_by_side(pictures)
    draw, x = ImageDraw.Draw(row), 0
    for picture, label in zip(pictures, labels):
        width = round(picture.width * row.height / picture.height)
        draw.rectangle([x, 0, x + 7 * len(label) + 6, 14], fill=(255, 255, 255))
        draw.text((x + 3, 2), label, fill=(0, 0, 0))
        x += width
    return row


def save(picture: Image.Image, name: str) -> None:
    path = Path(__file__).parent / name
    picture.convert("P", palette=Image.ADAPTIVE, colors=96).save(path, optimize=True)
    print(path, path.stat().st_size // 1024, "KB")


def main(engine_dir: str) -> None:
    engine = Engine.load(engine_dir)
    image, mask = sample_picture(SIZE, SIZE)

    wide = engine.outpaint(image, left=96, right=96, overlap=24, **dict(ARGS, height=SIZE, width=SIZE)).images[0]
    known = np.zeros((SIZE, SIZE + 192), bool)
    known[:, 96:96 + SIZE] = True
    passes = 0
    for y, x, h, w in plan(known.shape, (0, 96, SIZE, 96 + SIZE), (SIZE, SIZE)):
        passes += not known[y:y + h, x:x + w].all()
        known[y:y + h, x:x + w] = True
    save(labelled([image, wide], ["input 192x192", f"outpaint left=96, right=96: {passes} passes of 192x192"]),
         "outpaint.png")

    ramp = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))[..., None]  # left: keep ... right: repaint
    soft = engine.inpaint(image, ramp, mask_mode="soft", keep_unmasked=True, **ARGS).images[0]
    hard = engine.inpaint(image, ramp, keep_unmasked=True, **ARGS).images[0]
    blurred = engine.inpaint(image, mask, mask_mode="soft", blur_factor=16, keep_unmasked=True, **ARGS).images[0]
    save(labelled([image, masking.as_pil(ramp, "L"), soft, hard, masking.blur(mask, 16), blurred],
                  ["input", "change map", "soft", "binary (cut at 0.5)", "blurred mask", "soft"]), "soft_mask.png")

    results = [engine.inpaint(image, mask, strength=0.6, masked_content=mode, keep_unmasked=True, **ARGS).images[0]
               for mode in ("original", "fill", "latent_noise", "latent_nothing")]
    filled = masking.fill(np.asarray(image, np.float32)[None].transpose(0, 3, 1, 2) / 127.5 - 1,
                          (np.asarray(mask, np.float32) / 255)[None, None])
    filled = Image.fromarray(np.round((filled[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8))
    save(labelled([image, mask, filled] + results, ["input", "mask", "fill's start", "original", "fill",
                                                    "latent_noise", "latent_nothing"]), "masked_content.png")

    edits = [dict(), dict(mask_grow=16), dict(mask_shrink=16), dict(mask_invert=True)]
    masks = [masking.edit(mask, **{k.replace("mask_", ""): v for k, v in e.items()}) for e in edits]
    outs = [engine.inpaint(image, mask, keep_unmasked=True, **e, **ARGS).images[0] for e in edits]
    top = labelled(masks, ["mask", "mask_grow=16", "mask_shrink=16", "mask_invert"])
    bottom = side_by_side(outs)
    both = Image.new("RGB", (top.width, top.height + bottom.height))
    both.paste(top, (0, 0))
    both.paste(bottom, (0, top.height))
    save(both, "mask_edits.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/engine")
