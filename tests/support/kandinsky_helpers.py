"""Kandinsky 2.2 test models: tiny prior + decoder folders, the engines exported from them
(with and without the prior) and the diffusers pipelines to compare with, built once per session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_builds import shared_build


@dataclass
class KandinskySetup:
    decoder_folder: Path
    prior_folder: Path
    engine: Path  # decoder + prior
    decoder_engine: Path  # decoder only: calls need image_embeds
    combined: object  # KandinskyV22InpaintCombinedPipeline (its prior_pipe / decoder_pipe are the separate ones)


def kandinsky_setup(tmp_path_factory) -> KandinskySetup:
    from diffusers import KandinskyV22InpaintCombinedPipeline

    from inpaintrt.export.kandinsky import export_kandinsky, load_kandinsky
    from inpaintrt.export.random_models_kandinsky import save_kandinsky

    def build(root):
        decoder_folder, prior_folder = save_kandinsky(root / "checkpoints", seed=3)
        decoder, prior = load_kandinsky(str(decoder_folder), str(prior_folder))
        quiet = dict(log=lambda *_: None)
        engine = export_kandinsky(decoder, prior, root / "engine", source=str(decoder_folder), **quiet)
        decoder_engine = export_kandinsky(decoder, None, root / "decoder-engine", optimize=False, **quiet)  # as traced
        return decoder_folder, prior_folder, engine, decoder_engine

    decoder_folder, prior_folder, engine, decoder_engine = shared_build(tmp_path_factory, "kandinsky", build)
    decoder, prior = load_kandinsky(str(decoder_folder), str(prior_folder))
    combined = KandinskyV22InpaintCombinedPipeline(
        unet=decoder.unet, scheduler=decoder.scheduler, movq=decoder.movq, prior_prior=prior.prior,
        prior_image_encoder=prior.image_encoder, prior_text_encoder=prior.text_encoder,
        prior_tokenizer=prior.tokenizer, prior_scheduler=prior.scheduler, prior_image_processor=prior.image_processor)
    combined.set_progress_bar_config(disable=True)
    return KandinskySetup(decoder_folder, prior_folder, engine, decoder_engine, combined)


class RecordingGenerator:
    """numpy's default_rng(seed) that remembers the shape of every draw."""

    def __init__(self, seed: int):
        self.rng, self.shapes = np.random.default_rng(seed), []

    def standard_normal(self, size, dtype=np.float64):
        self.shapes.append(tuple(size))
        return self.rng.standard_normal(size, dtype=dtype)


def relative(got, expected) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max() / np.abs(expected).max())
