"""The argument table (engine/argument_specs.py) against the engines' signatures, and the engine loader's
family table: one home for each default and limit."""
import inspect
import json

import numpy as np
import pytest

from inpaintrt import Engine
from inpaintrt.engine.argument_specs import ALONE, INPAINT_DEFAULTS, OUTPAINT, SPECS, needing
from inpaintrt.engine.manifest import EngineDirectoryError


def keywords(function, skip=("self", "image", "mask_image")) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def test_inpaint_signature_is_the_table():
    """Same names, same order, same defaults: the flat diffusers-style signature and the table agree."""
    signature = keywords(Engine.inpaint)
    assert list(signature) == list(INPAINT_DEFAULTS)
    assert signature == INPAINT_DEFAULTS


def test_outpaint_signature_has_the_table_defaults():
    signature = keywords(Engine.outpaint)
    for spec in OUTPAINT:
        assert signature[spec.name] == spec.default, spec.name


def test_kandinsky_signature_has_the_table_defaults():
    """Kandinsky's own arguments are exactly the table's rows that need a prior, with their defaults."""
    from inpaintrt.engine.kandinsky import KandinskyEngine

    signature = keywords(KandinskyEngine.inpaint)
    own = set(signature) - set(INPAINT_DEFAULTS)
    assert own == set(needing("prior"))
    for name in own:
        assert signature[name] == SPECS[name].default, name


def test_every_surface_reads_the_table():
    """The command line's flags, outpaint's refusals and the batching rule are the table's columns."""
    from inpaintrt.cli import _inpaint_parser
    from inpaintrt.engine.outpaint import NOT_HERE
    from inpaintrt.engine.preflight import batchable

    flags = {action.dest for action in _inpaint_parser()._actions}
    assert {name for name, spec in SPECS.items() if spec.cli} <= flags
    assert not {name for name, spec in SPECS.items() if not spec.cli} & flags - {"scheduler"}
    assert set(NOT_HERE) - {"mask_image"} == {name for name, spec in SPECS.items() if spec.not_outpaint}
    for name in ALONE:
        assert batchable("inpaint", {}) and not batchable("inpaint", {name: object()}), name
    assert not batchable("outpaint", {}) and batchable("inpaint", {"mask_mode": "binary", "guess_mode": False})


@pytest.mark.parametrize("name, words", [
    ("mask_grow", "from 0 to 4096"), ("strength", "in (0, 1]"), ("blur_factor", "in [0, 10000)"),
    ("num_inference_steps", ">= 1"), ("guidance_scale", ""),
])
def test_range_text(name, words):
    assert SPECS[name].range_text() == words


def test_unknown_family_is_refused_by_name(engine_dir, tmp_path):
    """The loader's family table is the one place a family is known; another family is a clear error."""
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["family"] = "sd9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineDirectoryError, match="model family 'sd9' is not one this inpaintrt runs .*sd1, sd2, "
                                                   "sdxl, kandinsky22"):
        Engine.load(copy, verify_hashes=False)


@pytest.mark.parametrize("overrides, field, fix", [
    (dict(mask_grow=5000), "mask_grow", "use a whole number of pixels from 0 to 4096"),
    (dict(strength=0), "strength", "use a number in (0, 1]"),
    (dict(mask_mode="grey"), "mask_mode", "use one of binary, soft"),
    (dict(mask_grow=2, mask_shrink=2), "mask_shrink", "pass one of mask_grow and mask_shrink"),
    (dict(height=60), "height", "use a positive multiple of 8, e.g. 64"),
    (dict(denoising_start=0.5, denoising_end=0.4), "denoising_end", "use a denoising_end above denoising_start"),
    (dict(image_embeds=[[0.0]]), "image_embeds", "leave it out"),
    (dict(original_size=(64, 64)), "original_size", "leave them out"),
    (dict(mask_image=np.zeros((64, 96), np.uint8)), "mask_image", "paint white where the picture should change"),
    (dict(image=np.zeros((4, 4, 3), np.uint8)), "image", "pass a picture of at least 8x8 pixels"),
])
def test_a_refusal_names_its_field_and_fix(engine, overrides, field, fix):
    """The InvalidArgument carries the field and that refusal's fix, for the server and the CLI to use."""
    from pictures import sample_image, sample_mask
    from inpaintrt.runtime.errors import InvalidArgument

    arguments = {**dict(image=sample_image(96, 64), mask_image=sample_mask(96, 64), prompt="a cat",
                        num_inference_steps=2, height=64, width=96, progress=False), **overrides}
    with pytest.raises(InvalidArgument) as raised:
        engine.inpaint(**arguments)
    assert (raised.value.field, raised.value.fix) == (field, fix), str(raised.value)
