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
from .engine.cuda_options import parse_cuda_option
from .runtime.errors import InvalidArgument
from .runtime.schedulers import SCHEDULERS, describe_schedulers


# Engine.inpaint's arguments the `inpaint` command line sets, grouped as its help shows them
FAMILY_DEFAULTED = ("prompt_syntax", "num_inference_steps", "guidance_scale")
INPAINT_ONLY = ("num_images_per_prompt", "padding_mask_crop", "blur_factor", "keep_unmasked", "keep_input_size",
                "mask_grow", "mask_shrink", "mask_invert")
SDXL_FLAGS = ("prompt_2", "negative_prompt_2", "denoising_start", "denoising_end", "aesthetic_score",
              "negative_aesthetic_score")
COMMON_FLAGS = ("prompt", "negative_prompt", "strength", "height", "width", "mask_mode", "masked_content") + SDXL_FLAGS


def _flag_of(name: str) -> str:
    return SPECS[name].flag or "--" + name.replace("_", "-")


def _spec_flag(parser, name: str, **more) -> None:
    """A flag made from the engines' argument table (engine/argument_specs.py): type, choices, default, help."""
    spec = SPECS[name]
    options = {"dest": name, "default": spec.default}
    if spec.kind == "flag":
        options["action"] = "store_true"
    elif spec.kind == "choice":
        options["choices"] = spec.choices
    elif spec.kind in ("whole", "real"):
        options.update(type=int if spec.kind == "whole" else float, metavar="N")
    wanted = spec.wanted() if spec.kind in ("whole", "real") else ""
    default = more.get("default", spec.default)
    options["help"] = (spec.help.rstrip(".") + (f" ({wanted})" if wanted else "")
                       + (f"; default {default}" if default not in (None, False, "") else ""))
    parser.add_argument(_flag_of(name), **{**options, **more})


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
        prog="inpaint-export", description="Export a Stable Diffusion 1.x/2.x checkpoint to an inpaintrt engine directory."
    )
    parser.add_argument("--model", required=True,
                        help="hub id (e.g. runwayml/stable-diffusion-inpainting), diffusers folder or .safetensors file")
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
    from .export.trt_build import PlanBuildError

    try:
        from .export.loading import checkpoint_family

        if checkpoint_family(args.model, args.config) == "kandinsky22" or args.prior:
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
    parser.add_argument("--mask", help="mask file: white = repaint, black = keep (not with --extend)")
    _spec_flag(parser, "prompt", default="")
    _spec_flag(parser, "negative_prompt")
    for name in FAMILY_DEFAULTED:  # left out unless given: the engine's family default applies
        _spec_flag(parser, name, default=None)
    _spec_flag(parser, "strength")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="default: the checkpoint's own")
    parser.add_argument("--scheduler-option", action="append", default=[], metavar="NAME=VALUE",
                        help="override a scheduler setting, e.g. use_karras_sigmas=true or eta=0.3 (JSON values)")
    parser.add_argument("--seed", type=int, help="random seed (default: fresh entropy)")
    for name in ("height", "width") + INPAINT_ONLY[:5]:
        _spec_flag(parser, name)
    masks = parser.add_argument_group("masks (beyond diffusers)")
    for name in ("mask_mode", "masked_content") + INPAINT_ONLY[5:]:
        _spec_flag(masks, name)
    outpaint = parser.add_argument_group("outpainting")
    outpaint.add_argument("--extend", metavar="SIDE=N,...",
                          help="grow the canvas instead of using --mask, e.g. left=256,right=128 (sides: left, right, "
                               "top, bottom); passes of at most --height x --width (default: the model's size)")
    for name in ("overlap", "fill"):
        _spec_flag(outpaint, name)
    sdxl = parser.add_argument_group("SDXL")
    for name in SDXL_FLAGS:
        _spec_flag(sdxl, name)
    control = parser.add_argument_group("ControlNet (engines exported with --controlnet)")
    control.add_argument("--control-image", action="append", default=[], metavar="FILE|none",
                         help="control picture, one per ControlNet in export order ('none': an inpaint ControlNet "
                              "builds it from the image and mask, a plain one stays off); default: none for all")
    control.add_argument("--controlnet-scale", action="append", type=float, default=[], metavar="SCALE",
                         help="controlnet_conditioning_scale, one or one per ControlNet (default diffusers': 0.5 on SD 1.x/2.x, 1.0 on SDXL)")
    control.add_argument("--control-start", type=float, default=0.0, help="control_guidance_start (default 0)")
    control.add_argument("--control-end", type=float, default=1.0, help="control_guidance_end (default 1)")
    control.add_argument("--guess-mode", action="store_true", help="guess_mode: the ControlNet sees no negative prompt")
    kandinsky = parser.add_argument_group("Kandinsky 2.2 image prompts (engines exported with --prior)")
    kandinsky.add_argument("--image-prompt", action="append", default=[], metavar="FILE[:WEIGHT]",
                           help="a picture mixed into the prompt's image embedding at WEIGHT (default 1; repeatable)")
    _spec_flag(kandinsky, "prompt_weight")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "ort-cuda", "ort-cpu", "openvino"),
                        help="auto (default): TensorRT when the engine has plans that run here, else ONNX Runtime "
                             "(CUDA, else CPU); with --precision bf16 it is openvino")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                        help="bf16: OpenVINO on the CPU (`pip install 'inpaintrt[openvino]'`), about 2x faster where "
                             "the CPU has bf16, close to but not exactly diffusers'; fp16 / fp32: ort-cuda's graphs; "
                             "default: each backend's own (fp32 on the CPU)")
    parser.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the UNet call as a CUDA graph")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="NAME=VALUE",
                        help="ort-cuda: an ONNX Runtime CUDA provider option, e.g. prefer_nhwc=1 or "
                             "cudnn_conv_algo_search=HEURISTIC (repeatable)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="fuse a LoRA (.safetensors, diffusers or kohya layout) into the weights at load, at "
                             "SCALE (default 1; repeatable; ort-cpu and ort-cuda)")
    parser.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                        help="a textual-inversion embedding (.pt, .bin, .safetensors) as a new prompt token, TOKEN or "
                             "the file's name (repeatable; ort-cpu and ort-cuda)")
    parser.add_argument("--no-safety-checker", action="store_true",
                        help="load the engine without its safety checker, where it has one (docs/safety-checker.md)")
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
    from . import Engine
    from .runtime.images import load_picture

    try:
        options = dict(_parse_option(text) for text in args.scheduler_option)
        if (args.mask is None) == (args.extend is None):
            raise ValueError("pass --mask (inpaint) or --extend (outpaint), one of the two")
        sides = _parse_extend(args.extend) if args.extend else None
        # Engine.inpaint's own checks and messages, before the engine is loaded
        _check_flags(args)
        image, mask = load_picture(args.image, "image"), None if sides else load_picture(args.mask, "mask_image")
        cuda_options = dict(parse_cuda_option(text) for text in args.cuda_option) if args.cuda_option else None
        engine = Engine.load(args.engine, backend=args.backend, cuda_graph=args.cuda_graph, precision=args.precision,
                             safety_checker=not args.no_safety_checker,
                             cuda_options=cuda_options, loras=args.lora or None, embeddings=args.embedding or None)
        print(f"backend {engine.backend}, precision {engine.precision}", file=sys.stderr)
        common = dict(
            scheduler=args.scheduler, scheduler_options=options or None, generator=args.seed, progress=True,
            **{name: getattr(args, name) for name in COMMON_FLAGS}, **_control_arguments(args),
            **_image_prompt_arguments(args),
        )
        common.update({name: getattr(args, name) for name in FAMILY_DEFAULTED if getattr(args, name) is not None})
        masking = {name: getattr(args, name) for name in INPAINT_ONLY}
        if sides:  # what only an inpaint call takes goes along only when set, so outpaint can refuse it
            result = engine.outpaint(image, **sides, overlap=args.overlap, fill=args.fill, **common,
                                     **{k: v for k, v in masking.items() if v != SPECS[k].default})
        else:
            result = engine.inpaint(image, mask, **common, **masking)
    except InvalidArgument as e:  # named by its flag
        return _fail(f"{_flag_of(e.field)}: {e}" if e.field in SPECS else str(e))
    except (OSError, ValueError, RuntimeError) as e:
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

    for name in FAMILY_DEFAULTED + COMMON_FLAGS + INPAINT_ONLY + ("overlap", "fill"):
        if getattr(args, name) is not None:
            check.from_table(name, getattr(args, name))


def _control_arguments(args) -> dict:
    """The ControlNet flags as Engine.inpaint arguments; only those given, so engines without one are not asked."""
    from .runtime.images import load_picture

    found = {}
    if args.control_image:
        images = [None if f.lower() == "none" else load_picture(f, "control_image") for f in args.control_image]
        found["control_image"] = images[0] if len(images) == 1 else images
    if args.controlnet_scale:
        scales = args.controlnet_scale
        found["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    if args.control_start != 0.0:
        found["control_guidance_start"] = args.control_start
    if args.control_end != 1.0:
        found["control_guidance_end"] = args.control_end
    if args.guess_mode:
        found["guess_mode"] = True
    return found


def _image_prompt_arguments(args) -> dict:
    """--image-prompt FILE[:WEIGHT] and --prompt-weight as Engine.inpaint arguments, only when given."""
    found = {} if args.prompt_weight == SPECS["prompt_weight"].default else {"prompt_weight": args.prompt_weight}
    pairs = []
    for text in args.image_prompt:
        file, sep, weight = text.rpartition(":")
        try:
            pairs.append((file, float(weight)) if sep and file else (text, 1.0))
        except ValueError:
            pairs.append((text, 1.0))  # a colon in the file's name, no weight
    if pairs:
        found["image_prompts"] = pairs
    return found


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
    from .export.models import save_pipeline
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
