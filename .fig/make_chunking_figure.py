"""Draws `.fig/chunking_error.png`: the error of three ways of decoding codes in chunks, against decoding them whole.

    .venv/bin/python .fig/make_chunking_figure.py        # about a minute on 2 CPU cores; prints the max errors

The model is the full-size 44.1 kHz architecture (`DacConfig.from_preset("44khz")`) with *random weights*: no
released weights are stored here. Its Snake frequencies, biases and weight-norm gains are perturbed as in
scripts/random_weights.py (the gains folded into the weights, as conversion folds them), so that activations and
output have a realistic scale rather than the near-silence of a fresh initialisation. About 3 s of test audio (a
chirp, a chord and noise) is encoded by the model, and its codes are decoded four ways:

- whole: `model.decode(s=codes, chunk_size=0)`, the reference for the other three;
- naive chunking: chunks of N frames decoded with no context (`model.decode(s=codes[..., a:b], chunk_size=0)`)
  and concatenated;
- overlap averaging: `model.decode(s=codes, chunk_size=N, mode="overlap_average")`, the earlier model card's
  method (chunks overlapping by `config.decoding_overlap_rate`, averaged over the overlap);
- exact chunking: `model.decode(s=codes, chunk_size=N)`, the default.

N = 43 frames (0.5 s). The figure plots |chunked - whole| along time on a log scale (exact zeros drawn at 1e-10),
marks the chunk boundaries and gives each method's maximum error in the legend. The ~1e-6 floor of the first two
away from the seams is float rounding: a whole-signal pass runs the transposed convolutions as they are, a
chunked `decode` in polyphase form. Regenerate the figure whenever decoding changes; scripts/build_hub_repos.py
copies `.fig/*.png` into every Hub repo, whose card shows it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dac_codec import DacConfig  # noqa: E402
from dac_codec.tools.random_weights import random_model, sample_audio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

OUTPUT = Path(__file__).resolve().parent / "chunking_error.png"
PRESET = "44khz"
SECONDS = 3.0
CHUNK_FRAMES = 43  # 0.5 s at 86.13 frames per second
FLOOR = 1e-10  # where exact zeros are drawn on the log axis
BLOCK = 64  # samples per plotted point (1.5 ms)


def main() -> None:
    start = time.perf_counter()
    model = random_model(DacConfig.from_preset(PRESET))
    rate, hop = model.config.sampling_rate, model.hop_length
    _, codes = model.encode(sample_audio(rate, SECONDS), sample_rate=rate, chunk_size_in_sec=0)
    n_frames = codes.shape[-1]

    whole = model.decode(s=codes, chunk_size=0)
    naive = torch.cat([model.decode(s=piece, chunk_size=0) for piece in codes.split(CHUNK_FRAMES, dim=-1)], dim=-1)
    methods = {
        "naive chunks (no context)": naive,
        f"overlap averaging ({model.config.decoding_overlap_rate:.0%} overlap, earlier card)":
            model.decode(s=codes, chunk_size=CHUNK_FRAMES, mode="overlap_average"),
        "exact chunks (default)": model.decode(s=codes, chunk_size=CHUNK_FRAMES),
    }

    # |error| drawn as its maximum over blocks of BLOCK samples: the samples themselves oscillate too fast to read.
    n_blocks = whole.shape[-1] // BLOCK
    t = (torch.arange(n_blocks) + 0.5) * BLOCK / rate
    fig, ax = plt.subplots(figsize=(11, 4.6), dpi=120)
    for boundary in range(CHUNK_FRAMES, n_frames, CHUNK_FRAMES):
        ax.axvline(boundary * hop / rate, color="0.6", lw=0.8, ls="--", zorder=0)
    overlap_chunks = model.overlap_chunks(n_frames, CHUNK_FRAMES)  # what the figure draws: the model's own plan
    for (_, end), (begin, _) in itertools.pairwise(overlap_chunks):
        ax.axvspan(begin * hop / rate, end * hop / rate, color="tab:orange", alpha=0.12, lw=0, zorder=0)
    print(f"{PRESET}, random weights: {n_frames} frames, chunks of {CHUNK_FRAMES} frames; "
          f"whole-signal output peak |y| = {whole.abs().max():.3f}")
    for (label, audio), colour in zip(methods.items(), ("tab:red", "tab:orange", "tab:blue")):
        assert audio.shape == whole.shape, (label, audio.shape, whole.shape)
        error = (audio - whole).abs()[0, 0]
        print(f"  {label}: max |error| = {error.max():.3g}")
        envelope = error[: n_blocks * BLOCK].view(n_blocks, BLOCK).amax(dim=1).clamp_min(FLOOR)
        ax.plot(t, envelope, lw=1.0, color=colour, label=f"{label}: max {error.max():.2g}")
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 3, 10)
    ax.set_xlim(0, whole.shape[-1] / rate)
    ax.set_xlabel(f"time (s); dashed: chunk boundaries every {CHUNK_FRAMES} frames; shaded: overlaps averaged")
    ax.set_ylabel(f"|chunked - whole| (max per {BLOCK} samples)")
    ax.set_title(
        f"Chunked vs whole-signal decoding of the same codes: DAC {PRESET} architecture, random weights "
        f"(no released weights here)\n{SECONDS:g} s of test audio encoded by the model, chunks of {CHUNK_FRAMES} "
        f"frames ({CHUNK_FRAMES * hop / rate:.2f} s); exact zeros drawn at {FLOOR:g}",
        fontsize=9,
    )
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(OUTPUT)
    print(f"wrote {OUTPUT.relative_to(ROOT)} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
