"""callback_on_step_end's two forms told apart by their parameters alone (runtime/callbacks.py): diffusers'
callback(pipe, step, timestep, callback_kwargs) and the short (step, timestep, latents). The callbacks run on the
engines: tests/engine/test_callbacks.py."""
from inpaintrt.runtime.callbacks import diffusers_form


def test_the_two_forms_are_told_apart_by_their_parameters():
    assert not diffusers_form(lambda step, t, latents: None)
    assert diffusers_form(lambda pipe, step, t, tensors: tensors)
    assert diffusers_form(lambda *args: None)  # could be either: diffusers' form, the drop-in's

    class PipelineCallbackLike:
        tensor_inputs = ["latents"]

        def __call__(self, pipeline, step_index, timestep, callback_kwargs):
            return callback_kwargs

    assert diffusers_form(PipelineCallbackLike())
