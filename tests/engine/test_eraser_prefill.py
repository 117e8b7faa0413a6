"""masked_content="eraser": a diffusion engine loaded with an eraser beside it starts from the eraser's fill."""
import numpy as np
import pytest
from PIL import Image

from inpaintrt import Engine
from inpaintrt.runtime.errors import InvalidArgument

SIZE = 64


@pytest.fixture(scope="module")
def pair(engine_dir, erasers):
    return Engine.load(engine_dir, eraser=erasers["lama"]), Engine.load(erasers["lama"])


def inputs():
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 20, 44, 48))
    return image, mask


def test_the_encoded_picture_is_the_erasers_output(pair, monkeypatch):
    engine, eraser = pair
    assert engine.eraser is not None and engine.facts()["eraser"] is True
    encoder, seen = engine.sessions["vae_encoder"], []
    run = encoder.run
    monkeypatch.setattr(encoder, "run", lambda feeds: seen.append(feeds["image"]) or run(feeds))
    image, mask = inputs()
    engine.inpaint(image, mask, prompt="", masked_content="eraser", strength=0.6, num_inference_steps=2,
                   height=SIZE, width=SIZE, generator=0, output_type="np", progress=False)
    erased = eraser.inpaint(image, mask, hd_strategy="original", output_type="np").images[0]
    expected = erased.transpose(2, 0, 1)[None] * 2 - 1
    # the 9-channel UNet's picture (the masked image's encode blanks the hole either way)
    start = min(seen, key=lambda x: np.abs(x - expected).max())
    assert np.abs(start - expected).max() <= 1e-6
    plain = np.asarray(image, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    assert np.abs(start - plain)[:, :, 20:48, 16:44].mean() > 0.05  # the hole really was refilled


def test_eraser_content_without_an_eraser_is_refused(engine):
    image, mask = inputs()
    with pytest.raises(InvalidArgument, match="masked_content='eraser' fills the mask with an eraser engine.*"
                                              "eraser=ERASER_DIR") as caught:
        engine.inpaint(image, mask, masked_content="eraser", num_inference_steps=2)
    assert caught.value.field == "masked_content"


def test_the_eraser_option_must_name_an_eraser(engine_dir):
    with pytest.raises(ValueError, match="is a SD 1.x engine, not an eraser"):
        Engine.load(engine_dir, eraser=engine_dir)


def test_cli_eraser_flag(engine_dir, erasers, tmp_path):
    from inpaintrt.cli import inpaint_main

    image, mask = inputs()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    code = inpaint_main(["--engine", str(engine_dir), "--eraser", str(erasers["lama"]), "--image",
                         str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--masked-content", "eraser",
                         "--strength", "0.5", "--steps", "2", "--height", "64", "--width", "64", "--seed", "1",
                         "--output", str(tmp_path / "out.png")])
    assert code == 0 and Image.open(tmp_path / "out.png").size == (SIZE, SIZE)
