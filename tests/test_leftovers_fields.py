"""User-input refusals from prompts, prompt syntax, step callbacks and schedulers are InvalidArguments that name
their argument (the server and the CLI report `.field` and `.fix`); they stay ValueErrors for callers catching those.
The same refusals through a real server: tests/test_serve_fixes.py."""
from __future__ import annotations

import pytest

from conftest import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.runtime.callbacks import StepCallback, check_tensor_inputs
from inpaintrt.runtime.errors import InvalidArgument
from inpaintrt.runtime.prompt_syntax import check_syntax
from inpaintrt.runtime.schedulers import make_scheduler


def refusal(call, *args, **kwargs) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        call(*args, **kwargs)
    assert isinstance(raised.value, ValueError) and raised.value.fix
    return raised.value


def test_prompt_syntax_and_callbacks_name_their_argument():
    assert refusal(check_syntax, "compel").field == "prompt_syntax"
    names = "callback_on_step_end_tensor_inputs"
    assert refusal(check_tensor_inputs, "latents", "sd").field == names
    error = refusal(check_tensor_inputs, ["latents", "noise"], "sd")
    assert error.field == names and "['noise']" in error.fix
    assert refusal(StepCallback, 3, None, ["latents"], "sd").field == "callback_on_step_end"
    error = refusal(StepCallback, lambda pipe, step, t, kwargs: None, None, ["mask"], "sd",
                    {"mask": "is not made for a 4-channel UNet"})
    assert error.field == names and "'mask'" in error.fix
    returns_a_list = StepCallback(lambda pipe, step, t, kwargs: [], type("Pipe", (), {})(), ["latents"], "sd")
    assert refusal(returns_a_list, 0, 999, {"latents": None}).field == "callback_on_step_end"


@pytest.mark.parametrize("scheduler, options, steps, field", [
    ("dpmpp_2m", {"solver_type": "bh1"}, 10, "scheduler_options.solver_type"),
    ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, 10, "scheduler_options.algorithm_type"),
    ("dpmpp_2m", {"solver_order": 3}, 10, "scheduler_options.solver_order"),
    ("unipc", {"solver_type": "midpoint"}, 10, "scheduler_options.solver_type"),
    ("euler_a", {"prediction_type": "sample"}, 10, "scheduler_options.prediction_type"),
    ("pndm", {"prediction_type": "sample"}, 10, "scheduler_options.prediction_type"),
    ("ddpm", {"variance_type": "fixed_large_log"}, 10, "scheduler_options.variance_type"),
    ("lcm", {"original_inference_steps": 4}, 8, "num_inference_steps"),
    ("pndm", {"skip_prk_steps": False}, 3, "num_inference_steps"),
])
def test_a_scheduler_option_it_cannot_run_is_named(scheduler, options, steps, field):
    error = refusal(make_scheduler(scheduler, {}, options).set_timesteps, steps)
    assert error.field == field
    if field.startswith("scheduler_options."):
        assert error.fix.endswith(f"or leave {field.split('.')[1]} out")


def test_the_engines_own_config_names_the_scheduler_choice():
    """A setting from the engine's scheduler config is the model's: the caller's fix is another scheduler."""
    error = refusal(make_scheduler("euler_a", {"prediction_type": "sample"}).set_timesteps, 10)
    assert error.field == "scheduler" and "config sets prediction_type='sample'" in str(error)
    assert error.fix == "choose another scheduler"


@pytest.fixture(scope="module")
def engine(engines):
    return Engine.load(engines[9])


@pytest.mark.parametrize("arguments, field", [
    ({"prompt": "a", "prompt_embeds": "given"}, "prompt"),
    ({"negative_prompt": "a", "negative_prompt_embeds": "given"}, "negative_prompt"),
    ({"prompt_2": "a"}, "prompt_2"),
    ({"negative_prompt_2": "a"}, "negative_prompt_2"),
    ({"pooled_prompt_embeds": "given", "prompt_embeds": "given", "prompt": None}, "pooled_prompt_embeds"),
    ({"negative_prompt_embeds": "short", "prompt": None, "prompt_embeds": "long"}, "negative_prompt_embeds"),
])
def test_prompt_refusals_name_their_argument(engine, arguments, field):
    import numpy as np

    width = engine.encode_prompt("a")[0].shape[-1]
    shapes = {"given": (1, 77, width), "short": (1, 77, width), "long": (1, 154, width)}
    arguments = {k: np.zeros(shapes[v], np.float32) if v in shapes else v for k, v in arguments.items()}
    if "pooled_prompt_embeds" in arguments:
        arguments["pooled_prompt_embeds"] = np.zeros((1, width), np.float32)
    error = refusal(engine.inpaint, sample_image(64, 64), sample_mask(64, 64), num_inference_steps=2, height=64,
                    width=64, progress=False, **{"prompt": "a", **arguments})
    assert error.field == field, error
