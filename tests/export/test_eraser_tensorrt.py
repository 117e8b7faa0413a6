"""Erasers on TensorRT, against the fake `tensorrt` of each API surface (tests/support/trt_fakes.py): plans built
from the fp16 graph and checked, a window padded up to the smallest plan that holds it, one plan for MI-GAN."""
import shutil

import numpy as np
import pytest
from PIL import Image

from inpaintrt import Engine
from inpaintrt.engine.manifest import read_manifest
from inpaintrt.runtime.errors import InvalidArgument
from inpaintrt.export.trt_build import rebuild_plans
from trt_fakes import SURFACES, install

SIZES = ((64, 96), (128, 128))


def picture_and_mask(h, w):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (w // 4, h // 4, w // 2, h // 2))
    return image, mask


@pytest.mark.parametrize("surface", SURFACES)
def test_lama_plans_pad_each_window_to_a_plan(erasers, surface, tmp_path, monkeypatch):
    root = tmp_path / "lama"
    shutil.copytree(erasers["lama"], root)
    install(monkeypatch, surface)
    rebuild_plans(root, SIZES, 1, timing_cache=tmp_path / "cache", log=lambda *_: None)
    plans = read_manifest(root)["tensorrt"]["plans"]["eraser"]
    assert [p["size"] for p in plans] == [list(s) for s in SIZES] and all(p["max_rel_error"] <= 3e-2 for p in plans)
    engine, reference = Engine.load(root), Engine.load(root, backend="ort-cpu")
    assert engine.backend == "tensorrt"
    image, mask = picture_and_mask(50, 70)
    got = engine.inpaint(image, mask, hd_strategy="original", output_type="np").images[0]
    # the same window padded (symmetric, bottom and right) to the 64x96 plan, run on the fp32 graph
    pixels, hole = np.asarray(image, np.float32) / 255, np.asarray(mask) >= 128
    pad = ((0, 14), (0, 26))
    fill = reference._forward(np.pad(pixels, pad + ((0, 0),), mode="symmetric"),
                              np.pad(hole, pad, mode="symmetric"))[:50, :70]
    expected = np.where(hole[..., None], fill, pixels)
    assert 0 < np.abs(got - expected).max() <= 0.03
    assert list(engine.sessions["eraser"].runners) == ["plans/eraser-64x96.plan"]
    with pytest.raises(InvalidArgument, match=r"a 150x150 window is larger than every TensorRT plan of this eraser "
                                              r"\(built: 64x96, 128x128\).*hd_strategy_resize_limit=128"):
        engine.inpaint(*picture_and_mask(150, 150), hd_strategy="original")
    out = engine.inpaint(*picture_and_mask(150, 150), hd_strategy="resize", hd_strategy_resize_limit=128).images[0]
    assert out.size == (150, 150)


def test_migan_has_one_plan_at_its_resolution(erasers, tmp_path, monkeypatch):
    from inpaintrt.export.eraser import export_eraser
    from inpaintrt.export.exporter import PlanOptions

    install(monkeypatch, "11.x")
    root = export_eraser(erasers["migan_pt"], tmp_path / "migan", tensorrt=PlanOptions(SIZES, 1, tmp_path / "c"),
                         log=lambda *_: None)
    plans = read_manifest(root)["tensorrt"]["plans"]["eraser"]
    assert [p["size"] for p in plans] == [None]
    image, mask = picture_and_mask(40, 56)
    got = Engine.load(root).inpaint(image, mask, output_type="np").images[0]
    expected = Engine.load(root, backend="ort-cpu").inpaint(image, mask, output_type="np").images[0]
    assert np.abs(got - expected).max() <= 0.03
