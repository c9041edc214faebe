"""The loss log of a run: a CSV row per optimizer step, cut back on resume, and its plot."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ("step", "epoch", "loss", "lr", "seconds")


class LossLog:
    """`<output>/logs/loss.csv`, one row per optimizer step."""

    def __init__(self, output: str | Path):
        self.path = Path(output) / "logs" / "loss.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows after `step` (they will be recomputed after a resume)."""
        rows = [r for r in self.read() if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({"step": step, "epoch": epoch, "loss": f"{loss:.6g}", "lr": f"{lr:.3g}",
                             "seconds": f"{seconds:.2f}"})

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def plot(self, out: str | Path | None = None, smooth: int = 20) -> Path:
        """Save the loss curve (raw and a running mean over `smooth` steps) as PNG."""
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

        rows = self.read()
        steps = [int(r["step"]) for r in rows]
        losses = [float(r["loss"]) for r in rows]
        out = Path(out) if out else self.path.with_name("loss.png")
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        ax.plot(steps, losses, alpha=0.3, label="loss")
        if len(losses) >= smooth:
            running = [sum(losses[i - smooth + 1 : i + 1]) / smooth for i in range(smooth - 1, len(losses))]
            ax.plot(steps[smooth - 1 :], running, label=f"mean of {smooth}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("diffusion loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        return out
