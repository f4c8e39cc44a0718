"""Runtime chart against the reference, drawn from the JSON that benchmarks/bench_speed.py writes.

    .venv/bin/python benchmarks/bench_speed.py --json speed_fp32.json
    .venv/bin/python benchmarks/bench_speed.py --dtype bfloat16 --impls ours --json speed_bf16.json
    .venv/bin/python .fig/make_runtime_figure.py speed_fp32.json [speed_bf16.json]   # writes .fig/runtime.png

One bar per implementation and dtype, grouped by operation, for each preset and length in the files: median
wall time of fresh-process runs, with the speed-up against the reference (measured in the same run) printed on
each bar.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent / "runtime.png"


def main(paths: list[str]) -> None:
    rows, meta = [], None
    for path in paths:
        data = json.loads(Path(path).read_text())
        meta = meta or data["meta"]
        rows += [r for r in data["rows"] if r["median_s"]]
    groups = sorted({(r["preset"], r["seconds"], r["op"]) for r in rows}, key=lambda g: (g[0], g[1], g[2] != "encode"))
    series = sorted({(r["impl"], r["dtype"]) for r in rows}, key=lambda s: (s[0] != "reference", s[0], s[1]))
    reference = {(r["preset"], r["seconds"], r["op"]): r["median_s"] for r in rows if r["impl"] == "reference"}
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(groups)), 4))
    for k, (impl, dtype) in enumerate(series):
        xs, ys, labels = [], [], []
        for g, group in enumerate(groups):
            row = next((r for r in rows if (r["preset"], r["seconds"], r["op"]) == group
                        and (r["impl"], r["dtype"]) == (impl, dtype)), None)
            if row:
                xs.append(g + (k - (len(series) - 1) / 2) * width)
                ys.append(row["median_s"])
                labels.append(f"{reference[group] / row['median_s']:.1f}x" if group in reference else "")
        bars = ax.bar(xs, ys, width, label=f"{impl} ({dtype})")
        ax.bar_label(bars, labels, fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{p} {s:g} s\n{o}" for p, s, o in groups])
    ax.set_ylabel("median wall time (s)")
    ax.set_title(f"DAC on CPU ({meta['cpus']} cores, {meta['threads']} threads), random weights; "
                 "labels: speed-up vs reference", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
