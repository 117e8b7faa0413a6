"""TensorRT plans as the manifest describes them: static sizes, profiles, keys. No TensorRT needed.

A plan is compiled for one TensorRT version and one GPU architecture; the manifest's `tensorrt`
section records both, and a plan from anywhere else is refused with the way to rebuild it. Every
component but the text encoder gets one plan per static image size; its batch axis stays a range.
"""
from __future__ import annotations

import re

DEFAULT_SIZES = ((512, 512), (1024, 1024))
DEFAULT_MAX_IMAGES = 2
SIZE_FREE = ("text_encoder",)  # components whose shapes do not depend on the image size


class PlanMismatchError(RuntimeError):
    """The plans cannot run here: another TensorRT version or GPU architecture, or a size not built."""


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'512,1024' or '512x768,1024' -> ((512, 512), (512, 768), (1024, 1024)) as (height, width)."""
    sizes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:x(\d+))?\s*", item)
        if not match:
            raise ValueError(f"--sizes item {item.strip()!r} is not N or HEIGHTxWIDTH; write e.g. --sizes 512,768x512")
        height, width = int(match[1]), int(match[2] or match[1])
        if height < 8 or width < 8 or height % 8 or width % 8:
            raise ValueError(f"--sizes {height}x{width}: height and width must be positive multiples of 8 (e.g. 512)")
        if (height, width) not in sizes:
            sizes.append((height, width))
    return tuple(sizes)


def batch_range(component: str, max_images: int) -> tuple[int, int, int]:
    """(min, opt, max) batch of each component as the engine calls it: the UNet sees the unguided and
    guided halves together, the VAE encoder one picture, the others one row per image or prompt."""
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    return {
        "text_encoder": (1, 1, max_images),
        "unet": (1, 2, 2 * max_images),
        "vae_encoder": (1, 1, 1),
        "vae_decoder": (1, 1, max_images),
    }[component]


def profile_shapes(inputs: list[dict], size: tuple[int, int] | None, vae_scale: int,
                   batches: tuple[int, int, int]) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shapes} for a manifest component's inputs at one static size."""
    if size is None:
        dims = {}
    else:
        height, width = size
        dims = {"height": height, "width": width,
                "latent_height": height // vae_scale, "latent_width": width // vae_scale}
    profile = {}
    for tensor in inputs:
        shapes = []
        for batch in batches:
            shape = []
            for dim in tensor["shape"]:
                if isinstance(dim, int):
                    shape.append(dim)
                elif dim == "batch":
                    shape.append(batch)
                elif dim in dims:
                    shape.append(dims[dim])
                else:
                    raise ValueError(f"input {tensor['name']!r} has axis {dim!r}, which no static size fixes")
            shapes.append(shape)
        profile[tensor["name"]] = shapes
    return profile


def plan_file(component: str, size: tuple[int, int] | None) -> str:
    return f"plans/{component}.plan" if size is None else f"plans/{component}-{size[0]}x{size[1]}.plan"


def plan_layout(components: dict, sizes, max_images: int, vae_scale: int) -> dict:
    """{component: [{size, file, profile}]}: every plan to build, with its optimization profile."""
    layout = {}
    for name, component in components.items():
        plan_sizes = [None] if name in SIZE_FREE else list(sizes)
        layout[name] = [
            {"size": None if size is None else list(size), "file": plan_file(name, size),
             "profile": profile_shapes(component["inputs"], size, vae_scale, batch_range(name, max_images))}
            for size in plan_sizes
        ]
    return layout


def check_plan_key(section: dict, trt_version: str, compute_capability: str, root) -> None:
    """Refuse plans built for another TensorRT version or GPU architecture, saying how to rebuild."""
    built = (section["version"], section["compute_capability"])
    here = (trt_version, compute_capability)
    if built != here:
        raise PlanMismatchError(
            f"the TensorRT plans in {root} were built with TensorRT {built[0]} for GPU compute capability "
            f"{built[1]}, but this machine has TensorRT {here[0]} and compute capability {here[1]}; plans only run "
            f"where they were built. Rebuild them here with `inpaint-build-plans --engine {root}`, "
            f"or load with backend='ort-cpu'"
        )


def select_plan(plans: list[dict], height: int | None, width: int | None, component: str) -> dict:
    """The plan of `component` for this image size (size-free components have a single plan)."""
    if len(plans) == 1 and plans[0]["size"] is None:
        return plans[0]
    for plan in plans:
        if plan["size"] == [height, width]:
            return plan
    built = ", ".join(f"{p['size'][0]}x{p['size'][1]}" for p in plans)
    raise ValueError(
        f"height x width {height}x{width} has no TensorRT plan (built: {built}); pass one of those sizes, rebuild "
        f"the plans with `inpaint-build-plans --engine <engine dir> --sizes {height}x{width},...`, or use "
        "backend='ort-cpu'"
    )


def check_batch(plan: dict, feeds_batch: int, component: str) -> None:
    largest = max(shapes[2][0] for shapes in plan["profile"].values())
    if feeds_batch > largest:
        raise ValueError(
            f"{component} got a batch of {feeds_batch} but its TensorRT plan takes at most {largest}; ask for fewer "
            "images (num_images_per_prompt x prompts) or rebuild with a larger `--max-images`"
        )
