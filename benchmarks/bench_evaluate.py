"""What `dac-codec evaluate` costs per second of audio: encode + decode, and each measure, on a full-size model.

    .venv/bin/python benchmarks/bench_evaluate.py                     # 44khz, the sample speech, 3 repeats
    .venv/bin/python benchmarks/bench_evaluate.py --preset 16khz --seconds 20 --repeats 5

One process, a full-size model of the preset with random weights (`dac_codec.tools.random_weights`), the repo's
speech sample looped to --seconds at the model's rate. Every step is run once untimed (numba compiles pYIN's and
ViSQOL's kernels on first use, once per machine: it caches them), then timed --repeats times; the table gives the
median seconds per second of audio and the multiple of encode + decode. The last line is what the evaluation costs
beside encode + decode without ViSQOL (the issue's bound: within 3x), and ViSQOL's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from dac_codec import DacConfig
from dac_codec.audio_io import prepare_audio
from dac_codec.evaluation.metrics import MEASURES
from dac_codec.evaluation.roundtrip import roundtrip
from dac_codec.tools.random_weights import random_model

SPEECH = Path(__file__).resolve().parents[1] / "samples" / "speech.flac"


def timed(step, repeats: int) -> float:
    step()  # warm-up: compiles, allocates, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="44khz")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = random_model(DacConfig.from_preset(args.preset)).eval()
    rate = model.config.sampling_rate
    data, source_rate = soundfile.read(SPEECH, dtype="float32")
    speech = prepare_audio(torch.from_numpy(data)[None], source_rate, rate)[0, 0].numpy()
    samples = np.resize(speech, int(args.seconds * rate))  # looped to the length asked for
    _, reconstruction = roundtrip(model, samples, None)

    rows = [("encode + decode", timed(lambda: roundtrip(model, samples, None), args.repeats))]
    for name, measure in MEASURES.items():
        score = measure.make()
        rows.append((name, timed(lambda score=score: score(samples, reconstruction, rate), args.repeats)))
    codec = rows[0][1]
    print("| step | s per s of audio | x encode + decode |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds / args.seconds:.4f} | {seconds / codec:.2f}x |")
    measured = dict(rows)
    without = codec + sum(measured[n] for n in ("original", "stoi", "f0"))
    print(f"\nevaluate without ViSQOL (encode + decode + original + stoi + f0): {without / codec:.2f}x encode + "
          f"decode; ViSQOL adds {measured['visqol'] / codec:.2f}x, PESQ {measured['pesq'] / codec:.2f}x")
    print(f"{args.preset}, {args.seconds:g} s of speech, median of {args.repeats}; {torch.get_num_threads()} torch "
          f"threads; torch {torch.__version__}")


if __name__ == "__main__":
    main()
