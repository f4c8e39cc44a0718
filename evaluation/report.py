"""The report of an evaluation, `DIR/report.html`, a page that works offline (everything it shows lies in
`DIR/report/` beside it): the summary table; each score against bitrate, a line per model; and for the worst,
median and best inputs by mel distance, the spectrograms of the input, the reconstruction and their difference, and
a player for the input and every reconstruction."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..audio_io import write_audio
from ..tools.corpus.sources import Corpus, InputReader
from .metrics import better
from .roundtrip import roundtrip

RANKED_BY = ("mel-44k", "mel-22k")  # the first of these the evaluation has picks the worst, median and best inputs


def _figure(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(plt)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def plot_scores(path: Path, summary: dict[str, Any], columns: list[str]) -> None:
    """Each score's mean (and 95% interval) against bitrate, a line per model."""
    def draw(plt):
        cols = 4
        rows = math.ceil(len(columns) / cols)
        figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        models = sorted({(g["model_index"], g["model"]) for g in summary["groups"]})
        for ax, column in zip(axes.flat, columns):
            for index, model in models:
                groups = sorted((g for g in summary["groups"] if g["model_index"] == index),
                                key=lambda g: g["bitrate_kbps"])
                points = [(g["bitrate_kbps"], g["scores"][column]) for g in groups if g["scores"][column]["n"]]
                if not points:
                    continue
                x = [p[0] for p in points]
                y = [p[1]["mean"] for p in points]
                low = [p[1]["mean"] - (p[1]["ci95"][0] if p[1]["ci95"][0] is not None else p[1]["mean"])
                       for p in points]
                high = [(p[1]["ci95"][1] if p[1]["ci95"][1] is not None else p[1]["mean"]) - p[1]["mean"]
                        for p in points]
                ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, color=f"C{index}",
                            label=f"{index}: {Path(model).name}")
            ax.set_title(f"{column} ({better(column)} is better)", fontsize=9)
            ax.set_xlabel("kbps", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(columns):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        figure.tight_layout()
        return figure

    _figure(path, draw)


def log_spectrogram(audio: np.ndarray) -> np.ndarray:
    """dB magnitudes (bins, frames) of a 2048-sample Hann STFT, hop 512."""
    spec = torch.stft(torch.from_numpy(audio), 2048, 512, window=torch.hann_window(2048), return_complex=True).abs()
    return 20 * np.log10(spec.numpy() + 1e-5)


def plot_spectrograms(path: Path, audio: np.ndarray, reconstruction: np.ndarray, sample_rate: int, title: str) -> None:
    def draw(plt):
        figure, axes = plt.subplots(1, 3, figsize=(15, 3.2))
        x, y = log_spectrogram(audio), log_spectrogram(reconstruction)
        extent = (0, audio.shape[-1] / sample_rate, 0, sample_rate / 2000)
        for ax, image, name in ((axes[0], x, "input"), (axes[1], y, "reconstruction")):
            ax.imshow(image, origin="lower", aspect="auto", extent=extent, vmin=-100, vmax=20, cmap="magma")
            ax.set_title(name, fontsize=9)
        axes[2].imshow(y - x, origin="lower", aspect="auto", extent=extent, vmin=-30, vmax=30, cmap="coolwarm")
        axes[2].set_title("reconstruction - input (dB)", fontsize=9)
        for ax in axes:
            ax.set_xlabel("s", fontsize=8)
            ax.set_ylabel("kHz", fontsize=8)
            ax.tick_params(labelsize=7)
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        return figure

    _figure(path, draw)


def picked(table: pa.Table, columns: list[str]) -> list[tuple[str, str]]:
    """(label, id) of the worst, median and best inputs by the first model's mel distance at its highest
    bitrate."""
    column = next((c for c in RANKED_BY if c in columns), None)
    if column is None:
        return []
    rows = [r for r in table.to_pylist() if r["model_index"] == 0 and r[column] is not None]
    if not rows:
        return []
    top = max(r["n_quantizers"] for r in rows)
    ranked = sorted((r for r in rows if r["n_quantizers"] == top), key=lambda r: r[column])
    chosen = {"worst": ranked[-1]["id"], "median": ranked[len(ranked) // 2]["id"], "best": ranked[0]["id"]}
    return list(chosen.items())


def _cell(score: dict[str, Any]) -> str:
    if not score["n"]:
        return "—"
    low, high = score["ci95"]
    spread = f" <small>[{low:.3g}, {high:.3g}]</small>" if low is not None else ""
    return f"{score['mean']:.4g}{spread}"


def write_report(output: Path, table: pa.Table, summary: dict[str, Any], settings: dict[str, Any], corpus: Corpus,
                 models: dict[str, Any]) -> Path:
    """Writes `output/report.html` and its images and audio under `output/report/`."""
    folder = output / "report"
    folder.mkdir(exist_ok=True)
    columns = [c for c in table.schema.names if table.schema.field(c).type == pa.float64()
               and c not in ("bitrate_kbps", "seconds")]
    plot_scores(folder / "scores.png", summary, columns)

    head = "".join(f"<th>{html.escape(c)}<br><small>{better(c)} better</small></th>" for c in columns)
    lines = []
    for g in summary["groups"]:
        cells = "".join(f"<td>{_cell(g['scores'][c])}</td>" for c in columns)
        lines.append(f"<tr><td>{g['model_index']}: {html.escape(Path(g['model']).name)}</td>"
                     f"<td>{g['bitrate_kbps']:.2f} ({g['n_quantizers']} cb)</td><td>{g['inputs'] - g['failed']}"
                     f"</td>{cells}</tr>")
    paired = []
    for p in summary["paired"]:
        cells = "".join(f"<td>{_cell(p['scores'][c])}</td>" for c in columns)
        paired.append(f"<tr><td>{html.escape(Path(p['model']).name)} − {html.escape(Path(p['against']).name)}</td>"
                      f"<td>{html.escape(p['bitrate'])}</td><td>{p['scores'][columns[0]]['n']}</td>{cells}</tr>")

    examples = []
    readers: dict[int, InputReader] = {}
    references = dict(corpus.items())
    for label, id in picked(table, columns):
        parts = [f"<h3>{label}: {html.escape(id)}</h3>"]
        for index, (name, model) in enumerate(models.items()):
            rate = model.config.sampling_rate
            reader = readers.setdefault(rate, InputReader(corpus, rate))
            samples = reader.read(references[id]).samples
            stem = f"{label}-{index}"
            write_audio(folder / f"{stem}-input.wav", torch.from_numpy(samples)[None, None], rate)
            audio_tag = f'<audio controls preload="metadata" data-id="{html.escape(id)}" src="report/{stem}'
            players = [f"<figure><figcaption>input ({rate} Hz)</figcaption>{audio_tag}-input.wav\"></audio></figure>"]
            for n in settings["n_quantizers"]:
                _, audio = roundtrip(model, samples, None if n == "all" else int(n))
                write_audio(folder / f"{stem}-{n}.wav", torch.from_numpy(audio)[None, None], rate)
                players.append(f"<figure><figcaption>{n} codebooks</figcaption>{audio_tag}-{n}.wav\"></audio></figure>")
            plot_spectrograms(folder / f"{stem}.png", samples, audio, rate,
                              f"{Path(name).name}, {settings['n_quantizers'][-1]} codebooks")
            parts.append(f"<p>{index}: {html.escape(name)}</p><img src='report/{stem}.png' alt='spectrograms'>"
                         f"<div class=players>{''.join(players)}</div>")
        examples.append("".join(parts))

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DAC evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} img{{max-width:100%}}
.players{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}} figcaption{{font-size:12px}}</style></head>
<body><h1>DAC evaluation</h1>
<p>{html.escape(settings['input'])}: {len(references)} inputs; mean over the inputs [bootstrap 95% interval].</p>
<table><tr><th>model</th><th>kbps</th><th>inputs</th>{head}</tr>{''.join(lines)}</table>
{'<h2>Paired differences from model 0</h2><table><tr><th>models</th><th>codebooks</th><th>inputs</th>' + head
 + '</tr>' + ''.join(paired) + '</table>' if paired else ''}
<h2>Scores against bitrate</h2><img src="report/scores.png" alt="scores against bitrate">
<h2>Worst, median and best inputs</h2>{''.join(examples)}
</body></html>
"""
    path = output / "report.html"
    path.write_text(page)
    return path
