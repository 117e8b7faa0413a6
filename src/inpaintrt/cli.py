"""Command lines: `inpaint-export` (needs torch + diffusers), `inpaint` and `inpaint-demo`."""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from .engine.argument_specs import SPECS
from .engine.load_options import add_load_arguments, load_options_from
from .runtime.errors import InvalidArgument
from .runtime.schedulers import SCHEDULERS, describe_schedulers
from .export_cli import build_plans_main, export_main, fail  # noqa: F401  (the export entry points, importable here too)


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
        return fail(f"{_flag_of(e.field)}: {e}" if e.field in SPECS and SPECS[e.field].cli else str(e))
    except (OSError, ValueError, RuntimeError, MissingMethod) as e:
        return fail(str(e))
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
