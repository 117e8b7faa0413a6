"""`inpaint --image DIR`: pictures matched to masks by name (or one mask for all, or their own alpha), each
the single-picture command's result, a bad picture reported and skipped, the summary line and exit code."""
import numpy as np
import pytest
from PIL import Image

from pictures import sample_image, sample_mask
from inpaintrt.cli import inpaint_main

W, H = 64, 48
FAST = ["--steps", "2", "--seed", "5", "--prompt", "a red bench"]


def run(engine_dir, *flags) -> int:
    return inpaint_main(["--engine", str(engine_dir), *FAST, *map(str, flags)])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.fixture
def folders(tmp_path):
    """pictures/{a.png, b.jpg, c.png, d.png} and masks/{a, b, c} (c of another size; d has none)."""
    pictures, masks = tmp_path / "pictures", tmp_path / "masks"
    pictures.mkdir(), masks.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c.png", "d.png"]):
        sample_image(W, H, seed=i).save(pictures / name)
    for stem in "ab":
        sample_mask(W, H).save(masks / f"{stem}.png")
    sample_mask(W + 8, H).save(masks / "c.png")
    return pictures, masks, tmp_path / "out"


def test_a_mask_folder_matched_by_name_with_bad_pictures_skipped(engine_dir, folders, tmp_path, capsys):
    pictures, masks, out = folders
    assert run(engine_dir, "--image", pictures, "--mask", masks, "--output", out) == 1
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    summary = last_line(err)
    assert summary.startswith(f"2 of 4 pictures written to {out}; 2 failed: c.png (")
    assert "mask_image" in summary and f"d.png (no mask named d.* in {masks})" in summary
    assert "skipped c.png:" in err and "skipped d.png:" in err and "Traceback" not in err
    # each picture's result is what the single-picture command writes for it
    assert run(engine_dir, "--image", pictures / "b.jpg", "--mask", masks / "b.png", "--output",
               tmp_path / "single.png") == 0
    assert np.array_equal(pixels(out / "b.png"), pixels(tmp_path / "single.png"))


def test_one_mask_for_every_picture_and_several_images_each(engine_dir, folders, tmp_path, capsys):
    pictures, masks, out = folders
    (pictures / "d.png").unlink()
    sample_image(W, H, seed=9).save(pictures / "c.png")
    assert run(engine_dir, "--image", pictures, "--mask", masks / "a.png", "--output", out,
               "--num-images", "2") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{stem}-{i}.png" for stem in "abc" for i in (1, 2)]
    assert last_line(capsys.readouterr().err) == f"3 of 3 pictures written to {out}"


def test_alpha_masks_in_a_folder_need_no_mask(engine_dir, tmp_path, capsys):
    pictures, out = tmp_path / "cut-outs", tmp_path / "out"
    pictures.mkdir()
    alpha = 255 - np.asarray(sample_mask(W, H))
    for i, stem in enumerate(["one", "two"]):
        rgba = np.dstack([np.asarray(sample_image(W, H, seed=i)), alpha]).astype(np.uint8)
        Image.fromarray(rgba, "RGBA").save(pictures / f"{stem}.png")
    sample_image(W, H).save(pictures / "opaque.png")  # RGB: no alpha to read a mask from
    (pictures / "broken.png").write_bytes(b"not a picture")
    (pictures / "notes.txt").write_text("not a picture, not counted")
    assert run(engine_dir, "--image", pictures, "--output", out) == 1
    summary = last_line(capsys.readouterr().err)
    assert summary.startswith(f"2 of 4 pictures written to {out}; 2 failed: broken.png (image is not a picture")
    assert "opaque.png (no mask_image was given and image (mode RGB) has no alpha channel" in summary
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "two.png"]


@pytest.mark.parametrize("flags, words", [
    (["--output", "{tmp}/inpainted.png"], "names a picture; with --image DIR"),
    (["--output", "{pictures}"], "is an input folder"),
    (["--mask", "{pictures}", "--output", "{tmp}/out"], "is the --image folder"),
    (["--mask", "{tmp}/missing.png", "--output", "{tmp}/out"], "no such file"),
    (["--extend", "left=8", "--output", "{tmp}/out"], "--extend outpaints one picture"),
    (["--image", "{tmp}/empty", "--output", "{tmp}/out"], "holds no pictures"),
])
def test_what_stops_a_whole_folder_run(engine_dir, folders, tmp_path, capsys, flags, words):
    pictures = folders[0]
    (tmp_path / "empty").mkdir()
    flags = [f.format(tmp=tmp_path, pictures=pictures) for f in flags]
    image = [] if "--image" in flags else ["--image", pictures]
    assert run(engine_dir, *image, *flags) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "refused before any picture is written"
