"""The sampling loop's own cost, without the UNet's arithmetic: SD1.5's UNet module tree (what
Python walks) with a forward that returns at once, so what remains is what the pipeline adds per
step. On a fast GPU a generation is bound by this host-side time, so a millisecond per step here
is a visible share of a whole generation there.

    python benchmarks/pipeline_overhead.py

Writes benchmarks/results/pipeline_overhead.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch
from diffusers import UNet2DConditionModel, UniPCMultistepScheduler
from sd15 import sd15_scheduler

from lite_controlnet import LiteControlNetModel, LiteControlNetPipeline, load_base
from lite_controlnet.bases.tiny import make_tiny_base
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    tiny = load_base(str(make_tiny_base(Path(tempfile.mkdtemp()) / "tiny")))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, "cross_attention_dim": tiny.text_encoder.config.hidden_size})
    unet = unet.to_empty(device="cpu")  # memory is reserved, not touched: the weights are never read
    unet.forward = lambda sample, *args, **kwargs: (torch.zeros_like(sample),)
    # with the UNet's forward stubbed, the default's per-step layers (hooks inside the UNet's forward)
    # do not run: what is measured is the loop's host-side cost of each design, the control step's
    # bookkeeping included (the default's hooks set and cleared at every step)
    parts = dict(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=unet,
                 scheduler=UniPCMultistepScheduler.from_config(sd15_scheduler().config))
    pipes = {"SD": LiteControlNetPipeline(**parts, controlnet=None),
             "SD + Lite": LiteControlNetPipeline(**parts, controlnet=LiteControlNetModel.from_unet(unet).eval()),
             "SD + Lite MLP": LiteControlNetPipeline(**parts, controlnet=LiteControlNetModel.from_unet(
                 unet, design="mlp").eval())}
    image = PIL.Image.new("RGB", (64, 64))
    steps = 20

    def generate(name: str) -> float:
        kwargs = {} if name == "SD" else {"image": image}
        start = time.perf_counter()
        pipes[name]("a red circle", num_inference_steps=steps, guidance_scale=7.5, height=64, width=64,
                    output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
        return time.perf_counter() - start

    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    times = {name: [] for name in pipes}
    for repeat in range(12):
        for name in (pipes if repeat % 2 else reversed(list(pipes))):
            times[name].append(generate(name))
    median = {name: statistics.median(t[2:]) for name, t in times.items()}  # the first two warm up
    result = {
        "steps": steps, "unet": "SD1.5 module tree, forward stubbed", "threads": 1,
        "generation_ms": {k: round(v * 1e3, 2) for k, v in median.items()},
        "lite_extra_ms_per_step": round((median["SD + Lite"] - median["SD"]) * 1e3 / steps, 3),
        "lite_mlp_extra_ms_per_step": round((median["SD + Lite MLP"] - median["SD"]) * 1e3 / steps, 3),
        "torch": torch.__version__,
    }
    out = HERE / "results" / "pipeline_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
