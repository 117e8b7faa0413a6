"""Kandinsky 2.2 inpainting: load the decoder and its prior, export their graphs, write the manifest.

Components (each checked against torch like the Stable Diffusion ones):
- prior_text_encoder: CLIPTextModelWithProjection -> text_embeds (projected pooled), last_hidden_state
- prior: PriorTransformer, one denoising step of the CLIP image embedding (the attention mask is the
  tokenizer's, as diffusers passes it)
- unet: the 9-channel decoder UNet conditioned on image_embeds; it predicts mean and variance: the graph
  keeps both where the scheduler's variance_type is learned / learned_range (DDPM reads the variance),
  else only the mean (a fixed variance never reads the other half)
- movq_encoder / movq_decoder: MoVQ (VQModel) encode -> latents (deterministic, no sampling) and
  decode(force_not_quantize=True), as diffusers' KandinskyV22InpaintPipeline calls them.
- prior_image_encoder: the prior's CLIPVisionModelWithProjection -> image_embeds, for pictures given as
  prompts (interpolate); its CLIPImageProcessor settings go to the manifest (prior.image_encoder), and the
  runtime reproduces them in numpy/PIL (engine/safety.py's clip_input, the safety checker's too)
The prior's constants (clip_mean, clip_std and the image encoder's embedding of a black picture, which
is diffusers' negative image embedding when no negative prompt is given) go to kandinsky_prior.npz.
Without a prior the engine is decoder-only: calls must give image_embeds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine.families import KANDINSKY22
from .exporter import (ExportError, export_component, save_tokenizer, _scheduler_config, library_versions,
                       engine_directory)
from .loading import SINGLE_FILE_SUFFIXES, CheckpointError, checkpoint_family
from .specs import ComponentSpec, TensorSpec

FAMILY = KANDINSKY22
PRIOR_CONSTANTS = "kandinsky_prior.npz"
IMAGE_ENCODER = "prior_image_encoder"
DECODERS = ("KandinskyV22InpaintPipeline", "KandinskyV22InpaintCombinedPipeline")
SUPPORTED_VARIANCE = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCE = ("learned", "learned_range")


def load_kandinsky(model: str, prior: str | None = None):
    """(KandinskyV22InpaintPipeline, KandinskyV22PriorPipeline or None) in fp32 on the CPU. `model` is the
    decoder (or a saved combined pipeline, which carries its prior); `prior` a prior folder or hub id."""
    import diffusers

    if Path(model).suffix in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(f"--model {model!r}: Kandinsky 2.2 is exported from diffusers folders or hub ids, "
                              "not single files")
    name = _class_name(model)
    if name not in DECODERS:
        raise CheckpointError(f"--model {model!r} is a {name}; pass the inpainting decoder "
                              "(e.g. kandinsky-community/kandinsky-2-2-decoder-inpaint) and give the prior with --prior")
    pipe = getattr(diffusers, name).from_pretrained(model, dtype=torch.float32)
    if name == "KandinskyV22InpaintCombinedPipeline":
        decoder, prior_pipe = pipe.decoder_pipe, pipe.prior_pipe
        if prior is not None:
            raise CheckpointError(f"--model {model!r} is a combined pipeline that carries its prior; leave out --prior")
    else:
        decoder, prior_pipe = pipe, None
        if prior is not None:
            if _class_name(prior) != "KandinskyV22PriorPipeline":
                raise CheckpointError(f"--prior {prior!r} is a {_class_name(prior)}, not a KandinskyV22PriorPipeline; "
                                      "pass e.g. kandinsky-community/kandinsky-2-2-prior")
            prior_pipe = diffusers.KandinskyV22PriorPipeline.from_pretrained(prior, dtype=torch.float32)
    _check_supported(decoder, prior_pipe)
    for p in (decoder, prior_pipe):
        if p is not None:
            p.set_progress_bar_config(disable=True)
    return decoder, prior_pipe


def _class_name(source: str) -> str:
    import json

    path = Path(source)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise CheckpointError(f"{source!r} is a folder without model_index.json; pass a diffusers pipeline folder")
        return json.loads(index.read_text()).get("_class_name", "")
    if checkpoint_family(source) != FAMILY:
        return "a non-Kandinsky 2.2 checkpoint"
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(source).get("_class_name", "")


def _check_supported(decoder, prior) -> None:
    unet = decoder.unet.config
    if unet.in_channels != 9 or unet.addition_embed_type != "image":
        raise CheckpointError(f"the decoder's UNet has in_channels={unet.in_channels}, addition_embed_type="
                              f"{unet.addition_embed_type!r}; Kandinsky 2.2 inpainting needs 9 and 'image'")
    variance = decoder.scheduler.config.get("variance_type", "fixed_small")
    if variance not in SUPPORTED_VARIANCE:
        raise CheckpointError(f"the decoder's scheduler has variance_type={variance!r}; inpaintrt implements "
                              f"{', '.join(SUPPORTED_VARIANCE)}")
    if variance in LEARNED_VARIANCE and unet.out_channels != 2 * decoder.movq.config.latent_channels:
        raise CheckpointError(f"the decoder's scheduler has variance_type={variance!r} but its UNet gives "
                              f"{unet.out_channels} channels, not mean and variance "
                              f"(2 x {decoder.movq.config.latent_channels})")
    if prior is not None and prior.prior.config.embedding_dim != unet.encoder_hid_dim:
        raise CheckpointError(f"the prior makes {prior.prior.config.embedding_dim}-wide image embeddings but the "
                              f"decoder reads {unet.encoder_hid_dim}; pass the prior that belongs to this decoder")


class _TextEncoder(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        out = self.encoder(input_ids)
        return out.text_embeds, out.last_hidden_state


class _Prior(torch.nn.Module):
    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def forward(self, hidden_states, timestep, proj_embedding, encoder_hidden_states, attention_mask):
        return self.prior(hidden_states, timestep=timestep, proj_embedding=proj_embedding,
                          encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask.bool(),
                          return_dict=False)[0]


class _ImageEncoder(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        return self.encoder(pixel_values)["image_embeds"]


class _UNet(torch.nn.Module):
    def __init__(self, unet, channels: int):
        super().__init__()
        self.unet, self.channels = unet, channels  # the latents' channels, or twice that with the variance

    def forward(self, sample, timestep, image_embeds):
        out = self.unet(sample, timestep, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": image_embeds},
                        return_dict=False)[0]
        return out[:, : self.channels]


class _MoVQEncoder(torch.nn.Module):
    def __init__(self, movq):
        super().__init__()
        self.movq = movq

    def forward(self, image):
        return self.movq.encode(image, return_dict=False)[0]


class _MoVQDecoder(torch.nn.Module):
    def __init__(self, movq):
        super().__init__()
        self.movq = movq

    def forward(self, latents):
        return self.movq.decode(latents, force_not_quantize=True, return_dict=False)[0]


def movq_scale(decoder) -> int:
    return 2 ** (len(decoder.movq.config.block_out_channels) - 1)


def unet_downsampling(decoder) -> int:
    return 2 ** (len(decoder.unet.config.block_out_channels) - 1)


def kandinsky_specs(decoder, prior) -> list[ComponentSpec]:
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    specs = []
    if prior is not None:
        specs += _prior_specs(prior, gen, randn)
    unet, movq = decoder.unet, decoder.movq
    lat = movq.config.latent_channels
    embed = unet.config.encoder_hid_dim
    f = unet_downsampling(decoder)  # this UNet's upsample blocks need latent sizes divisible by it
    s = movq_scale(decoder)
    latent_axes = ("batch", lat, "latent_height", "latent_width")
    out = 2 * lat if decoder.scheduler.config.get("variance_type") in LEARNED_VARIANCE else lat
    specs += [
        ComponentSpec(
            "unet", _UNet(unet, out),
            [TensorSpec("sample", "float32", ("batch", unet.config.in_channels, "latent_height", "latent_width")),
             TensorSpec("timestep", "float32", ("batch",)),
             TensorSpec("image_embeds", "float32", ("batch", embed))],
            [TensorSpec("noise_pred", "float32", ("batch", out, "latent_height", "latent_width"))],
            lambda b, h, w: (randn(b, unet.config.in_channels, h, w), torch.rand(b, generator=gen) * 999,
                             randn(b, embed)),
            [(2, 2 * f, 3 * f), (1, 3 * f, 5 * f)],
        ),
        ComponentSpec(
            "movq_encoder", _MoVQEncoder(movq),
            [TensorSpec("image", "float32", ("batch", 3, "height", "width"))],
            [TensorSpec("latents", "float32", latent_axes)],
            lambda b, h, w: (randn(b, 3, h, w).clamp(-1, 1),),
            [(1, s * s * 2, s * s * 3), (2, s * s, s * s)],
        ),
        ComponentSpec(
            "movq_decoder", _MoVQDecoder(movq),
            [TensorSpec("latents", "float32", latent_axes)],
            [TensorSpec("image", "float32", ("batch", 3, "height", "width"))],
            lambda b, h, w: (randn(b, lat, h, w),),
            [(1, 2 * s, 3 * s), (2, s, s)],
        ),
    ]
    return specs


def _prior_specs(prior, gen, randn) -> list[ComponentSpec]:
    encoder, transformer, vision = prior.text_encoder, prior.prior, prior.image_encoder
    side = vision.config.image_size
    seq, vocab = prior.tokenizer.model_max_length, encoder.config.vocab_size
    hidden, projection = encoder.config.hidden_size, encoder.config.projection_dim
    embed = transformer.config.embedding_dim

    def mask(b):
        lengths = torch.randint(2, seq + 1, (b,), generator=gen)
        return (torch.arange(seq)[None] < lengths[:, None]).long()

    return [
        ComponentSpec(
            "prior_text_encoder", _TextEncoder(encoder),
            [TensorSpec("input_ids", "int64", ("batch", seq))],
            [TensorSpec("text_embeds", "float32", ("batch", projection)),
             TensorSpec("last_hidden_state", "float32", ("batch", seq, hidden))],
            lambda b, h, w: (torch.randint(0, vocab, (b, seq), generator=gen),),
            [(1, 0, 0), (3, 0, 0)],
        ),
        ComponentSpec(
            "prior", _Prior(transformer),
            [TensorSpec("hidden_states", "float32", ("batch", embed)),
             TensorSpec("timestep", "float32", ("batch",)),
             TensorSpec("proj_embedding", "float32", ("batch", projection)),
             TensorSpec("encoder_hidden_states", "float32", ("batch", seq, hidden)),
             TensorSpec("attention_mask", "int64", ("batch", seq))],
            [TensorSpec("predicted_image_embedding", "float32", ("batch", embed))],
            lambda b, h, w: (randn(b, embed), torch.randint(0, 1000, (b,), generator=gen).float(),
                             randn(b, projection), randn(b, seq, hidden), mask(b)),
            [(2, 0, 0), (3, 0, 0)],
        ),
        ComponentSpec(
            IMAGE_ENCODER, _ImageEncoder(vision),
            [TensorSpec("pixel_values", "float32", ("batch", 3, side, side))],
            [TensorSpec("image_embeds", "float32", ("batch", vision.config.projection_dim))],
            lambda b, h, w: (randn(b, 3, side, side),),
            [(1, 0, 0), (3, 0, 0)],
        ),
    ]


def export_kandinsky(decoder, prior, output: str | Path, source: str = "", prior_source: str = "",
                     overwrite: bool = False, optimize: bool = True, log=print) -> Path:
    """Write a Kandinsky 2.2 engine directory (atomically, as export_engine does)."""
    with engine_directory(output, overwrite, log) as (work, manifest):
        manifest.update(source=source, model=_model_info(decoder, prior),
                        scheduler=_scheduler_config(decoder, work), versions=library_versions())
        if prior is not None:
            manifest["prior"] = _prior_info(prior, work, prior_source)
            manifest["tokenizer"] = manifest["prior"]["tokenizer"]
        components = manifest["components"] = {}
        for spec in kandinsky_specs(decoder, prior):
            log(f"exporting {spec.name} ...")
            components[spec.name] = export_component(spec, work, optimize, None)
            log(f"  {spec.name}: max relative error vs torch {components[spec.name]['parity']['max_rel_error']:.2e}")
    return Path(output)


def _model_info(decoder, prior) -> dict:
    unet, movq = decoder.unet.config, decoder.movq.config
    return {
        "family": FAMILY,
        "unet_in_channels": unet.in_channels,
        "unet_out_channels": unet.out_channels,
        "prediction_type": decoder.scheduler.config.get("prediction_type", "epsilon"),
        "latent_channels": movq.latent_channels,
        "vae_scale_factor": movq_scale(decoder),  # the MoVQ's downsampling
        # diffusers' latents are ceil(size / scale^2) * scale, the MoVQ's encoding size / scale: they agree
        # (and the UNet's upsampling fits) at multiples of this (64 for the real checkpoints)
        "size_multiple": movq_scale(decoder) * max(movq_scale(decoder), unet_downsampling(decoder)),
        "vae_scaling_factor": 1.0,  # MoVQ latents are used unscaled
        "default_height": 512,  # KandinskyV22InpaintPipeline's defaults, not the UNet's sample size
        "default_width": 512,
        "image_embed_dim": unet.encoder_hid_dim,
        "prior": prior is not None,
    }


def _prior_info(prior, work: Path, source: str) -> dict:
    """The prior's scheduler, tokenizer and constants."""
    import json

    config = json.loads(json.dumps(dict(prior.scheduler.config), default=str))
    config["_class_name"] = type(prior.scheduler).__name__
    size = prior.image_encoder.config.image_size
    with torch.no_grad():
        zero = prior.image_encoder(torch.zeros(1, 3, size, size))["image_embeds"]
    np.savez(work / PRIOR_CONSTANTS, zero_image_embeds=zero.numpy().astype(np.float32),
             clip_mean=prior.prior.clip_mean.detach().numpy().astype(np.float32),
             clip_std=prior.prior.clip_std.detach().numpy().astype(np.float32))
    (work / PRIOR_CONSTANTS).chmod(0o644)
    return {
        "source": source,
        "scheduler": config,
        "embedding_dim": prior.prior.config.embedding_dim,
        "tokenizer": save_tokenizer(prior.tokenizer, work, "prior_tokenizer"),
        "constants": PRIOR_CONSTANTS,
        "image_encoder": _image_encoder_info(prior),
    }


def _image_encoder_info(prior) -> dict:
    """The image encoder's component and its CLIPImageProcessor settings, as the runtime reproduces them."""
    from .safety import SafetyCheckerExportError, feature_extractor_settings

    try:
        preprocessing = feature_extractor_settings(prior.image_processor)
    except SafetyCheckerExportError as e:  # its message names the safety checker's flag: say which processor
        raise ExportError(f"the prior's image_processor cannot be reproduced: {e}".split("; export with")[0]
                          + "; fix the prior's image_processor config") from None
    side = prior.image_encoder.config.image_size
    crop = preprocessing["crop_size"] if preprocessing["do_center_crop"] else preprocessing["size"]
    if (crop.get("height"), crop.get("width")) != (side, side):
        raise ExportError(f"the prior's image_processor makes {crop} pictures but its image encoder takes "
                          f"{side}x{side}; fix the prior's image_processor config")
    return {"component": IMAGE_ENCODER, "preprocessing": preprocessing}
