"""The summary of an evaluation: per model and bitrate, each score's mean, median and bootstrap 95% interval of the
mean over the inputs that scored; each codebook's usage over the set; and with two models or more, each model's
paired difference from the first, input by input at the same bitrate (what fine-tuning changed).

    {"groups": [{"model": ..., "model_index": 0, "bitrate": "all", "n_quantizers": 9, "bitrate_kbps": 7.75,
                 "inputs": 12, "failed": 0,
                 "scores": {"mel-44k": {"mean": ..., "median": ..., "ci95": [lo, hi], "n": 12, "better": "lower"}},
                 "codebook_perplexity": [...]}],
     "paired": [{"model": ..., "against": ..., "bitrate": "all", "scores": {"mel-44k": {"mean": ..., "ci95": ...,
                 "n": 12, "better": "lower"}}}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..tools.files import write_atomically
from .metrics import better, perplexity

BOOTSTRAP = 2000  # resamples of the inputs
SEED = 0  # the same intervals from the same scores


def interval(values: np.ndarray) -> list[float]:
    """Percentile bootstrap 95% interval of the mean of values (seeded)."""
    if len(values) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(SEED)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def describe(values: np.ndarray, column: str) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"mean": None, "median": None, "ci95": [None, None], "n": 0, "better": better(column)}
    low, high = interval(values)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "ci95": [None if np.isnan(low) else low, None if np.isnan(high) else high], "n": int(len(values)),
            "better": better(column)}


def summarize(table: pa.Table, columns: Sequence[str]) -> dict[str, Any]:
    rows = table.to_pylist()
    order = {label: i for i, label in enumerate(dict.fromkeys(r["bitrate"] for r in rows))}
    keys = sorted({(r["model_index"], r["bitrate"]) for r in rows}, key=lambda k: (k[0], order[k[1]]))
    groups, by_key = [], {}
    for index, n in keys:
        group = [r for r in rows if (r["model_index"], r["bitrate"]) == (index, n)]
        by_key[index, n] = {r["id"]: r for r in group}
        counts = [np.array(r["code_counts"]) for r in group if r["code_counts"] is not None]
        usage = [perplexity(c) for c in np.sum(counts, axis=0)] if counts else []
        groups.append({
            "model": group[0]["model"], "model_index": index, "bitrate": n,
            "n_quantizers": group[0]["n_quantizers"], "bitrate_kbps": group[0]["bitrate_kbps"], "inputs": len(group),
            "failed": sum(r["error"] is not None for r in group),
            "scores": {c: describe(np.array([r[c] for r in group if r[c] is not None], float), c) for c in columns},
            "codebook_perplexity": usage})
    paired = []
    for index, n in keys:
        if index == 0 or (0, n) not in by_key:
            continue
        base, other = by_key[0, n], by_key[index, n]
        common = [id for id in other if id in base]
        scores = {}
        for c in columns:
            pairs = [(other[id][c], base[id][c]) for id in common
                     if other[id][c] is not None and base[id][c] is not None]
            scores[c] = describe(np.array([a - b for a, b in pairs], float), c)
        paired.append({"model": next(iter(other.values()))["model"], "against": next(iter(base.values()))["model"],
                       "bitrate": n, "scores": scores})
    return {"groups": groups, "paired": paired}


def write_summary(table: pa.Table, columns: Sequence[str], settings: dict[str, Any], path: Path) -> dict[str, Any]:
    summary = {"settings": settings, **summarize(table, columns)}
    write_atomically(path, lambda p: Path(p).write_text(json.dumps(summary, indent=2, allow_nan=False)))
    return summary
