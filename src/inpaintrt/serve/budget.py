"""Bounded work per request: the one rule every route checks before a job is queued (docs/serving.md,
"Work and memory per request"). inputs.check calls `check_request` for the native routes, outpaint,
the AUTOMATIC1111 routes (which pass their batch_size x n_iter) and so the Ray ingress, which serves the
same app.

Work is counted in megapixel-steps (a megapixel is 10^6 pixels):

    pictures x UNet calls x passes x height x width / 10^6 x (2 with guidance) x (1 + 0.5 per ControlNet)

- UNet calls: the denoising loop's iterations (`total` of a job: fewer with strength < 1, one more for PNDM,
  two per step for second-order samplers);
- guidance: classifier-free guidance (guidance_scale > 1) runs the UNet on a batch of two rows, the
  unconditional and the conditional one, so every call costs twice;
- a ControlNet is a copy of the UNet's down and middle blocks, about half its work per call, counted for
  the fraction of the steps it steers (control_guidance_start..end), on one row in guess mode;
- outpaint: every inpaint pass at its window's size.

The default, 107, is AUTOMATIC1111's default request at 1024x1024: one picture, 50 steps (51 UNet calls with
PNDM, SD 1.5's own scheduler), cfg_scale 7 (guided): 1 x 51 x 1.048576 x 2 = 106.95; a server left at the default
takes at least its engines' own default requests (`default_request_work`: an SDXL engine with an inpaint ControlNet
asks more). txt2img {"n_iter": 8} (512x512, 50 steps) is 8 x 51 x 0.262 x 2 = 213.9: refused, naming n_iter.

Host memory is estimated from the engine's manifest (`engine_sizes`) in `request_memory`: per picture in
one engine call, latents 16 float32 latent-sized tensors per UNet row, pictures 12 float32 values per pixel
(input, mask, masked input, decoded output and its 8-bit copy), the VAE decoder's peak 5 x c float32 per pixel
at full resolution (c: its last block's width, 128 in SD's VAE, scaled by the square root of the decoder's
parameters against SD's 49.49 M) plus its middle block's single-head attention scores, (latent pixels)^2
float32; the pictures of one call are those --max-batch may gather; plus 4 bytes per pixel for each finished
picture held until the answer, and an outpaint's grown canvas at 32 bytes per pixel. The UNet's own
activations depend on the backend's attention kernels and are not counted.

An eraser (LaMa, MI-GAN) request is one model call at the picture's size, unguided, never in a batch; its
memory is estimated by the same formula (its own activations are not counted either).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from ..engine.argument_specs import SIDES
from ..engine.manifest import ERASER
from ..engine.preflight import batchable
from ..runtime.errors import InvalidArgument

DEFAULT_MAX_MEGAPIXEL_STEPS = 107.0
CONTROLNET_SHARE = 0.5  # a ControlNet's work per call, as a share of the UNet's
SD_VAE_DECODER_PARAMS = 49.49e6  # AutoencoderKL's decoder (SD 1.x, 2.x, SDXL), block_out_channels 128...512
SD_VAE_WIDTH = 128


@dataclass
class Work:
    """What one request asks of the engine; `fields`: factor -> (the request field that sets it, its value)."""
    height: int
    width: int
    calls: int  # UNet calls per picture and pass
    steps: int  # num_inference_steps asked for (the fix scales it)
    pictures: int = 1
    passes: int = 1
    guided: bool = True
    controlnets: float = 0.0  # the running ControlNets' shares of the steps, summed
    together: int = 1  # pictures one engine call may hold (--max-batch)
    canvas: int = 0  # outpaint: the grown picture's pixels
    defaults: dict = field(default_factory=dict)  # factor -> the Work's fields as the request left out would set them
    fields: dict = field(default_factory=dict)

    def megapixel_steps(self) -> float:
        rows = 2 if self.guided else 1
        per_call = self.height * self.width / 1e6 * rows * (1 + CONTROLNET_SHARE * self.controlnets)
        return self.pictures * self.passes * self.calls * per_call


def engine_sizes(manifest: dict) -> dict:
    """What the memory estimate reads from an engine's manifest: weights, VAE width, latent scale."""
    components, files = manifest.get("components", {}), manifest.get("files", {})

    def size(name: str) -> int:
        entry = components.get(name, {})
        return sum(files.get(f, {}).get("bytes", 0) for f in entry.get("files") or [entry.get("file")] if f)

    decoder = next((name for name in ("vae_decoder", "movq_decoder") if name in components), None)
    per_weight = 2 if components.get(decoder, {}).get("precision") == "fp16" else 4
    params = (size(decoder) / per_weight if decoder else 0) or SD_VAE_DECODER_PARAMS
    return {"weights_bytes": sum(size(name) for name in components),
            "vae_width": round(max(1.0, SD_VAE_WIDTH * math.sqrt(params / SD_VAE_DECODER_PARAMS)), 2),
            "vae_scale_factor": manifest.get("model", {}).get("vae_scale_factor", 8)}


def request_memory(work: Work, facts: dict, height: int | None = None, width: int | None = None) -> int:
    """Estimated host bytes (module docstring); height / width: another size to try for the fix."""
    sizes = facts.get("sizes") or engine_sizes({})
    pixels = (height or work.height) * (width or work.width)
    latent = pixels / sizes["vae_scale_factor"] ** 2
    rows = 2 if work.guided else 1
    per_picture = (16 * facts.get("latent_channels", 4) * latent * 4 * rows + 48 * pixels
                   + 20 * sizes["vae_width"] * pixels + 4 * latent ** 2)
    return int(work.together * per_picture + 4 * pixels * work.pictures + 32 * work.canvas)


def request_work(params, arguments: dict, facts: dict, planned, passes: int, limits,
                 pictures: tuple | None = None) -> Work:
    """The Work of a request checked by engine/preflight.py (`planned`: its size, steps and UNet calls).
    pictures: (count, field, shown) of an A1111 batch; None: one."""
    image = arguments["image"]
    if facts.get("kind") == ERASER:  # one forward pass at the picture's size: unguided, never in a batch
        work = Work(planned.height, planned.width, planned.calls, planned.steps, guided=False)
        work.fields = {"size": ("image", f"{planned.width}x{planned.height}")}
        return work
    height, width, steps = planned.height, planned.width, planned.steps
    side = ("keep_input_size" if getattr(params, "keep_input_size", False)
            else "width" if width > height else "height")
    guidance = params.guidance_scale if params.guidance_scale is not None else facts["default_guidance_scale"]
    work = Work(height, width, planned.calls, steps, passes=passes, guided=guidance > 1)
    work.controlnets, sent = _controlnets(arguments, facts, work.guided)
    work.fields = {"steps": ("num_inference_steps", steps), "size": (side, width if side == "width" else height)}
    if pictures is not None and pictures[0] > 1:
        work.pictures, work.fields["pictures"], work.defaults["pictures"] = pictures[0], pictures[1:], {"pictures": 1}
    if params.task == "outpaint":
        largest = max(SIDES, key=lambda name: getattr(params, name))
        work.fields["passes"], work.defaults["passes"] = (largest, getattr(params, largest)), {"passes": 1}
        work.canvas = ((image.size[0] + params.left + params.right) * (image.size[1] + params.top + params.bottom))
    if sent:
        work.fields["controlnets"] = ("control_image", sent)
        work.defaults["controlnets"] = {"controlnets": _controlnets({}, facts, work.guided)[0]}
    _raised(work, facts)
    if batchable(params.task, arguments):
        work.together = limits.max_batch  # other requests of its size may join its engine call
    return work


def _raised(work: Work, facts: dict) -> None:
    """Steps and size above what leaving their fields out gives: what the work would be at the default."""
    if work.steps > facts["default_steps"]:
        work.defaults["steps"] = {"calls": math.ceil(work.calls * facts["default_steps"] / work.steps)}
    if work.height * work.width > facts["default_height"] * facts["default_width"]:
        work.defaults["size"] = {"height": facts["default_height"], "width": facts["default_width"]}


def _controlnets(arguments: dict, facts: dict, guided: bool) -> tuple[float, int]:
    """(the running ControlNets' step shares summed, how many control pictures were sent)."""
    nets = facts.get("controlnets") or []
    images = _each(arguments.get("control_image"), None, len(nets))
    scales = _each(arguments.get("controlnet_conditioning_scale"), 1.0, len(nets))
    starts = _each(arguments.get("control_guidance_start"), 0.0, len(nets))
    ends = _each(arguments.get("control_guidance_end"), 1.0, len(nets))
    rows = 0.5 if guided and arguments.get("guess_mode") else 1.0  # guess mode: the conditional row only
    share = sum((end - start) * rows for net, image, scale, start, end in zip(nets, images, scales, starts, ends)
                if scale != 0 and (image is not None or net["kind"] == "inpaint"))
    return share, sum(image is not None for image in images)


def _each(value, default, count: int) -> list:
    if isinstance(value, list):
        return value
    return [default if value is None else value] * count


def default_request(facts: dict) -> Work:
    """A request that leaves every field out (one more UNet call than steps, as PNDM takes): a server left at
    its default limits always takes it, whatever its engine's size, ControlNets or the machine's memory."""
    guided = facts["default_guidance_scale"] > 1
    work = Work(facts["default_height"], facts["default_width"], facts["default_steps"] + 1, facts["default_steps"],
                guided=guided)
    work.controlnets = _controlnets({}, facts, guided)[0]
    return work


def default_request_work(facts: dict) -> float:
    return default_request(facts).megapixel_steps()


def check_request(work: Work, limits, facts: dict) -> None:
    """InvalidArgument naming the field that pushes a request over the memory or the work limit (the routes'
    422); nothing here imports the web framework, so the command line can read the defaults."""
    memory = request_memory(work, facts)
    if memory > limits.max_request_memory:
        raise _over_memory(work, memory, limits, facts)
    megapixel_steps = work.megapixel_steps()
    if megapixel_steps > limits.max_megapixel_steps:
        raise _over_work(work, megapixel_steps, limits.max_megapixel_steps)


BLAME_ORDER = ("pictures", "passes", "controlnets", "steps", "size")


def _blamed(work: Work, limit: float) -> str:
    """The factor that pushes the work over: of those the request raised above what leaving its field out gives
    (in BLAME_ORDER), the first whose default alone fits, else the one whose default saves most; steps when
    none is raised (a server with a small limit)."""
    at_default = {factor: replace(work, **work.defaults[factor]).megapixel_steps()
                  for factor in BLAME_ORDER if factor in work.defaults}
    fits = [factor for factor, used in at_default.items() if used <= limit]
    if fits or at_default:
        return fits[0] if fits else min(at_default, key=at_default.get)
    return "steps" if work.steps > 1 else "size"


def _over_work(work: Work, used: float, limit: float) -> InvalidArgument:
    factor = _blamed(work, limit)
    name, value = work.fields[factor]
    share = limit / used
    parts = [f"{work.pictures} picture{'s' if work.pictures > 1 else ''}", f"{work.calls} UNet calls",
             *([f"{work.passes} passes"] if work.passes > 1 else []),
             f"{work.height * work.width / 1e6:.3g} megapixels ({work.width}x{work.height})",
             *(["2 (guidance)"] if work.guided else []),
             *([f"{1 + CONTROLNET_SHARE * work.controlnets:g} (ControlNets)"] if work.controlnets else [])]
    message = (f"this request is {used:.3g} megapixel-steps of work ({' x '.join(parts)}), over this server's limit "
               f"of {limit:g} per request (inpaint-serve --max-megapixel-steps); {name}={value} pushes it over")
    most = int(work.pictures * share)
    fixes = {"pictures": lambda: (f"ask for at most {most} picture{'s' * (most > 1)} ({name})" if most else
                                  f"ask for 1 picture ({name}), with fewer steps or pixels"),
             "steps": lambda: f"send {name} at most {max(1, int(work.steps * share))}",
             "size": lambda: _smaller(work, name, lambda h, w: h * w <= work.height * work.width * share),
             "passes": lambda: f"add fewer pixels ({name}={value} is the largest side; {work.passes} passes), or "
                               "grow the picture over several requests",
             "controlnets": lambda: "send fewer control pictures (each running ControlNet adds half the UNet's work)"}
    return InvalidArgument(name, message, fixes[factor]() + "; guidance_scale 1 (no guidance) halves the work"
                           * work.guided)


def _over_memory(work: Work, needed: int, limits, facts: dict) -> InvalidArgument:
    name, value = work.fields["size"]
    batch = f"; up to {work.together} pictures of this size may share one engine call" if work.together > 1 else ""
    message = (f"this request needs about {needed / 2**20:.0f} MB of host memory at {work.width}x{work.height} "
               f"(latents, pictures and the VAE decoder's peak{batch}), over this server's limit of "
               f"{limits.max_request_memory / 2**20:.0f} MB per request (inpaint-serve --max-request-memory-mb); "
               f"{name}={value} pushes it over")
    fits = lambda h, w: request_memory(work, facts, h, w) <= limits.max_request_memory  # noqa: E731
    return InvalidArgument(name, message, _smaller(work, name, fits))


def _smaller(work: Work, name: str, fits) -> str:
    """The fix for a size over a limit: the largest side that fits, the other side kept."""
    if name == "keep_input_size":
        return "send a smaller picture, or height and width instead of keep_input_size"
    if name == "image":  # an eraser's output is the picture's size
        return "send a smaller picture"
    other = work.width if name == "height" else work.height
    side = next((s for s in range(getattr(work, name) - 8, 7, -8)
                 if fits(*((s, other) if name == "height" else (other, s)))), None)
    if side is None:
        return f"send a smaller height and width (even {name}=8 is over with the other side at {other})"
    return f"lower {name} to at most {side} (with {'width' if name == 'height' else 'height'}={other})"


def machine_memory() -> int:
    """This machine's physical memory, or the container's limit when that is lower (cgroup v2 or v1)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_request_memory(models) -> int:
    """--max-request-memory-mb left out: the machine's memory less every worker's copy of its engine's weights,
    shared by all workers (each may run a request at once); never below an engine's own default request (the
    weights may live on a GPU, or the estimate be high)."""
    workers = sum(model.manager.worker_count for model in models)
    weights = sum(model.manager.worker_count * model.facts.get("sizes", {}).get("weights_bytes", 0)
                  for model in models)
    floor = max([0] + [request_memory(default_request(model.facts), model.facts) for model in models
                       if "default_steps" in model.facts])
    return max(floor, (machine_memory() - weights) // max(1, workers))
