"""`inpaint-export` and `inpaint-build-plans`: checkpoints to engine directories (diffusion models, erasers, mask
makers), and TensorRT plans for them. torch and diffusers are imported only once the flags are read."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def fail(message: str) -> int:
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
        prog="inpaint-export", description="Export a checkpoint (Stable Diffusion 1.x/2.x/SDXL, Kandinsky 2.2, an "
                                           "eraser: LaMa, MI-GAN, or a mask maker: Segment Anything, CLIPSeg) to an "
                                           "inpaintrt engine directory."
    )
    parser.add_argument("--model", required=True,
                        help="hub id (e.g. runwayml/stable-diffusion-inpainting), diffusers folder or .safetensors "
                             "file; an eraser: LaMa's release folder (config.yaml + models/best.ckpt), best.ckpt, "
                             "IOPaint's big-lama.pt, or an MI-GAN generator .pt; a mask maker: a Segment Anything "
                             "checkpoint (sam_vit_b_01ec64.pth, ..., mobile_sam.pt) or a CLIPSeg folder")
    parser.add_argument("--kind", choices=("lama", "migan", "sam", "clipseg"),
                        help="export --model as this eraser or mask maker (default: told from its files and keys)")
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
        return fail("--cuda-fusion-off shapes ort-cuda's fp16 graphs, which only --fp16 writes: add --fp16")
    plans = None
    if args.backend == "tensorrt":
        try:  # before torch is imported or the checkpoint loaded: fail in a second, not after minutes
            plans = _plan_options(args)
            load_tensorrt()
        except (BackendError, ValueError) as e:
            return fail(str(e))
    try:
        from .export.exporter import ExportError, PlanOptions, export_engine
        from .export.loading import CheckpointError, load_pipeline
    except ImportError as e:
        return fail(f"exporting needs torch and diffusers ({e}); install them with `pip install 'inpaintrt[export]'`")
    from .export.eraser import ERASER_KINDS, detect_eraser
    from .export.segmenter import SEGMENTER_KINDS, detect_segmenter
    from .export.trt_build import PlanBuildError

    if args.kind in SEGMENTER_KINDS or (args.kind is None and detect_segmenter(args.model)):
        return _export_segmenter(args)
    if args.kind in ERASER_KINDS or detect_eraser(args.model):
        return _export_eraser(args, PlanOptions(*plans) if plans else None)

    try:
        from .engine.families import KANDINSKY22
        from .export.loading import checkpoint_family

        if checkpoint_family(args.model, args.config) == KANDINSKY22 or args.prior:
            if args.lora:
                return fail("--lora applies to SD 1.x, 2.x and SDXL checkpoints, not Kandinsky 2.2: leave it out")
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
        return fail(str(e))
    return 0


def _export_eraser(args, tensorrt) -> int:
    """an eraser: one graph, parity-checked as every component, and TensorRT plans with --backend tensorrt."""
    from .export.eraser import EraserSourceError, export_eraser
    from .export.exporter import ExportError
    from .export.trt_build import PlanBuildError

    refused = [flag for flag, given in (("--lora", args.lora), ("--controlnet", args.controlnet),
                                        ("--prior", args.prior), ("--config", args.config)) if given]
    if refused:
        return fail(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to an eraser "
                     "(LaMa, MI-GAN): leave it out")
    try:
        export_eraser(args.model, args.output, kind=args.kind, overwrite=args.overwrite,
                      optimize=not args.no_optimize, fp16=args.fp16, tensorrt=tensorrt)
    except (EraserSourceError, ExportError, PlanBuildError, ValueError) as e:
        return fail(str(e))
    return 0


def _export_segmenter(args) -> int:
    """a mask maker: its graphs parity-checked as every component; no TensorRT plans yet (ort-cpu, ort-cuda)."""
    from .export.exporter import ExportError
    from .export.segmenter import SegmenterSourceError, export_segmenter

    refused = [flag for flag, given in (("--lora", args.lora), ("--controlnet", args.controlnet),
                                        ("--prior", args.prior), ("--config", args.config),
                                        ("--backend tensorrt", args.backend == "tensorrt"),
                                        ("--cuda-fusion-off", args.cuda_fusion_off)) if given]
    if refused:
        return fail(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a mask maker "
                     "(Segment Anything, CLIPSeg): leave it out (it runs on ort-cpu, ort-cuda with --fp16, openvino)")
    try:
        export_segmenter(args.model, args.output, kind=args.kind, overwrite=args.overwrite,
                         optimize=not args.no_optimize, fp16=args.fp16)
    except (SegmenterSourceError, ExportError, ValueError) as e:
        return fail(str(e))
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
        return fail(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not available for Kandinsky 2.2 engines "
                     "yet; export without")
    try:
        decoder, prior = load_kandinsky(args.model, args.prior)
        export_kandinsky(decoder, prior, args.output, source=args.model, prior_source=args.prior or "",
                         overwrite=args.overwrite, optimize=not args.no_optimize)
    except (CheckpointError, ExportError, ValueError) as e:
        return fail(str(e))
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
    from .engine.manifest import EngineDirectoryError, read_manifest
    from .engine.plans import refuse_unplanned
    from .export.trt_build import PlanBuildError, rebuild_plans

    try:
        sizes, max_images, cache = _plan_options(args)
        refuse_unplanned(read_manifest(args.engine, verify_hashes=False), args.engine)  # before TensorRT is needed
        load_tensorrt()
        rebuild_plans(args.engine, sizes, max_images, cache)
    except (BackendError, PlanBuildError, EngineDirectoryError, ValueError) as e:
        return fail(str(e))
    print(f"TensorRT plans written to {args.engine / 'plans'}")
    return 0
