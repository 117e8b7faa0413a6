"""Command lines: `inpaint-export` (needs torch + diffusers), `inpaint` and `inpaint-demo`."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import warnings
from pathlib import Path

from .engine.argument_specs import SPECS
from .engine.load_options import add_load_arguments, load_options_from
from .runtime.errors import InvalidArgument
from .runtime.schedulers import SCHEDULERS, describe_schedulers


def _flag_of(name: str) -> str:
    return SPECS[name].flag or "--" + name.replace("_", "-")


# the table's `cli` column -> how argparse reads the flag (one value, or one per ControlNet / image prompt)
REPEATED = {"reals": float, "pictures": str, "image_prompts": str}


def _spec_flag(parser, spec) -> None:
    """A flag made from the engines' argument table (engine/argument_specs.py): type, choices, help. Its
    default is None (False for on/off flags, [] for repeated ones): only what is given reaches the engine,
    so the engine's own default, its family's where the table says so, applies to the rest."""
    options = {"dest": spec.name, "default": None}
    if spec.kind == "flag":
        options.update(action="store_true", default=False)
    elif spec.cli in REPEATED:
        options.update(action="append", default=[], type=REPEATED[spec.cli])
    elif spec.kind == "choice":
        options["choices"] = spec.choices
    elif spec.kind in ("whole", "real") or spec.cli == "real":
        options.update(type=int if spec.kind == "whole" else float, metavar="N")
    if spec.metavar:
        options["metavar"] = spec.metavar
    wanted = spec.wanted() if spec.kind in ("whole", "real") else ""
    shown = not spec.per_family and spec.default not in (None, False, "", ())
    options["help"] = (spec.help.rstrip(".") + (f" ({wanted})" if wanted else "")
                       + (f"; default {spec.default}" if shown else ""))
    parser.add_argument(_flag_of(spec.name), **options)


def _table_flags(parser) -> None:
    """Every argument-table row with a command-line flag, in the table's order, in its help group."""
    groups = {"": parser}
    for spec in SPECS.values():
        if spec.cli:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group)
            _spec_flag(groups[spec.group], spec)


def _given(args) -> dict:
    """Engine.inpaint / outpaint arguments from the table's flags: only those given (the prompt always)."""
    found = {}
    for name, spec in SPECS.items():
        value = getattr(args, name, None) if spec.cli else None
        if value is None or value is False or value == []:
            continue
        found[name] = CONVERT.get(spec.cli, lambda v: v)(value)
    found.setdefault("prompt", "")
    return found


def _one_or_list(values: list):
    return values[0] if len(values) == 1 else values


def _control_images(files: list[str]):
    """--control-image FILE|none, one per ControlNet: 'none' leaves that ControlNet its default."""
    from .runtime.images import load_picture

    return _one_or_list([None if f.lower() == "none" else load_picture(f, "control_image") for f in files])


def _image_prompts(texts: list[str]) -> list:
    """--image-prompt FILE[:WEIGHT] as (file, weight) pairs."""
    pairs = []
    for text in texts:
        file, sep, weight = text.rpartition(":")
        try:
            pairs.append((file, float(weight)) if sep and file else (text, 1.0))
        except ValueError:
            pairs.append((text, 1.0))  # a colon in the file's name, no weight
    return pairs


CONVERT = {"reals": _one_or_list, "pictures": _control_images, "image_prompts": _image_prompts}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="512,1024",
                        help="static TensorRT sizes: N (square) or HEIGHTxWIDTH, comma-separated (default 512,1024)")
    parser.add_argument("--max-images", type=int, default=2,
                        help="largest number of images one call makes (prompts x num_images_per_prompt); default 2")
    parser.add_argument("--timing-cache", type=Path,
                        help="TensorRT timing cache file (default ~/.cache/inpaintrt/tensorrt-<version>-sm<gpu>.cache)")


def _plan_options(args):
    from .engine.plans import parse_sizes

    if args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    return parse_sizes(args.sizes), args.max_images, args.timing_cache


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inpaint-export", description="Export a checkpoint (Stable Diffusion 1.x/2.x/SDXL, Kandinsky 2.2, or "
                                           "an eraser: LaMa, MI-GAN) to an inpaintrt engine directory."
    )
    parser.add_argument("--model", required=True,
                        help="hub id (e.g. runwayml/stable-diffusion-inpainting), diffusers folder or .safetensors "
                             "file; an eraser: LaMa's release folder (config.yaml + models/best.ckpt), best.ckpt, "
                             "IOPaint's big-lama.pt, or an MI-GAN generator .pt")
    parser.add_argument("--kind", choices=("lama", "migan"),
                        help="export --model as this eraser (default: told from its files and keys)")
    parser.add_argument("--output", required=True, help="engine directory to write (written atomically)")
    parser.add_argument("--prior", help="Kandinsky 2.2: the prior (e.g. kandinsky-community/kandinsky-2-2-prior) for "
                                        "--model kandinsky-community/kandinsky-2-2-decoder-inpaint; without it the "
                                        "engine needs image_embeds")
    parser.add_argument("--config", help="single-file checkpoints only: a diffusers folder or hub id with its configs "
                                         "and tokenizer (otherwise diffusers infers them, which needs the hub)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    parser.add_argument("--no-optimize", action="store_true",
                        help="store the graphs as traced, without ONNX Runtime's fusions (for debugging)")
    parser.add_argument("--backend", choices=("onnx", "tensorrt"), default="onnx",
                        help="onnx (default): ONNX graphs for ONNX Runtime; tensorrt: also fp16 graphs and TensorRT "
                             "plans built on this machine's GPU (needs TensorRT 10.1+ and cupy)")
    parser.add_argument("--controlnet", action="append", default=[], metavar="[inpaint=|plain=]SOURCE",
                        help="add a ControlNet (hub id, diffusers folder or .safetensors; repeat for several): the UNet "
                             "then takes its residuals. 'inpaint=' marks one conditioned on the masked picture "
                             "(default when its name contains 'inpaint'), 'plain=' any other (canny, depth, ...)")
    parser.add_argument("--fp16", action="store_true",
                        help="also store fp16 graphs, so `inpaint-build-plans` can build TensorRT plans later elsewhere")
    from .export.cuda_graphs import CUDA_FUSIONS

    parser.add_argument("--cuda-fusion-off", action="append", default=[], choices=CUDA_FUSIONS, metavar="FUSION",
                        help="with --fp16: leave this fusion out of ort-cuda's graphs, to measure what it buys "
                             f"(repeatable; one of {', '.join(CUDA_FUSIONS)})")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="bake a LoRA (.safetensors, diffusers or kohya layout) into the weights at SCALE "
                             "(default 1; repeatable); the manifest records each file's sha256 and scale")
    parser.add_argument("--no-safety-checker", action="store_true",
                        help="leave the checkpoint's safety checker out (diffusers' safety_checker=None); by default "
                             "it is exported when the checkpoint has one (docs/safety-checker.md)")
    _plan_arguments(parser)
    args = parser.parse_args(argv)
    # a kill ends export through its cleanup, which removes the half-written directory
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from .engine.backends import BackendError, load_tensorrt

    if args.cuda_fusion_off and not (args.fp16 or args.backend == "tensorrt"):
        return _fail("--cuda-fusion-off shapes ort-cuda's fp16 graphs, which only --fp16 writes: add --fp16")
    plans = None
    if args.backend == "tensorrt":
        try:  # before torch is imported or the checkpoint loaded: fail in a second, not after minutes
            plans = _plan_options(args)
            load_tensorrt()
        except (BackendError, ValueError) as e:
            return _fail(str(e))
    try:
        from .export.exporter import ExportError, PlanOptions, export_engine
        from .export.loading import CheckpointError, load_pipeline
    except ImportError as e:
        return _fail(f"exporting needs torch and diffusers ({e}); install them with `pip install 'inpaintrt[export]'`")
    from .export.eraser import detect_eraser
    from .export.trt_build import PlanBuildError

    if args.kind or detect_eraser(args.model):
        return _export_eraser(args, PlanOptions(*plans) if plans else None)

    try:
        from .engine.families import KANDINSKY22
        from .export.loading import checkpoint_family

        if checkpoint_family(args.model, args.config) == KANDINSKY22 or args.prior:
            if args.lora:
                return _fail("--lora applies to SD 1.x, 2.x and SDXL checkpoints, not Kandinsky 2.2: leave it out")
            return _export_kandinsky(args)
        tensorrt = PlanOptions(*plans) if plans else None
        pipe = load_pipeline(args.model, config=args.config, safety_checker=not args.no_safety_checker)
        controlnets = None
        if args.controlnet:
            from .export.controlnet import load_controlnet

            controlnets = [load_controlnet(source) for source in args.controlnet]
        export_engine(pipe, args.output, source=args.model, overwrite=args.overwrite, optimize=not args.no_optimize,
                      fp16=args.fp16, tensorrt=tensorrt, release=True, controlnets=controlnets,
                      cuda_fusions_off=tuple(args.cuda_fusion_off), loras=args.lora or None,
                      safety_checker=not args.no_safety_checker)
    except (CheckpointError, ExportError, BackendError, PlanBuildError, ValueError) as e:
        return _fail(str(e))
    return 0


def _export_eraser(args, tensorrt) -> int:
    """an eraser: one graph, parity-checked as every component, and TensorRT plans with --backend tensorrt."""
    from .export.eraser import EraserSourceError, export_eraser
    from .export.exporter import ExportError
    from .export.trt_build import PlanBuildError

    refused = [flag for flag, given in (("--lora", args.lora), ("--controlnet", args.controlnet),
                                        ("--prior", args.prior), ("--config", args.config)) if given]
    if refused:
        return _fail(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to an eraser "
                     "(LaMa, MI-GAN): leave it out")
    try:
        export_eraser(args.model, args.output, kind=args.kind, overwrite=args.overwrite,
                      optimize=not args.no_optimize, fp16=args.fp16, tensorrt=tensorrt)
    except (EraserSourceError, ExportError, PlanBuildError, ValueError) as e:
        return _fail(str(e))
    return 0


def _export_kandinsky(args) -> int:
    """the decoder (+ prior) graphs; the GPU options are not built for this family yet."""
    from .export.exporter import ExportError
    from .export.kandinsky import export_kandinsky, load_kandinsky
    from .export.loading import CheckpointError

    refused = [flag for flag, given in (("--backend tensorrt", args.backend == "tensorrt"), ("--fp16", args.fp16),
                                        ("--controlnet", args.controlnet), ("--config", args.config),
                                        ("--cuda-fusion-off", args.cuda_fusion_off)) if given]
    if refused:
        return _fail(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not available for Kandinsky 2.2 engines "
                     "yet; export without")
    try:
        decoder, prior = load_kandinsky(args.model, args.prior)
        export_kandinsky(decoder, prior, args.output, source=args.model, prior_source=args.prior or "",
                         overwrite=args.overwrite, optimize=not args.no_optimize)
    except (CheckpointError, ExportError, ValueError) as e:
        return _fail(str(e))
    return 0


def build_plans_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inpaint-build-plans",
        description="Build (or rebuild) the TensorRT plans of an engine directory on this machine's GPU, from the "
                    "fp16 graphs it stores (export with --fp16 or --backend tensorrt). Needs no torch.",
    )
    parser.add_argument("--engine", required=True, type=Path, help="engine directory written by inpaint-export")
    _plan_arguments(parser)
    args = parser.parse_args(argv)
    from .engine.backends import BackendError, load_tensorrt
    from .engine.manifest import EngineDirectoryError
    from .export.trt_build import PlanBuildError, rebuild_plans

    try:
        sizes, max_images, cache = _plan_options(args)
        load_tensorrt()
        rebuild_plans(args.engine, sizes, max_images, cache)
    except (BackendError, PlanBuildError, EngineDirectoryError, ValueError) as e:
        return _fail(str(e))
    print(f"TensorRT plans written to {args.engine / 'plans'}")
    return 0


def _inpaint_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inpaint", description="Inpaint an image with an inpaintrt engine directory.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="schedulers (--scheduler) and their options (--scheduler-option NAME=VALUE):\n" + describe_schedulers(),
    )
    parser.add_argument("--engine", required=True, help="engine directory written by inpaint-export")
    parser.add_argument("--image", required=True, help="input picture file")
    parser.add_argument("--mask", help="mask file: white = repaint, black = keep (not with --extend); with --image "
                                       "DIR, a folder of masks named as the pictures, or one file for all; leave it "
                                       "out to repaint the picture's transparent pixels")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="default: the checkpoint's own")
    parser.add_argument("--scheduler-option", action="append", default=[], metavar="NAME=VALUE",
                        help="override a scheduler setting, e.g. use_karras_sigmas=true or eta=0.3 (JSON values)")
    parser.add_argument("--seed", type=int, help="random seed (default: fresh entropy)")
    parser.add_argument("--extend", metavar="SIDE=N,...",
                        help="outpaint: grow the canvas instead of using --mask, e.g. left=256,right=128 (sides: "
                             "left, right, top, bottom); passes of at most --height x --width (default: the model's)")
    _table_flags(parser)
    add_load_arguments(parser)
    parser.add_argument("--output", default="inpainted.png",
                        help="PNG to write; with several images, NAME-1.png, NAME-2.png, ...")
    return parser


def inpaint_main(argv: list[str] | None = None) -> int:
    from .engine.safety import NOTICE

    with warnings.catch_warnings():
        # the engine's NSFW warning says what this command's note says (below, with its flag): once is enough
        warnings.filterwarnings("ignore", message=re.escape(NOTICE[:NOTICE.index("{")]))
        return _run_inpaint(argv)


def _run_inpaint(argv: list[str] | None) -> int:
    args = _inpaint_parser().parse_args(argv)
    from . import Engine, folders
    from .engine.base import MissingMethod
    from .runtime.images import load_pair, load_picture

    try:
        options = dict(_parse_option(text) for text in args.scheduler_option)
        if args.mask is not None and args.extend is not None:  # no --mask either: the picture's alpha is the mask
            raise ValueError("pass --mask (inpaint) or --extend (outpaint), not both")
        sides = _parse_extend(args.extend) if args.extend else None
        _check_flags(args)  # Engine.inpaint's own checks and messages, before the engine is loaded
        folder = Path(args.image).is_dir()  # a folder of pictures: folders.py matches, runs and reports them
        jobs = folders.plan(args.image, args.mask, args.output, sides) if folder else None
        if not folder:
            image, mask = (load_picture(args.image, "image"), None) if sides else load_pair(args.image, args.mask)
        given = _given(args)
        engine = Engine.load(args.engine, **load_options_from(args).as_arguments())
        print(f"backend {engine.backend}, precision {engine.precision}", file=sys.stderr)
        common = dict(scheduler=args.scheduler, scheduler_options=options or None, generator=args.seed,
                      progress=not folder, **given)  # a folder has its own bar, over the pictures
        if engine.record.eraser:  # no prompt: the flags left unset are not passed (an eraser names those given)
            common = {name: value for name, value in common.items() if value not in (None, "")}

        def one(picture, mask):  # the call each picture gets, alone or from a folder
            return engine.inpaint(picture, mask, **common)

        if folder:
            return folders.run(jobs, one, args.output)
        result = engine.outpaint(image, **sides, **common) if sides else one(image, mask)
    except InvalidArgument as e:  # named by its flag
        return _fail(f"{_flag_of(e.field)}: {e}" if e.field in SPECS and SPECS[e.field].cli else str(e))
    except (OSError, ValueError, RuntimeError, MissingMethod) as e:
        return _fail(str(e))
    for path in _output_paths(Path(args.output), len(result.images)):
        result.images.pop(0).save(path)
        print(path)
    flagged = result.nsfw_content_detected or []
    if any(flagged):  # the files are black, as diffusers returns flagged images
        print(f"note: the safety checker found potential NSFW content in {sum(flagged)} of {len(flagged)} images, "
              "written black; try another prompt or seed (or --no-safety-checker)", file=sys.stderr)
    return 0


def _check_flags(args) -> None:
    from .engine import arguments as check

    for name, spec in SPECS.items():
        value = getattr(args, name, None) if spec.cli else None
        if value is not None and spec.kind != "other" and spec.cli not in REPEATED:
            check.from_table(name, value)


def _parse_extend(text: str) -> dict[str, int]:
    sides = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in ("left", "right", "top", "bottom") or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--extend {text!r}: each part must be SIDE=PIXELS with SIDE one of left, right, top, "
                             "bottom, e.g. left=256,right=128")
        sides[name] = int(value)
    return sides


def _parse_option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--scheduler-option {text!r} must look like NAME=VALUE, e.g. eta=0.3")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare word such as trailing


def _output_paths(output: Path, count: int) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix or '.png'}") for i in range(count)]


def demo_main(argv: list[str] | None = None) -> int:
    """The quick start's main job: build the embedded default model, export it, inpaint the sample picture."""
    parser = argparse.ArgumentParser(prog="inpaint-demo", description=demo_main.__doc__)
    parser.add_argument("--output", default="out", help="folder for the model, the engine and the pictures")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    from . import Engine
    from .export.exporter import export_engine
    from .export.loading import load_pipeline
    from .export.random_models import save_pipeline
    from .sample import sample_picture, side_by_side

    out = Path(args.output)
    checkpoint, engine_dir = out / "default-model", out / "engine"
    if not (checkpoint / "model_index.json").exists():
        print(f"building the default model (random weights, SD 1.x architecture) in {checkpoint}")
        save_pipeline(checkpoint, size="small", in_channels=9, seed=0)
    if not (engine_dir / "manifest.json").exists():
        export_engine(load_pipeline(str(checkpoint)), engine_dir, source="inpaintrt default model (random weights)")
    image, mask = sample_picture(512, 512)
    engine = Engine.load(engine_dir)
    print(f"inpainting with backend {engine.backend}")
    result = engine.inpaint(image, mask, prompt="a wooden bench in a sunny park", num_inference_steps=args.steps,
                            generator=0, keep_unmasked=True).images[0]
    for name, picture in (("input.png", image), ("mask.png", mask), ("result.png", result)):
        picture.save(out / name)
    side_by_side([image, mask, result]).save(out / "side_by_side.png")
    print(f"result: {out / 'result.png'}\nside by side (input | mask | result): {out / 'side_by_side.png'}")
    return 0
