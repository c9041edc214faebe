"""A compiled UNet (`torch.compile`) gives the eager output under every sequence of controls.

The feedback module acts through hooks inside the UNet's forward; Dynamo does not re-check a
module's hooks, so these tests run the calls that would reuse a graph compiled for another control:
uncontrolled first, then controlled, scale 0, another scale, and back, each against eager.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import UNet2DConditionModel

from conftest import randomize_
from lite_controlnet import LiteControlNetPipeline, build_control, controlled_unet, prepare_control

# (scale or None for no control): uncontrolled first (the graph a hook added later would miss),
# controlled, scale 0, another scale, then alternating
SEQUENCE = (None, 1.0, 0.0, 0.5, 1.0, None, 1.0, None)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    ).eval().requires_grad_(False)


def outputs(unet, prepared, inputs):
    with torch.no_grad():
        return [controlled_unet(unet, *inputs, prepared if scale else None, 1.0 if scale is None else scale)
                for scale in SEQUENCE]


@pytest.mark.parametrize(("kind", "backend", "fullgraph"), [
    ("lite", "eager", True),
    ("lite", "aot_eager", False),
    ("lite-static", "eager", True),
    ("t2i-adapter", "eager", True),
])
def test_compiled_unet_matches_eager_for_every_sequence_of_controls(kind, backend, fullgraph):
    unet = tiny_unet()
    control = randomize_(build_control(kind, unet), std=0.3).eval()
    torch.manual_seed(1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.randn(2, 77, 32))
    with torch.no_grad():
        prepared = prepare_control(control, torch.rand(2, 3, 64, 64), torch.float32)
    eager = outputs(unet, prepared, inputs)
    # with fullgraph=True any graph break (e.g. a hook registered inside the compiled call) fails
    compiled = outputs(torch.compile(unet, backend=backend, fullgraph=fullgraph), prepared, inputs)
    for scale, want, got in zip(SEQUENCE, eager, compiled):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"scale {scale}")
    # the control acts, so an uncontrolled graph reused for a controlled call would fail above
    assert (eager[1] - eager[0]).abs().max() > 1e-2
    # the hooks were registered once, not once per call
    assert len(unet.mid_block._forward_hooks) == 1 and len(unet.up_blocks[0]._forward_pre_hooks) == 1


def test_compiled_pipeline_keeps_a_late_control_window(tiny_base_dir, tiny_base):
    control = randomize_(build_control("lite", tiny_base.unet), std=0.3).eval()
    pipe = LiteControlNetPipeline.from_base(tiny_base_dir, controlnet=control)
    image = PIL.Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))

    def generate(**kwargs):
        return pipe("a red circle", image, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    # a window starting after 0: the first step runs the UNet without control
    calls = ({"control_guidance_start": 0.5}, {}, {"controlnet_conditioning_scale": 0.0})
    eager = [generate(**kwargs) for kwargs in calls]
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    compiled = [generate(**kwargs) for kwargs in calls]
    for want, got in zip(eager, compiled):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(eager[0] - eager[1]).max() > 1e-3


def test_a_unet_compiled_and_run_before_the_hooks_still_takes_control():
    unet = tiny_unet()
    control = randomize_(build_control("lite", unet), std=0.3).eval()
    torch.manual_seed(1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.randn(2, 77, 32))
    with torch.no_grad():
        prepared = prepare_control(control, torch.rand(2, 3, 64, 64), torch.float32)
        compiled = torch.compile(unet, backend="eager")
        compiled(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)  # without this package: no hooks yet
        got = controlled_unet(compiled, *inputs, prepared)
        want = controlled_unet(unet, *inputs, prepared)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
