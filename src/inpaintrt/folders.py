"""Folder batches of the `inpaint` command line (docs/inpaint.md, "Folders of pictures"): `--image DIR` with
masks matched by name stem from `--mask DIR`, one `--mask FILE` for every picture, or none (each picture's
own transparent pixels). Each picture gets the same one call the single-picture command makes; a picture
that fails is reported and skipped, the rest are done, and a summary line says what was written."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .runtime import images as imaging
from .runtime.errors import InvalidArgument

PICTURES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Job:
    image: Path
    mask: object = None  # a mask file, the one mask every picture shares (loaded once), or None: the alpha
    problem: str | None = None  # why it cannot run, found while matching (reported when its turn comes)


def pictures_in(folder: Path) -> list[Path]:
    """The picture files directly in folder (not its subfolders, not hidden files), by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in PICTURES and not p.name.startswith("."))


def plan(image_dir, mask, output, sides=None) -> list[Job]:
    """One Job per picture of image_dir, its mask found; what stops the whole run is an InvalidArgument."""
    image_dir, output = Path(image_dir), Path(output)
    if sides:
        fix = "pass --image FILE to outpaint, or leave --extend out to inpaint the folder"
        raise InvalidArgument("image", f"--extend outpaints one picture, and --image {image_dir} is a folder; {fix}",
                              fix)
    images = pictures_in(image_dir)
    if not images:
        fix = f"pass a folder holding {', '.join(PICTURES)} files as --image"
        raise InvalidArgument("image", f"--image {image_dir} holds no pictures; {fix}", fix)
    _check_output(output, image_dir, mask)
    masks = _masks(Path(mask)) if mask is not None else None
    stems: dict[str, list[Path]] = {}
    for path in images:
        stems.setdefault(path.stem, []).append(path)
    jobs = []
    for path in images:
        job = Job(path)
        if len(stems[path.stem]) > 1:  # both results would be written to <stem>.png
            job.problem = (f"{' and '.join(p.name for p in stems[path.stem])} share the name {path.stem!r}, so their "
                           f"results would overwrite each other; rename one")
        elif isinstance(masks, dict):
            found = masks.get(path.stem, [])
            if len(found) == 1:
                job.mask = found[0]
            else:
                job.problem = (f"no mask named {path.stem}.* in {mask}" if not found else
                               f"several masks named {path.stem}.* in {mask} ({', '.join(p.name for p in found)}); "
                               "keep one")
        else:
            job.mask = masks
        jobs.append(job)
    return jobs


def _masks(mask: Path):
    """{stem: mask files} of a mask folder, or the one mask file loaded once (a bad one stops the run)."""
    if mask.is_dir():
        found: dict[str, list[Path]] = {}
        for path in pictures_in(mask):
            found.setdefault(path.stem, []).append(path)
        return found
    return imaging.load_picture(mask, "mask_image")


def _check_output(output: Path, image_dir: Path, mask) -> None:
    fix = "pass --output DIR, a folder to write <name>.png into (made if missing)"
    if output.exists() and not output.is_dir():
        raise InvalidArgument("output", f"--output {output} is a file; with --image DIR, {fix}", fix)
    if not output.exists() and output.suffix.lower() in PICTURES:  # the single-picture default, inpainted.png
        raise InvalidArgument("output", f"--output {output} names a picture; with --image DIR, {fix}", fix)
    inputs = [image_dir] + ([Path(mask)] if mask is not None and Path(mask).is_dir() else [])
    if any(output.resolve() == folder.resolve() for folder in inputs):  # <stem>.png would overwrite PNG inputs
        fix = "pass another folder as --output"
        raise InvalidArgument("output", f"--output {output} is an input folder; its pictures would be overwritten; "
                              f"{fix}", fix)
    if mask is not None and Path(mask).resolve() == image_dir.resolve():
        fix = "keep the masks in a folder of their own, named as the pictures"
        raise InvalidArgument("mask_image", f"--mask {mask} is the --image folder: every picture would be its own "
                              f"mask; {fix}", fix)


def output_paths(folder: Path, stem: str, count: int) -> list[Path]:
    """folder/<stem>.png, or <stem>-1.png, <stem>-2.png, ... for several images per picture."""
    return [folder / f"{stem}.png"] if count == 1 else [folder / f"{stem}-{i + 1}.png" for i in range(count)]


def run(jobs: list[Job], inpaint_one: Callable, output, progress: bool = True) -> int:
    """inpaint_one(picture, mask) for each job, its images written to output; 0 when every picture was
    written, else 1 after a summary line naming each failure and why."""
    from tqdm.auto import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    failed, written, flagged = [], 0, 0
    for job in tqdm(jobs, desc="pictures", unit="picture", disable=not progress):
        try:
            if job.problem:
                raise ValueError(job.problem)
            picture, mask = imaging.load_pair(job.image, job.mask)
            result = inpaint_one(picture, mask)
            paths = output_paths(output, job.image.stem, len(result.images))
            for path, image in zip(paths, result.images):
                image.save(path)
        except (ValueError, OSError) as e:  # InvalidArgument is a ValueError: a bad picture, not a bad run
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            failed.append(f"{job.image.name} ({why})")
            tqdm.write(f"skipped {job.image.name}: {why}", file=sys.stderr)
            continue
        written += 1
        flagged += sum(bool(f) for f in getattr(result, "nsfw_content_detected", None) or [])
        for path in paths:
            tqdm.write(str(path), file=sys.stdout)
    if flagged:  # those files are black, as diffusers returns flagged images
        print(f"note: the safety checker found potential NSFW content in {flagged} images, written black; try "
              "another prompt or seed (or --no-safety-checker)", file=sys.stderr)
    summary = f"{written} of {len(jobs)} pictures written to {output}"
    if failed:
        summary += f"; {len(failed)} failed: " + "; ".join(failed)
    print(summary, file=sys.stderr)
    return 1 if failed else 0
