"""Validation while fine-tuning: a fixed, seeded set of held-out excerpts, scored every few steps with the measures
of `dac-codec evaluate` (the model encodes and decodes each excerpt as a user's `encode` and `decode` would), logged
with the training losses to TensorBoard event files (with audio) and a CSV.

    OUTPUT/log.csv          a row a validation: the step, that step's training losses, each score's mean
    OUTPUT/tensorboard/     train/* every step, val/* and audio of the first excerpts every --val-every steps
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..evaluation.metrics import check_measures
from ..evaluation.roundtrip import roundtrip

BEST_BY = "mel-44k"  # the score that picks the best checkpoint (lower is better)
AUDIO_SAMPLES = 2  # excerpts whose reconstructions go to TensorBoard
VALIDATION_MEASURES = ("original", "stoi", "f0")  # ViSQOL's second per excerpt is for the final report


class Validation:
    """The held-out excerpts (count, samples) at the model's rate, the measures, and the logs.

    Args:
        excerpts: float32 (count, 1, samples): drawn once, with a seed, so every validation scores the same audio.
        sample_rate: The model's rate.
        output: The run's folder, for log.csv and tensorboard/.
        start_step: The step the run starts from: what a resumed run logged after it is dropped.
    """

    def __init__(self, excerpts: torch.Tensor, sample_rate: int, output: Path, start_step: int = 0):
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--val logs to TensorBoard, which is not installed: pip install 'dac-codec[train]'")
        from torch.utils.tensorboard import SummaryWriter

        self.excerpts, self.sample_rate = excerpts, sample_rate
        self.measures = [(m.columns, m.make()) for m in check_measures(list(VALIDATION_MEASURES))]
        self.columns = [c for columns, _ in self.measures for c in columns]
        self.log = output / "log.csv"
        self.losses: list[str] = []
        self._keep_rows_until(start_step)
        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=start_step or None)

    def _keep_rows_until(self, step: int) -> None:
        """Drops the rows of steps after `step` (a resumed run does them again)."""
        if not self.log.is_file():
            return
        with open(self.log, newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
        with open(self.log, "w", newline="") as file:
            if kept:
                writer = csv.DictWriter(file, fieldnames=list(kept[0]))
                writer.writeheader()
                writer.writerows(kept)

    def train_step(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def __call__(self, model, step: int, losses: dict[str, float]) -> dict[str, float]:
        """Scores the excerpts with `model` (switched to eval for the while) and logs; returns each score's mean."""
        was_training = model.training
        model.eval()
        per_excerpt: list[dict[str, float]] = []
        try:
            for index, excerpt in enumerate(self.excerpts):
                samples = excerpt[0].numpy()
                _, audio = roundtrip(model, samples, None)
                scores: dict[str, float] = {}
                for _, measure in self.measures:
                    scores.update(measure(samples, audio, self.sample_rate))
                per_excerpt.append(scores)
                if index < AUDIO_SAMPLES:
                    self.writer.add_audio(f"val/reconstruction-{index}", torch.from_numpy(audio)[None], step,
                                          self.sample_rate)
                    if step == 0 or not self.log.is_file():
                        self.writer.add_audio(f"val/input-{index}", excerpt, step, self.sample_rate)
        finally:
            model.train(was_training)
        means = {c: float(np.nanmean([s[c] for s in per_excerpt])) if any(np.isfinite(s[c]) for s in per_excerpt)
                 else math.nan for c in self.columns}
        for name, value in means.items():
            self.writer.add_scalar(f"val/{name}", value, step)
        self.writer.flush()
        self._append({"step": step, **{f"train/{k}": v for k, v in losses.items()},
                      **{f"val/{k}": v for k, v in means.items()}})
        return means

    def _append(self, row: dict[str, object]) -> None:
        new = not self.log.is_file() or self.log.stat().st_size == 0
        with open(self.log, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        self.writer.close()


def better_than(score: float, best: Optional[float]) -> bool:
    return not math.isnan(score) and (best is None or score < best)
