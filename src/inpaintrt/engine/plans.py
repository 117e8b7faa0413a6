"""TensorRT plans as the manifest describes them: static sizes, profiles, keys. No TensorRT needed.

A plan is compiled for one TensorRT version and one GPU architecture; the manifest's `tensorrt`
section records both, and a plan from anywhere else is refused with the way to rebuild it. Every
component whose inputs have an image-size axis (UNet, VAE) gets one plan per static image size; the
others (SD's text encoder, SDXL's two) get one; the batch axis stays a range. Which inputs there are
(SDXL's UNet adds `text_embeds` and `time_ids`) and their fixed widths come from the manifest.
"""
from __future__ import annotations

import re

from ..runtime.control import residual_size
from .families import family

DEFAULT_SIZES = ((512, 512), (1024, 1024))
DEFAULT_MAX_IMAGES = 2
SIZE_AXES = ("height", "width", "latent_height", "latent_width")  # the axes a static size fixes
TEXT_AXIS = "text_length"  # the UNet's encoder_hidden_states tokens: chunks of the text encoder's length


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
    guided halves together, the VAE encoder one picture, text encoders (SD's one, SDXL's two) one row
    per distinct prompt, the decoder one per image."""
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    ranges = {
        "text_encoder": (1, 1, max_images),
        "text_encoder_2": (1, 1, max_images),
        "unet": (1, 2, 2 * max_images),
        "vae_encoder": (1, 1, 1),
        "vae_decoder": (1, 1, max_images),
        "eraser": (1, 1, 1),  # one window at a time
    }
    if component.startswith("controlnet_"):  # called as the UNet is (guess mode: the conditional half)
        component = "unet"
    if component not in ranges:
        raise ValueError(f"no TensorRT batch range for component {component!r} (plans.py knows {', '.join(ranges)}): "
                         "this inpaintrt builds no TensorRT plans for it; use backend='ort-cpu'")
    return ranges[component]


def latent_sized(component: dict) -> bool:
    """Whether a manifest component's pictures are latents (its plan's size is the latent's times the VAE's scale)."""
    return any(dim in ("latent_height", "latent_width") for tensor in component["inputs"] for dim in tensor["shape"])


def fitting_plan_size(plans: list[dict], height: int, width: int) -> tuple[int, int] | None:
    """The smallest built size that holds height x width (an eraser pads a window up to it), or None."""
    sizes = sorted((p["size"] for p in plans if p["size"] is not None), key=lambda s: s[0] * s[1])
    return next(((h, w) for h, w in sizes if h >= height and w >= width), None)


def size_free(component: dict) -> bool:
    """Whether no input of a manifest component depends on the image size (one plan serves all sizes)."""
    return not any(dim in SIZE_AXES for tensor in component["inputs"] for dim in tensor["shape"])


def fp32_components(model: dict) -> tuple[str, ...]:
    """Components of a manifest's `model` whose TensorRT input (and so plan) stays fp32: the SDXL VAE
    unless its checkpoint says it is fp16-safe (force_upcast False, e.g. the fp16-fix VAE); its decoder
    overflows in fp16, which is why diffusers upcasts it."""
    if not family(model["family"]).fp16_vae and model.get("vae_force_upcast", True):
        return ("vae_encoder", "vae_decoder")
    return ()


def profile_shapes(inputs: list[dict], size: tuple[int, int] | None, vae_scale: int,
                   batches: tuple[int, int, int], text_length: int | None = None) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shapes} for a manifest component's inputs at one static size; the UNet's
    text axis (`text_length`, a multiple of the text encoder's length in the graph) is fixed at one chunk."""
    if size is None:
        dims = {}
    else:
        height, width = size
        dims = {"height": height, "width": width,
                "latent_height": height // vae_scale, "latent_width": width // vae_scale}
    if text_length is not None:
        dims[TEXT_AXIS] = text_length
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
                elif (down := re.fullmatch(r"(latent_(?:height|width))_down(\d+)", dim)) and down[1] in dims:
                    shape.append(residual_size(dims[down[1]], int(down[2])))  # ControlNet residuals
                else:
                    raise ValueError(f"input {tensor['name']!r} has axis {dim!r}, which no static size fixes")
            shapes.append(shape)
        profile[tensor["name"]] = shapes
    return profile


def refuse_unplanned(manifest: dict, root) -> None:
    """TensorRT plans are built only for the families whose record says so; for another, say what runs it."""
    record = family(manifest["model"]["family"], str(root))
    if not record.tensorrt:
        raise ValueError(f"{root} holds a {record.title} engine, for which no TensorRT plans are built: load it with "
                         "backend='ort-cuda', 'openvino' or 'ort-cpu'")


def plan_file(component: str, size: tuple[int, int] | None) -> str:
    return f"plans/{component}.plan" if size is None else f"plans/{component}-{size[0]}x{size[1]}.plan"


def plan_layout(components: dict, sizes, max_images: int, vae_scale: int) -> dict:
    """{component: [{size, file, precision, profile}]}: every plan to build, with its optimization
    profile; the precision is that of the graph it is built from (fp32 for a VAE kept out of fp16)."""
    layout = {}
    text_length = next((c["inputs"][0]["shape"][1] for n, c in components.items() if n.startswith("text_encoder")),
                       None)
    for name, component in components.items():
        plan_sizes = [None] if size_free(component) else list(sizes)
        precision = component.get("fp16", {}).get("precision", "fp16")
        layout[name] = [
            {"size": None if size is None else list(size), "file": plan_file(name, size), "precision": precision,
             "profile": profile_shapes(component["inputs"], size, vae_scale, batch_range(name, max_images),
                                       text_length)}
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


def text_token_limit(plans: dict) -> int | None:
    """The most text tokens (encoder_hidden_states' axis 1) that every plan reading them takes, or None."""
    limits = [plan["profile"]["encoder_hidden_states"][2][1] for built in plans.values() for plan in built
              if "encoder_hidden_states" in plan["profile"]]
    return min(limits) if limits else None


def check_batch(plan: dict, feeds_batch: int, component: str) -> None:
    largest = max(shapes[2][0] for shapes in plan["profile"].values())
    if feeds_batch > largest:
        raise ValueError(
            f"{component} got a batch of {feeds_batch} but its TensorRT plan takes at most {largest}; ask for fewer "
            "images (num_images_per_prompt x prompts) or rebuild with a larger `--max-images`"
        )
