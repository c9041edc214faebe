"""Time and memory of one training step at the real SD1.5 size, for one variant, in its own
process (peak memory is per process). Called by `benchmarks/run.py`; prints one JSON line.

    python benchmarks/train_step.py --variant lite --batch 4 --resolution 256 --steps 3
    python benchmarks/train_step.py --variant lite --base proxy --batch 16 --resolution 32 --steps 20

Variants:
- a control kind (lite, lite-static, lite-mlp, controlnet, t2i-adapter): its step (the module's
  forward, the UNet under its control, backward, AdamW), as the trainer runs it;
- floor: what any module that injects into the skip connections must pay: the frozen UNet's
  forward with residuals that need a gradient, and the backward through the decoder to them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from sd15 import random_model

from lite_controlnet.bases import PROXY_BASE_DIR
from lite_controlnet.evaluation.memory import PeakMemory
from lite_controlnet.controls import CONTROL_KINDS, build_control, controlled_unet, prepare_control
from lite_controlnet.model import unet_residual_layout
from lite_controlnet.bases.sd_configs import SD15_UNET_CONFIG


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=[*CONTROL_KINDS, "floor"], required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="measured steps, after one warm-up step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="of the frozen UNet")
    parser.add_argument("--base", choices=["sd15", "proxy"], default="sd15",
                        help="sd15: the SD1.5 UNet with random weights; proxy: the committed proxy base's UNet "
                             "(pixel space), whose step the fidelity study times")
    parser.add_argument("--options", type=json.loads, default={}, help='the control module\'s settings, JSON, '
                        'e.g. \'{"level_channels": 96}\'')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    # 1. models: the frozen UNet (random weights: timing does not depend on them), the control
    if args.base == "proxy":
        unet = UNet2DConditionModel.from_pretrained(PROXY_BASE_DIR / "unet").requires_grad_(False).eval()
        scale = 1  # pixel space: no VAE
    else:
        unet = random_model(UNet2DConditionModel, SD15_UNET_CONFIG).requires_grad_(False).eval()
        scale = 8
    control = None
    if args.variant != "floor":
        control = build_control(args.variant, unet, vae_scale_factor=scale, **args.options).to(device).train()
    unet.to(device, dtype)
    params = [p for p in control.parameters()] if control is not None else []
    optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
    resident = torch.cuda.memory_allocated() if device.type == "cuda" else None

    # 2. a batch as the trainer sees it: cached latents, text embeddings, control images
    b, size = args.batch, args.resolution // scale
    latents = torch.randn(b, unet.config.in_channels, size, size, device=device)
    noise = torch.randn_like(latents)
    text = torch.randn(b, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    controls = torch.rand(b, 3, args.resolution, args.resolution, device=device)
    timesteps = torch.randint(0, 1000, (b,), device=device)
    noisy = (latents + noise).to(dtype)
    channels, levels, mid = unet_residual_layout(unet.config)

    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    peak = PeakMemory()  # the steps' peak (GPU allocated, or RSS reset after the models were built)
    peak.__enter__()
    for step in range(args.steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            if control is not None:
                pred = controlled_unet(unet, noisy, timesteps, text, prepare_control(control, controls, dtype))
            else:  # the floor: residuals that need a gradient, from nothing
                down = [torch.zeros(b, c, size >> lv, size >> lv, device=device, dtype=dtype, requires_grad=True)
                        for c, lv in zip(channels, levels)]
                mid_res = torch.zeros(b, mid, size >> max(levels), size >> max(levels), device=device, dtype=dtype,
                                      requires_grad=True)
                pred = unet(noisy, timesteps, encoder_hidden_states=text, return_dict=False,
                            down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid_res)[0]
            loss = F.mse_loss(pred.float(), noise)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        if step:  # the first step warms up
            times["forward"].append(t1 - t0)
            times["backward"].append(t2 - t1)
            times["optimizer"].append(t3 - t2)
    peak.__exit__(None, None, None)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "variant": args.variant, "base": args.base, "options": args.options, "batch": b, "resolution": args.resolution, "dtype": args.dtype,
        "device": str(device), "threads": args.threads, "steps": args.steps,
        "trainable_params": sum(p.numel() for p in params),
        **{f"{k}_s": round(v, 4) for k, v in medians.items()},
        "step_s": round(sum(medians.values()), 4),
        "peak_memory_bytes": peak.bytes, "peak_memory_kind": peak.kind, "model_memory_bytes": resident,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if device.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
