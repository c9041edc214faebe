"""Where Lite's extra time goes on a GPU: one whole generation of plain SD and of SD + Lite, and
one training step of Lite and of the floor, under torch.profiler (random SD1.5 weights).

    python benchmarks/profile_gpu.py --resolution 512 --dtype fp16 > profile.txt
"""

from __future__ import annotations

import argparse
import statistics
import time

import PIL.Image
import torch
import torch.nn.functional as F
from sd15 import sd15_components
from torch.profiler import ProfilerActivity, profile

from lite_controlnet import LiteControlNetPipeline
from lite_controlnet.controls import build_control, controlled_unet, prepare_control


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(prof, sort: str, rows: int = 15) -> str:
    if not torch.cuda.is_available():
        sort = "self_cpu_time_total" if sort.startswith("self") else sort
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


ACTIVITIES = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = sd15_components(device, dtype)
    lite = build_control("lite", parts["unet"]).to(device, dtype).eval()
    pipes = {"SD": LiteControlNetPipeline(**parts, controlnet=None),
             "SD + Lite": LiteControlNetPipeline(**parts, controlnet=lite)}
    image = PIL.Image.new("RGB", (args.resolution, args.resolution))
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def generate(name: str, **extra) -> None:
        kwargs = {} if name == "SD" else {"image": image}
        pipes[name]("a red circle with blue background", num_inference_steps=args.steps, guidance_scale=7.5,
                     height=args.resolution, width=args.resolution, generator=torch.Generator().manual_seed(0),
                     **kwargs, **extra)

    # 1. whole generations, interleaved
    for name in pipes:
        generate(name)
    times = {name: [] for name in pipes}
    for _ in range(4):
        for name in pipes:
            times[name].append(timed(lambda: generate(name), 1))
    for name, t in times.items():
        print(f"generation {name}: median {statistics.median(t):.3f} s  {[round(x, 3) for x in t]}")
    print(f"generation SD + Lite, output_type='latent': {timed(lambda: generate('SD + Lite', output_type='latent'), 3):.3f} s")
    print(f"generation SD, output_type='latent': {timed(lambda: generate('SD', output_type='latent'), 3):.3f} s")

    # 2. the pieces of Lite's part
    pipe = pipes["SD + Lite"]
    control = pipe.prepare_control_image(image, 1, args.resolution, args.resolution, device, dtype)
    control2 = torch.cat([control] * 2)
    print(f"prepare_control_image: {timed(lambda: pipe.prepare_control_image(image, 1, args.resolution, args.resolution, device, dtype), 5) * 1e3:.2f} ms")
    print(f"Lite's once-per-generation part (batch 2): {timed(lambda: prepare_control(lite, control2, dtype), 5) * 1e3:.2f} ms")
    for name in pipes:
        with profile(activities=ACTIVITIES) as prof:
            generate(name)
            sync()
        print(f"\n=== profile: generation {name}, by self CUDA time")
        print(table(prof, "self_device_time_total"))
        print(f"=== profile: generation {name}, by CPU time")
        print(table(prof, "cpu_time_total"))

    # 3. training step: Lite against the floor, batch 4
    unet = parts["unet"].requires_grad_(False)
    train_lite = build_control("lite", unet).to(device).train()
    b, size = 4, args.resolution // 8
    noisy = torch.randn(b, 4, size, size, device=device, dtype=dtype)
    text = torch.randn(b, 77, 768, device=device, dtype=dtype)
    controls = torch.rand(b, 3, args.resolution, args.resolution, device=device)
    t = torch.randint(0, 1000, (b,), device=device)

    def lite_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = controlled_unet(unet, noisy, t, text, prepare_control(train_lite, controls, dtype))
            loss = F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
        loss.backward()

    for _ in range(2):
        lite_step()
    print(f"Lite training step (no optimizer), batch {b}: {timed(lite_step, 5) * 1e3:.2f} ms")
    with profile(activities=ACTIVITIES) as prof:
        lite_step()
        torch.cuda.synchronize()
    print("=== profile: Lite training step (no optimizer), by self CUDA time")
    print(table(prof, "self_device_time_total"))


if __name__ == "__main__":
    main()
