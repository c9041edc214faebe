"""Refresh the measured blocks of README.md and benchmarks/RESULTS.md from benchmarks/results/*.json.

    python benchmarks/readme.py

Each block sits between `<!-- NAME:start ... -->` and `<!-- NAME:end -->` markers; numbers are
never typed into either file by hand. README.md holds the one results table; RESULTS.md the
studies behind it. tests/test_readme.py checks that both are up to date.

The results files keep the labels they were measured under: the source paper's design ("A
Lightweight ControlNet for Fine-Tuning Stable Diffusion on Colab GPU") is the kind `lite-seed`
there and `lite-mlp` in the library; `shown` gives every block the library's names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import shapes_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def params_block() -> str:
    counts = json.loads((RESULTS / "params.json").read_text())
    controlnet = counts["ControlNet (diffusers ControlNetModel.from_unet)"]
    lines = ["| model (SD1.5 configuration) | parameters | vs. ControlNet |", "|---|---:|---:|"]
    lines += [f"| {name} | {n:,} | {n / controlnet:.2%} |" for name, n in counts.items()]
    return "\n".join(lines) + "\n\n(`python benchmarks/params.py`: counted on PyTorch's meta device, no weights needed.)"


def fill50k_block() -> str:
    r = json.loads((RESULTS / "fill50k_generation.json").read_text())
    return (f"Writing the synthetic Fill50k ({r['num']:,} pairs at {r['size']} px) took {r['seconds']:.0f} s "
            f"({r['samples_per_second']:.0f} pairs/s) with {r['workers']} workers on a {r['cpu_count']}-core "
            f"{r['cpu']} machine, {r['date'][:10]} (`python benchmarks/fill50k_speed.py`).")


def demo_block() -> str:
    """README's first command: how long the demo took and what it scored, alone and beside a competitor."""
    path = RESULTS / "demo.json"
    if not path.is_file():
        return _missing("the demo's time", "python benchmarks/demo_time.py")
    rows = {r["competitor"]: r for r in json.loads(path.read_text())["rows"]}
    alone = rows.get("none")
    if alone is None:
        return _missing("the demo's time alone", "python benchmarks/demo_time.py")
    lite, text = alone["scores"]["lite"], alone["scores"]["text-only"]
    line = (f"On {alone['cores']} cores ({alone['machine']}, {alone['date']}) it took {alone['seconds']} s with "
            f"{alone['threads']} CPU thread{'s' if alone['threads'] != 1 else ''} (the package's choice); sampled "
            f"disk IoU on the held-out pairs {lite['disk_iou']:.3f} with the module, {text['disk_iou']:.3f} without "
            f"(edge F1 {lite['edge_f1']:.3f} and {text['edge_f1']:.3f}).")
    beside = rows.get("training")
    if beside is not None:
        line += (f" Beside a second training of the package it took {beside['seconds']} s "
                 f"({beside['seconds'] / alone['seconds']:.1f}x), its threads following the load (from "
                 f"{beside['threads']}), and scored {beside['scores']['lite']['disk_iou']:.3f}: the scores depend on "
                 "the random seed and on the threads used, which `--threads N` fixes for a bit-for-bit repeat.")
    return line + " (`python benchmarks/demo_time.py [--competitor training]`.)"


def cpu_sharing_block() -> str:
    """The demo's training step alone and beside competing processes, per thread setting."""
    path = RESULTS / "cpu-sharing.json"
    if not path.is_file():
        return _missing("sharing a CPU", "python benchmarks/cpu_sharing.py")
    r = json.loads(path.read_text())
    competitors = list(dict.fromkeys(row["competitors"] for row in r["rows"]))
    settings = list(dict.fromkeys(row["setting"] for row in r["rows"]))
    cell = {(row["setting"], row["competitors"]): row for row in r["rows"]}
    names = {"torch-default": "torch's default (one thread per core)", "one-thread": "one thread (`--threads 1`)",
             "package-default": "the package's choice (`training/threads.py`)"}
    lines = ["| threads | " + " | ".join("alone" if c == "none" else f"beside {c.replace('+', ' + ')}" for c in competitors)
             + " |", "|---|" + "---:|" * len(competitors)]
    for setting in settings:
        values = []
        for c in competitors:
            row = cell.get((setting, c))
            values.append("" if row is None else f"{row['step_seconds']:.2f} s" +
                          (f" ({row['slowdown']:.1f}x)" if c != "none" and "slowdown" in row else "")
                          + (f", {row['threads']} thread(s)" if c == "none" else ""))
        lines.append(f"| {names.get(setting, setting)} | " + " | ".join(values) + " |")
    return ("The demo's training step (`--preset quick`, median of "
            f"{r['steps']} steps) on {r['cores']} {r['machine']} cores, {r['date']}; a competing training runs with "
            "the same setting, the burner is one busy Python loop (`python benchmarks/cpu_sharing.py`):\n\n"
            + "\n".join(lines))


def _missing(what: str, command: str) -> str:
    return f"Not measured yet: run `{command}` ({what})."


def benchmarks_block() -> str:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    runs = [r for r in runs if "sampling" in r and "summary" in r]
    if not runs:
        return _missing("speed and memory", "python benchmarks/run.py")
    lines = []
    for r in runs:
        m, st = r["machine"], r["settings"]
        if lines:
            lines.append("")
        lines.append(f"**{m['name']}** ({st['dtype']}, {st['resolution']} px, {m['threads']} thread(s), {m['date']}; "
                     "random weights, real SD1.5 architecture):")
        lines += [f"- {line}" for line in r["summary"]]
        lines += [f"- Note: {note}" for note in r.get("notes", [])]
    if not any(r["settings"]["device"].startswith("cuda") for r in runs):
        lines.append("- GPU (512 px, fp16): not measured yet; `bash benchmarks/gpu_suite.sh` measures it.")
    if not any(r["settings"]["device"] == "cpu" for r in runs):
        lines.append("- CPU: not measured yet; `python benchmarks/run.py` measures it (about an hour on 2 cores).")
    for path in sorted(RESULTS.glob("t4-cap-*.json")):
        t4 = json.loads(path.read_text())
        lines.append(f"\n**The T4 question** (`python benchmarks/t4_cap.py`: the real trainer, {t4['card']} capped at "
                     f"{t4['memory_cap_gib']:g} GiB, {t4['date']}; the hardware plan probes per-step batches "
                     f"{t4['batch_size']}, {t4['batch_size'] // 2}, ... without memory savers first):")
        lines += [f"- {line}" for line in t4["summary"]] + [f"- Note: {note}" for note in t4.get("notes", [])]
    overhead = RESULTS / "pipeline_overhead.json"
    if overhead.is_file():
        o = json.loads(overhead.read_text())
        lines.append(f"\nThe sampling loop's own cost without the UNet's arithmetic (`python benchmarks/pipeline_overhead.py`, "
                     f"SD1.5 module tree, the UNet's forward stubbed): the default Lite adds {o['lite_extra_ms_per_step']:.2f} ms "
                     f"per step of host-side work, {o['generation_ms']['SD + Lite'] - o['generation_ms']['SD']:.0f} ms per "
                     f"{o['steps']}-step generation including its one forward pass; the paper's design, `lite-mlp`, "
                     f"{o['lite_mlp_extra_ms_per_step']:.2f} ms per step.")
    return "\n".join(lines)


KIND_NAMES = {"lite": "Lite (default, feedback)", "lite-static": "Lite static", "lite-seed": "Lite MLP (the paper's design)",
              "lite-mlp": "Lite MLP (the paper's design)", "t2i-adapter": "T2I-Adapter", "controlnet": "ControlNet"}


def _ms(value: dict | None, fmt: str = ".3f") -> str:
    """mean (min-max) of the seeds."""
    if value is None:
        return ""
    return f"{value['mean']:{fmt}} ({value['min']:{fmt}}-{value['max']:{fmt}})"


def variant_name(variant: dict, with_rate: bool = False) -> str:
    """A study variant as a reader names it: the kind, and how its timesteps were drawn."""
    name = f"{KIND_NAMES.get(variant['kind'], variant['kind'])}, {variant.get('timestep_sampling', 'uniform')} timesteps"
    return f"{name} at {variant['learning_rate']:g}" if with_rate else name


def fidelity_block() -> str:
    files = sorted(RESULTS.glob("fidelity-*.json"))
    if not files:
        return _missing("fidelity at equal budget", "python benchmarks/fidelity.py")
    lines = []
    for path in files:
        r = json.loads(path.read_text())
        s, st = r["summary"], r["settings"]
        plateau, rows, text, variants = s["controlnet_plateau"], s["by_variant"], s["text_only"], r["variants"]
        labels = list(rows)
        ends = {label: r["curves"][label][-1]["step"] for label in labels}
        seconds = ", ".join(f"{KIND_NAMES.get(k, k)} {v:.2f} s" for k, v in r.get("step_seconds", {}).items())
        lines += [
            f"On **{st['base_name']}** ({r['machine']}, {r['date']}; seeds {', '.join(map(str, r['seeds']))}; up to "
            f"{max(ends.values())} steps at batch {st['batch_size']}, {st['resolution']} px; one-step score at "
            f"t={st['timestep']} on {st['heldout']} held-out pairs, {st['sample_num']} sampled in full; learning rates "
            f"{', '.join(variant_name(v, True) for v in variants.values())}; "
            f"`python benchmarks/fidelity.py --seed N`, then `--combine`). Mean of the seeds (min-max). "
            + (f"Seconds are steps times each kind's step measured alone ({seconds}; "
               "`python benchmarks/proxy_step_time.py`):" if seconds else "Seconds are the runs' own wall-clock:"),
            "",
        ]
        where = (f"where the best ControlNet's sampled disk IoU plateaus (step {plateau['step']})" if plateau["reached"]
                 else f"ControlNet's last point (step {plateau['step']}): its sampled disk IoU was still rising there, "
                      "so this is a lower bound of its plateau")
        for when, title in (("equal_wall_clock", f"**At equal wall-clock**: {plateau['seconds']:.0f} s of training, "
                                                 f"{where}"),
                            ("end", "**At the end of training**")):
            lines += [title, "", "| | no control | " + " | ".join(variant_name(variants[k]) for k in labels) + " |",
                      "|---|---:|" + "---:|" * len(labels)]
            table = (("steps trained", "", lambda k: str(rows[k][when]["step"])),
                     ("one-step disk IoU", f"{text['one_step_iou']:.3f}", lambda k: _ms(rows[k][when]["one_step_iou"])),
                     ("... shuffled controls (must not help)", "",
                      lambda k: _ms(rows[k][when]["one_step_shuffled_iou"])),
                     ("sampled disk IoU", f"{text['sampled_iou']:.3f}", lambda k: _ms(rows[k][when]["sampled_iou"])),
                     ("sampled edge F1", "", lambda k: _ms(rows[k][when]["sampled_edge_f1"])))
            for name, first, cell in table:
                lines.append(f"| {name} | {first} | " + " | ".join(cell(k) for k in labels) + " |")
            lines.append("")
        shares, best = s["share_of_controlnet"], s["best_variant"]
        lines.append(f"Share of the best ControlNet's result ({variant_name(variants[best['controlnet']])}; one-step: "
                     "of its gain over no control; sampled: of its disk IoU), each kind's best variant: "
                     + "; ".join(f"{variant_name(variants[best[k]])} {sh['equal_wall_clock']['one_step_gain']:.0%} / "
                                 f"{sh['equal_wall_clock']['sampled_iou']:.0%} at equal wall-clock, "
                                 f"{sh['end']['one_step_gain']:.0%} / {sh['end']['sampled_iou']:.0%} at the end"
                                 for k, sh in shares.items() if None not in (sh["end"]["one_step_gain"],
                                                                             sh["end"]["sampled_iou"],
                                                                             sh["equal_wall_clock"]["one_step_gain"],
                                                                             sh["equal_wall_clock"]["sampled_iou"]))
                     + ". Shuffled controls help "
                     + (", ".join(KIND_NAMES.get(k, k) for k, v in s["shuffled_helps"].items() if v) or "none") + ".")
        lines += ["", f"![fidelity]({path.with_suffix('.png').relative_to(RESULTS.parent)})", ""]
    return "\n".join(lines).rstrip()


def designs_block() -> str:
    path = RESULTS / "lite-designs-proxy-base.json"
    if not path.is_file():
        return _missing("Lite's designs and training recipes", "python benchmarks/lite_designs.py")
    r = json.loads(path.read_text())
    first = next(iter(r["candidates"].values()))
    lines = [f"Lite designs and recipes on **proxy-base** ({r['machine']}; seed {first['seed']} unless the name gives another, "
             f"{first['steps']} steps of 16 at 32 px, the fidelity study's data and scores; "
             "`python benchmarks/lite_designs.py --only NAME`). Settings over the default design's; "
             f"no control: {first['text_only']['one_step_iou']:.3f} / {first['text_only']['sampled_iou']:.3f}:", "",
             "| candidate | kind | module settings | timesteps | lr | parameters at SD1.5 | one-step IoU (shuffled), "
             "step 800 | sampled disk IoU, step 600 | one-step IoU (shuffled), end | sampled disk IoU, end |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def at(curve: list[dict], step: int) -> tuple[str, str]:
        p = next((p for p in curve if p["step"] == step), None)
        if p is None:
            return "", ""
        return (f"{p['one_step_iou']:.3f} ({p['one_step_shuffled_iou']:.3f})",
                f"{p['sampling']['disk_iou']:.3f}" if "sampling" in p else "")

    for name, c in r["candidates"].items():
        settings = ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "the kind's design"
        params = f"{c['parameters_sd15']:,}" if c.get("parameters_sd15") else ""
        # step 800: about where the fidelity study reads equal wall-clock
        near, mid, end = at(c["curve"], 800), at(c["curve"], 600), at(c["curve"], c["curve"][-1]["step"])
        lines.append(f"| {name} | `{c['kind']}` | {settings} | {c['training']['timestep_sampling']} | "
                     f"{c['learning_rate']:g} | {params} | {near[0]} | {mid[1]} | {end[0]} | {end[1]} |")
    return "\n".join(lines)


# labels as the results files record them
PARAMS_KEYS = {"lite": "Lite (default: feedback)", "lite-static": "Lite static (best step-invariant)",
               "lite-seed": "Lite, the pixel-MLP design", "t2i-adapter": "T2I-Adapter full (2 res blocks per level)",
               "controlnet": "ControlNet (diffusers ControlNetModel.from_unet)"}
SAMPLING_KEYS = {"lite": "SD + Lite", "lite-static": "SD + Lite static", "lite-seed": "SD + Lite seed",
                 "t2i-adapter": "SD + T2I-Adapter", "controlnet": "SD + ControlNet"}


def frontier_block() -> str:
    """README's results table. Per kind: parameters, sampling overhead, training step and peak
    memory at SD1.5 size (CPU suite), and fidelity on the proxy base at equal wall-clock and at
    the end (mean of the seeds); then the T4 rehearsal, with the design it was measured with."""
    counts = json.loads((RESULTS / "params.json").read_text())
    cpu = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("cpu-*.json"))]
    cpu = [run for run in cpu if "training" in run and "sampling" in run]  # (not cpu-sharing.json)
    fid = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("fidelity-*.json"))]
    if not cpu or not fid:
        return _missing("the results table", "python benchmarks/run.py and benchmarks/fidelity.py")
    fid = fid[0]
    batch = max(r["batch"] for run in cpu for r in run["training"])
    measured = {kind: _cpu_measurement(cpu, kind, batch, counts.get(PARAMS_KEYS[kind])) for kind in PARAMS_KEYS}
    by_kind = fid["summary"]["by_kind"]
    machines = sorted({run["machine"]["name"] for run, _, _ in filter(None, measured.values())})
    text = fid["summary"]["text_only"]
    plateau = fid["summary"]["controlnet_plateau"]
    wall = (f"{plateau['seconds']:.0f} s of training, where the best ControlNet's sampled disk IoU plateaus"
            if plateau["reached"] else f"{plateau['seconds']:.0f} s of training, ControlNet's last point (still rising)")
    lines = [f"Costs at the SD1.5 configuration (random weights, {cpu[0]['settings']['resolution']} px, CPU "
             f"({', '.join(machines)}; each kind against the ControlNet of its own run), `python benchmarks/run.py`; "
             f"training at batch {batch}); fidelity on the shipped proxy base (disk IoU, "
             f"0 to 1: one-step / sampled in full, mean of {len(fid['seeds'])} seeds, `python benchmarks/fidelity.py`; "
             f"no control: {text['one_step_iou']:.3f} / {text['sampled_iou']:.3f}; equal wall-clock: {wall}):", "",
             "| module | parameters | vs. ControlNet | sampling overhead | training step vs. ControlNet | "
             "peak memory vs. ControlNet | fidelity at equal wall-clock | fidelity at the end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("lite", "lite-static", "lite-seed", "t2i-adapter", "controlnet"):
        n, fk = counts.get(PARAMS_KEYS[kind]), by_kind.get(kind)
        run, row, cn = measured[kind] or (None, None, None)
        o = run["sampling"]["overhead_vs_sd"].get(SAMPLING_KEYS[kind]) if run else None

        def fidelity(when: str) -> str:
            if not fk or fk[when]["one_step_iou"] is None or fk[when]["sampled_iou"] is None:
                return ""
            return f"{fk[when]['one_step_iou']['mean']:.3f} / {fk[when]['sampled_iou']['mean']:.3f}"

        label = fid["summary"].get("best_variant", {}).get(kind)
        recipe = f", {fid['variants'][label].get('timestep_sampling', 'uniform')} timesteps" if label else ""
        cells = [f"{KIND_NAMES[kind]}: `{shown(kind)}`{recipe}",
                 "" if n is None else f"{n:,}",
                 "" if n is None else f"{n / counts[PARAMS_KEYS['controlnet']]:.2%}",
                 "" if o is None else f"{o:+.1%}",
                 "" if row is None else ("1x" if kind == "controlnet" else f"{cn['step_s'] / row['step_s']:.2f}x faster"),
                 "" if row is None else f"{row['peak_memory_bytes'] / cn['peak_memory_bytes']:.1%}",
                 fidelity("equal_wall_clock"), fidelity("end")]
        lines.append("| " + " | ".join(cells) + " |")
    for path in sorted(RESULTS.glob("t4-cap-*.json")):
        t4 = json.loads(path.read_text())
        runs = {r["control"]: r for r in t4["runs"] if "error" not in r}
        if {"lite", "controlnet"} <= set(runs):
            which = ("; measured with the paper's design, `lite-mlp`, before the feedback module became the default, "
                     "which has not run on a GPU yet" if t4.get("notes") else "")
            lines.append(
                f"\nOn a T4's 15 GiB (rehearsed on an {t4['card']} with its memory capped, {t4['resolution']} px, fp16, "
                f"`python benchmarks/t4_cap.py`{which}): the trainer fits Lite at {runs['lite']['micro_batch']} images "
                f"per step and ControlNet at {runs['controlnet']['micro_batch']}; an optimizer step of "
                f"{t4['batch_size']} takes {runs['lite']['step_seconds_median']} s against "
                f"{runs['controlnet']['step_seconds_median']} s.")
    return "\n".join(lines)


def _cpu_measurement(runs: list[dict], kind: str, batch: int, params: int | None) -> tuple | None:
    """(run, the kind's training row, that run's ControlNet row) of the newest CPU run (by date, then
    name) that measured this kind as it is now (its trainable parameters those of params.json)."""
    names = {kind, {"lite-seed": "lite-mlp"}.get(kind, kind)}
    found = []
    for run in sorted(runs, key=lambda r: (r["machine"]["date"], r["machine"]["name"])):
        by = {r["variant"]: r for r in run["training"] if r["batch"] == batch and "error" not in r}
        row = next((by[n] for n in names if n in by), None)
        if row and "controlnet" in by and (params is None or row.get("trainable_params") in (None, params)):
            found.append((run, row, by["controlnet"]))
    return found[-1] if found else None


def variants_block() -> str:
    files = sorted(RESULTS.glob("lite-variants-*.json"))
    if not files:
        return _missing("Lite's widths, learning rate and control window", "python benchmarks/lite_variants.py")
    lines = []
    for path in files:
        r = json.loads(path.read_text())
        st, text = r["settings"], r["text_only"]
        lines += [
            f"Lite variants on **{st['base_name']}** ({r['machine']}, {r['date']}; {st['steps']} steps at batch "
            f"{st['batch_size']} each; `python benchmarks/lite_variants.py`):",
            "",
            "| variant | parameters | s/step | one-step IoU | ... shuffled | sampled IoU | sampled edge F1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| no control | | | {text['one_step']['disk_iou']:.3f} | | {text['sampling']['disk_iou']:.3f} | "
            f"{text['sampling']['edge_f1']:.3f} |",
        ]
        for name, v in r["variants"].items():
            lines.append(f"| {name} | {v['parameters']:,} | {v['step_seconds']:.3f} | {v['one_step']['disk_iou']:.3f} | "
                         f"{v['one_step_shuffled']['disk_iou']:.3f} | {v['sampling']['disk_iou']:.3f} | "
                         f"{v['sampling']['edge_f1']:.3f} |")
        first = next(iter(r["variants"]))
        lines += ["", f"Where control applies (sampling with *{first}*): " + "; ".join(
            f"{name}: sampled IoU {w['sampling']['disk_iou']:.3f}, edge F1 {w['sampling']['edge_f1']:.3f}"
            for name, w in r["windows"].items()) + "."]
    return "\n".join(lines)


def by_size_block() -> str:
    path = RESULTS / "one-step-by-size-proxy-base.json"
    if not path.is_file():
        return _missing("the one-step IoU by circle size", "python benchmarks/one_step_by_size.py")
    r = json.loads(path.read_text())
    modules = r["modules"]
    lines = [f"One-step disk IoU (t={r['timestep']}) of the {r['pairs']} held-out pairs by the circle's radius "
             f"(pixels of {r['resolution']}), mean of seeds {', '.join(map(str, r['seeds']))}, each module at the end of the "
             "fidelity study (`python benchmarks/one_step_by_size.py`):", "",
             "| circle radius | pairs | " + " | ".join(modules) + " |", "|---|---:|" + "---:|" * len(modules)]
    for g, group in enumerate(r["groups"]):
        lines.append(f"| {group['radius_min']}-{group['radius_max']} | {group['pairs']} | "
                     + " | ".join(f"{m['by_size'][g]:.3f}" for m in modules.values()) + " |")
    lines.append(f"| all | {r['pairs']} | " + " | ".join(f"{m['mean']:.3f}" for m in modules.values()) + " |")
    return "\n".join(lines)


def proxy_block() -> str:
    path = RESULTS / "proxy_base.json"
    if not path.is_file():
        return _missing("the proxy base's own scores", "python benchmarks/proxy_base_eval.py")
    r = json.loads(path.read_text())
    t = r["training"]
    lines = [f"{t['steps_done']:,} training steps in {t['train_seconds'] / 60:.0f} min on {t['torch_threads']} CPU "
             f"thread(s) ({r['machine']['cpu']}); {r['evaluations'][0]['samples']} held-out prompts, colour errors "
             "(CIEDE2000) against the real prompt's colours (`python benchmarks/proxy_base_eval.py`):", "",
             "| sampler | prompt | one disk | disk colour error | background colour error |", "|---|---|---:|---:|---:|"]
    for ev in r["evaluations"]:
        for name in ("real", "shuffled", "empty"):
            e = ev[name]
            lines.append(f"| {ev['sampler']} | {name} | {e['one_disk_share']:.0%} | {e['circle_colour_error']:.1f} | "
                         f"{e['background_colour_error']:.1f} |")
    return "\n".join(lines)


def proxy_shapes_table(report: dict) -> str:
    """The report as a markdown table: one row per guidance and prompt, the scenes themselves first."""
    lines = ["| guidance | prompt | blob count right | object colour count right | object colour error | "
             "background colour error | object IoU |", "|---|---|---:|---:|---:|---:|---:|"]

    def row(guidance: str, name: str, scores: dict) -> str:
        return (f"| {guidance} | {name} | {scores['blob_count_right']:.0%} | {scores['right_count']:.0%} | "
                f"{scores['object_colour_error']:.1f} | {scores['background_colour_error']:.1f} | "
                f"{scores['object_iou']:.2f} |")

    lines.append(row("-", "scene itself", report["scenes"]))
    lines.append(row("-", "scene through the VAE", report["through_vae"]))
    for ev in report["evaluations"]:
        lines += [row(f"{ev['guidance']:g}", name, ev[name]) for name in ("real", "shuffled", "empty")]
    return "\n".join(lines)


def proxy_shapes_block() -> str:
    path = RESULTS / "proxy-shapes.json"
    if not path.is_file():
        return _missing("the shapes base's own scores", "python benchmarks/proxy_shapes_eval.py")
    r = json.loads(path.read_text())
    t = r["training"]
    return "\n".join([
        f"VAE {t['vae_train_seconds'] / 60:.0f} min and UNet {t['steps_done']:,} steps in {t['unet_train_seconds'] / 60:.0f} "
        f"min on {t['torch_threads']} CPU thread(s) ({r['machine']['cpu']}); VAE reconstruction {r['vae_psnr_db']:.1f} dB "
        f"PSNR on held-out scenes; {r['samples']} held-out prompts sampled "
        f"({r['evaluations'][0]['sampler'].rsplit(', guidance', 1)[0]}, guidance per row), scored "
        "against each real scene (`python benchmarks/proxy_shapes_eval.py`; colour errors CIEDE2000):", "",
        proxy_shapes_table(r)])


def suite_block() -> str:
    """The full tables of every `benchmarks/run.py` and `benchmarks/t4_cap.py` run."""
    lines = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "sampling" not in data:
            continue
        m = data["machine"]
        lines += [f"### {m['name']}", "",
                  f"{m['description']}; torch {m['torch']}, diffusers {m['diffusers']}; {m['threads']} thread(s); "
                  f"{data['settings']['dtype']}, {data['settings']['resolution']} px; {m['date']}.", ""]
        s = data["sampling"]
        lines += [f"Whole generation ({s['steps']} steps, guidance {s['guidance']}, median of {s['repeats']}):", "",
                  "| variant | seconds | overhead vs. SD |", "|---|---:|---:|"]
        for name, sec in s["seconds"].items():
            over = s["overhead_vs_sd"].get(name)
            lines.append(f"| {name} | {sec:.2f} | {'' if over is None else f'{over:+.1%}'} |")
        lines += ["", "Training step (forward + backward + AdamW; peak memory includes the frozen UNet):", "",
                  "| variant | batch | forward s | backward s | optimizer s | step s | peak memory GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in data["training"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['batch']} | failed: {r['error']} | | | | |")
                continue
            lines.append(f"| {r['variant']} | {r['batch']} | {r['forward_s']:.3f} | {r['backward_s']:.3f} | "
                         f"{r['optimizer_s']:.3f} | {r['step_s']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} |")
        lines += [f"- Note: {note}" for note in data.get("notes", [])]
        lines.append("")
    for path in sorted(RESULTS.glob("t4-cap-*.json")):
        data = json.loads(path.read_text())
        lines += [f"### T4 rehearsal: {data['card']} capped at {data['memory_cap_gib']:g} GiB", "",
                  f"`python benchmarks/t4_cap.py`: the real trainer at {data['resolution']} px with an effective batch "
                  f"of {data['batch_size']}, its hardware plan probing per-step batches; torch {data['torch']}; "
                  f"{data['date']}.", "",
                  "| control | trainable parameters | per-step batch | memory savers | peak reserved GiB | "
                  "s per optimizer step |", "|---|---:|---:|---|---:|---:|"]
        for r in data["runs"]:
            if "error" in r:
                lines.append(f"| {r['control']} | | failed: {r['error']} | | | |")
                continue
            savers = ", ".join(n for n, on in (("checkpointing", r["gradient_checkpointing"]),
                                               ("8-bit AdamW", r["use_8bit_adam"])) if on) or "none"
            peak = r["run_peak_reserved_bytes"]
            lines.append(f"| {r['control']} | {r['trainable_params']:,} | {r['micro_batch']} | {savers} | "
                         f"{'' if peak is None else f'{peak / 2**30:.1f}'} | {r['step_seconds_median']} |")
        lines += [f"- Note: {note}" for note in data.get("notes", [])]
        lines.append("")
    return "\n".join(lines).rstrip() or _missing("speed and memory", "python benchmarks/run.py")


# The results files name the source paper's design as it was measured; the library's names replace
# those (longest first, so a full label is replaced before its parts).
NAMES = (("Lite, the seed's design", "Lite MLP (the paper's design)"), ("the seed's design", "the paper's design"),
         ("lite-seed", "lite-mlp"), ("Lite seed", "Lite MLP"))


def shown(text: str) -> str:
    """`text` with the library's names for what the results files call by earlier ones."""
    for old, new in NAMES:
        text = text.replace(old, new)
    return text


# Which blocks each file holds, each made from the committed results.
BLOCKS = {
    "README.md": {"demo": demo_block, "results": frontier_block, "shapes": shapes_tables.summary_block},
    "benchmarks/RESULTS.md": {"params": params_block, "benchmarks": benchmarks_block, "suite": suite_block,
                              "fidelity": fidelity_block, "proxy": proxy_block, "proxy_shapes": proxy_shapes_block,
                              "shapes_study": shapes_tables.study_block,
                              "designs": designs_block,
                              "by_size": by_size_block, "variants": variants_block, "fill50k": fill50k_block,
                              "cpu_sharing": cpu_sharing_block},
}


def block(name: str) -> str:
    """What block `name` holds, in the library's names."""
    make = next(blocks[name] for blocks in BLOCKS.values() if name in blocks)
    return shown(make())


def refresh(relative: str) -> None:
    """Rewrite the blocks of one file (relative to the repository) in place."""
    path = ROOT / relative
    text = path.read_text()
    for name in BLOCKS[relative]:
        pattern = rf"<!-- {name}:start.*?-->.*?<!-- {name}:end -->"
        if not re.search(pattern, text, flags=re.S):
            raise SystemExit(f"{relative} has no <!-- {name}:start --> ... <!-- {name}:end --> block.")
        new = f"<!-- {name}:start (benchmarks/readme.py) -->\n{block(name)}\n<!-- {name}:end -->"
        text = re.sub(pattern, lambda _: new, text, flags=re.S)
    path.write_text(text)
    print(f"Refreshed {', '.join(BLOCKS[relative])} in {relative}")


def main() -> None:
    for relative in BLOCKS:
        refresh(relative)


if __name__ == "__main__":
    main()
