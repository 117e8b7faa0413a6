"""The denoising loop over several requests at once (docs/batching.md): each picture keeps its own rows
and its own generator, so each member's latents are the ones its request gives alone."""
from __future__ import annotations

import numpy as np
import pytest

from parity import record
from inpaintrt.runtime.inpaint import Request, denoise
from inpaintrt.runtime.noise import StackedGenerator
from inpaintrt.runtime.schedulers import make_scheduler

SIZE = 32
# (scheduler, strength, masked_content): an ancestral scheduler draws every step; strength < 1 starts from
# the image latents; latent_noise draws once more per picture
CASES = {"euler_a": ("euler_a", 1.0, "original"), "ddim_partial_noise": ("ddim", 0.6, "latent_noise"),
         "pndm_unguided": ("pndm", 1.0, "original")}


@pytest.fixture(scope="module")
def loaded(engines):
    from inpaintrt import Engine

    return {channels: Engine.load(directory, backend="ort-cpu") for channels, directory in engines.items()}


def _member(engine, index: int, rows: int, guided: bool) -> dict:
    rng = np.random.default_rng(100 + index)
    image = rng.uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((1, 1, SIZE, SIZE), np.float32)
    mask[..., 4 + 3 * index:20 + 2 * index, 6:26 - index] = 1
    prompts = [f"prompt {index} row {row}" for row in range(rows)]
    cond, uncond = engine.encode_prompt(prompts, f"negative {index}", guidance_scale=7.5 if guided else 1.0)
    return dict(image=image, mask=mask, cond=cond, uncond=uncond if guided else None, seed=7 + 31 * index)


def _request(images, masks, hidden, batch, case, counts=None) -> Request:
    _, strength, content = CASES[case]
    return Request(image=images, mask=masks, conditioning={"encoder_hidden_states": hidden}, batch=batch,
                   guidance_scale=7.5, num_inference_steps=4, strength=strength, masked_content=content,
                   counts=counts)


def _alone(engine, member, case) -> np.ndarray:
    hidden = member["cond"] if member["uncond"] is None else np.concatenate([member["uncond"], member["cond"]])
    request = _request(member["image"], member["mask"], hidden, len(member["cond"]), case)
    scheduler = make_scheduler(CASES[case][0], engine.scheduler_config)
    return denoise(engine._models, scheduler, request, np.random.default_rng(member["seed"]))


def _together(engine, members, case) -> np.ndarray:
    counts = tuple(len(m["cond"]) for m in members)
    halves = [[m["cond"] for m in members]]
    if members[0]["uncond"] is not None:  # the guided batch: every member's uncond rows, then every cond row
        halves.insert(0, [m["uncond"] for m in members])
    hidden = np.concatenate([row for half in halves for row in half])
    request = _request(np.concatenate([m["image"] for m in members]), np.concatenate([m["mask"] for m in members]),
                       hidden, sum(counts), case, counts)
    generator = StackedGenerator([np.random.default_rng(m["seed"]) for m in members], counts)
    return denoise(engine._models, make_scheduler(CASES[case][0], engine.scheduler_config), request, generator)


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_each_batched_member_gets_its_single_request_latents(loaded, channels, case):
    """Three requests (1, 2 and 1 rows, their own pictures, masks, prompts and seeds) in one loop: each
    member's rows equal its single-request run. Measured on ONNX Runtime's CPU: identical (max abs
    difference 0); the bound allows a GEMM that blocks differently at another batch size."""
    engine = loaded[channels]
    guided = case != "pndm_unguided"
    members = [_member(engine, index, rows, guided) for index, rows in enumerate((1, 2, 1))]
    together = _together(engine, members, case)
    start = 0
    for member in members:
        alone = _alone(engine, member, case)
        mine = together[start:start + len(alone)]
        start += len(alone)
        difference = record("batched member vs alone, latents max abs", np.abs(mine - alone).max())
        assert difference <= 1e-5, f"member with seed {member['seed']} differs by {difference}"
    assert start == len(together)


def test_one_member_is_the_single_request_bit_for_bit(loaded):
    """A batch of one (counts given) is today's single request exactly."""
    engine = loaded[9]
    member = _member(engine, 0, 2, guided=True)
    np.testing.assert_array_equal(_together(engine, [member], "euler_a"), _alone(engine, member, "euler_a"))


def test_stacked_generator_draws_each_members_share_from_its_own_generator():
    stacked = StackedGenerator([np.random.default_rng(1), np.random.default_rng(2)], (2, 1))
    per_picture = stacked.standard_normal((2, 3))
    per_row = stacked.standard_normal((3, 3))
    first, second = np.random.default_rng(1), np.random.default_rng(2)
    expected_picture = np.concatenate([first.standard_normal((1, 3), np.float32),
                                       second.standard_normal((1, 3), np.float32)])
    expected_rows = np.concatenate([first.standard_normal((2, 3), np.float32),
                                    second.standard_normal((1, 3), np.float32)])
    np.testing.assert_array_equal(per_picture, expected_picture)
    np.testing.assert_array_equal(per_row, expected_rows)
    with pytest.raises(ValueError, match="fits neither the 2 pictures nor their 3 rows"):
        stacked.standard_normal((4, 3))


def test_the_loop_refuses_counts_that_do_not_fit_and_batched_soft_masks(loaded):
    engine = loaded[9]
    members = [_member(engine, index, 1, guided=False) for index in range(2)]
    images = np.concatenate([m["image"] for m in members])
    masks = np.concatenate([m["mask"] for m in members])
    hidden = np.concatenate([m["cond"] for m in members])
    scheduler = make_scheduler("ddim", engine.scheduler_config)
    wrong = _request(images, masks, hidden, 2, "pndm_unguided", counts=(1, 2))
    with pytest.raises(ValueError, match=r"counts \(1, 2\) must give each of the 2 pictures its rows, 2 in all"):
        denoise(engine._models, scheduler, wrong, np.random.default_rng(0))
    soft = _request(images, masks, hidden, 2, "pndm_unguided", counts=(1, 1))
    soft.change_map = masks
    with pytest.raises(ValueError, match="soft masks run one picture at a time"):
        denoise(engine._models, scheduler, soft, np.random.default_rng(0))


def _counting_unet(engine) -> list:
    """Record the rows of every UNet call the engine makes."""
    calls, unet = [], engine._models.unet

    def counted(sample, timestep, feeds):
        calls.append(len(sample))
        return unet(sample, timestep, feeds)

    engine._models.unet = counted
    return calls


def test_engine_inpaint_batch_gives_each_member_its_own_result(engines):
    """Engine.inpaint_batch: members with their own pictures, masks, prompts and seeds share UNet calls
    (the call sizes show it) and each gets the picture it gets alone (measured: identical bytes); a member
    with bad input fails alone, with the message it gets alone; one with other steps runs in its own loop."""
    from pictures import sample_image, sample_mask
    from inpaintrt import Engine
    from PIL import Image

    engine = Engine.load(engines[9], backend="ort-cpu")
    common = dict(num_inference_steps=3, scheduler="euler_a", output_type="np", progress=False)
    black = Image.new("L", sample_image().size, 0)
    members = [dict(image=sample_image(seed=1), mask_image=sample_mask(), prompt="a red door", generator=1, **common),
               dict(image=sample_image(seed=2), mask_image=black, prompt="nothing to repaint", generator=2, **common),
               dict(image=sample_image(seed=3), mask_image=sample_mask(), prompt=["a cat", "a dog"], generator=3,
                    **common),
               dict(common, image=sample_image(seed=4), mask_image=sample_mask(), prompt="more steps", generator=4,
                    num_inference_steps=4)]
    alone = []
    for member in members:
        try:
            alone.append(engine.inpaint(**member).images)
        except ValueError as e:
            alone.append(e)
    calls = _counting_unet(engine)
    outcomes = engine.inpaint_batch(members)

    assert sorted(set(calls)) == [2, 6], "members 0 and 2 (1 + 2 rows, guided) share calls; member 3 runs alone"
    assert isinstance(outcomes[1].error, ValueError) and str(outcomes[1].error) == str(alone[1])
    for index in (0, 2, 3):
        difference = record("batched member vs alone, picture max abs", np.abs(outcomes[index].result().images
                                                                                 - alone[index]).max())
        assert difference <= 1e-6, f"member {index} differs by {difference}"


def test_a_stopped_member_ends_alone_and_the_others_finish(engines):
    """A member whose callback raises (a cancel) gets that error at once; one that raises StopDenoising keeps its
    latents so far, as alone; the third finishes all its steps."""
    from pictures import sample_image, sample_mask
    from inpaintrt import Engine, StopDenoising

    class Cancelled(Exception):
        pass

    def stop_at(step_to_stop, error):
        def callback(step, timestep, latents):
            if step == step_to_stop:
                raise error()
        return callback

    engine = Engine.load(engines[9], backend="ort-cpu")
    common = dict(image=sample_image(), mask_image=sample_mask(), num_inference_steps=4, output_type="latent",
                  progress=False, prompt="a door")
    members = [dict(common, generator=1, callback_on_step_end=stop_at(1, Cancelled)),
               dict(common, generator=2, callback_on_step_end=stop_at(2, StopDenoising)),
               dict(common, generator=3, callback_on_step_end=stop_at(-1, Cancelled))]
    done = []
    outcomes = engine.inpaint_batch(members, on_done=lambda index, outcome: done.append(index))
    assert isinstance(outcomes[0].error, Cancelled) and done[0] == 0, "the cancelled member ends first"
    np.testing.assert_array_equal(outcomes[1].result().images, engine.inpaint(**members[1]).images)
    np.testing.assert_array_equal(outcomes[2].result().images, engine.inpaint(**members[2]).images)
