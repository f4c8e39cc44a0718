"""Throughput of `dac-codec tokenize` on a generated corpus, next to the model alone and a plain loop with the
reference package, same weights and same files. Figures are audio hours per wall hour.

    .venv/bin/python benchmarks/bench_tokenize.py                 # 44khz, 200 files (33 min of audio)
    .venv/bin/python benchmarks/bench_tokenize.py --preset 16khz --files 300 --json tokenize.json
    .venv/bin/python benchmarks/bench_tokenize.py --files 20 --skip-reference   # quick check
    .venv/bin/python benchmarks/bench_tokenize.py --preset 16khz --dtype mixed  # bf16 products (CPUs with AMX)

The corpus (kept in --corpus, made once per seed and size): --files files of mixed lengths (one of 300 s, one of
0.5 s, one in fifty of 1 to 4 min, the rest log-uniform from 0.5 to 20 s), in WAV, FLAC, MP3 and Ogg Vorbis, at
16, 22.05, 44.1 and 48 kHz, a third of them stereo; a chirp, a chord and noise, different in every file.

What is measured, each in a fresh process with torch's default threads (never two at once):
- tokenize: `corpus.tokenize(folder, DIR, model)` as `dac-codec tokenize` runs it (on the CPU: one encoder, one
  reader process), from the call to the last shard written: listing, hashing the weights, reading, decoding,
  resampling, encoding and writing Parquet.
- model only: `model.encode(x, sample_rate)` of every file's audio, already read, mixed down and resampled into
  memory before the clock starts: the ceiling that tokenize approaches when reading is hidden behind the model.
- reference loop: what users write with the original package: for each file, soundfile reads it, audiotools'
  `AudioSignal` mixes it down and resamples it (julius), then `model.encode(model.preprocess(x, sr))` under
  no_grad; the codes are kept in a list.
`--dtype` is ours' (tokenize and model only; the reference stays float32): "mixed" runs our float32 model under
`torch.set_float32_matmul_precision("medium")`, as `dac-codec tokenize --dtype mixed` does.
The tokenize run's codes are checked against the model-only codes (identical, on the CPU) before figures are printed.
Targets on a 2-core CPU: tokenize >= 0.9x the model alone, >= 2.5x the reference loop. No timing is asserted
anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_speed import PRESET_INFO, SEED, spawn  # this folder, the script's own

FORMATS = (("wav", "PCM_16"), ("flac", "PCM_16"), ("mp3", "MPEG_LAYER_III"), ("ogg", "VORBIS"))
RATES = (16000, 22050, 44100, 48000)


# ----------------------------------------------------------------------------------------------------------------
# The corpus
def corpus_lengths(files: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(math.log(0.5), math.log(20.0), files))
    lengths[rng.choice(files, max(1, files // 50), replace=False)] = rng.uniform(60, 240, max(1, files // 50))
    lengths[0], lengths[1 % files] = 300.0, 0.5
    return [round(float(x), 3) for x in lengths]


def make_corpus(folder: Path, files: int, seed: int) -> float:
    """Writes the corpus into `folder` (once); returns its audio seconds."""
    import soundfile

    from dac_codec.audio_io import write_samples

    lengths = corpus_lengths(files, seed)
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()) == {"files": files, "seed": seed}:
        return sum(lengths)
    folder.mkdir(parents=True, exist_ok=True)
    for i, seconds in enumerate(lengths):
        (suffix, subtype), rate, channels = FORMATS[i % 4], RATES[(i // 4) % 4], 2 if i % 3 == 0 else 1
        rng = np.random.default_rng(seed * 100_003 + i)
        t = np.arange(int(seconds * rate)) / rate
        f0 = rng.uniform(80, 400)
        signal = np.stack([0.3 * np.sin(2 * np.pi * (f0 * (1 + c * 0.01) * t + rng.uniform(50, 400) * t ** 2 / 60))
                           + 0.1 * np.sin(2 * np.pi * 1.5 * f0 * t) + 0.03 * rng.standard_normal(t.shape)
                           for c in range(channels)], axis=1)
        with soundfile.SoundFile(_path(folder, i, suffix), "w", rate, channels, subtype=subtype) as file:
            write_samples(file, signal.astype(np.float32))
    done.write_text(json.dumps({"files": files, "seed": seed}))
    return sum(lengths)


def _path(folder: Path, i: int, suffix: str) -> Path:
    path = folder / f"part{i // 50:02d}" / f"clip{i:04d}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("clip*.*"))


# ----------------------------------------------------------------------------------------------------------------
# Workers (fresh processes)
def prepare(spec: dict) -> dict:
    """The reference checkpoint and our folder with the same weights."""
    from dac_codec.tools.convert import write_model_folder
    from dac_codec.tools.loading import model_from_original
    from dac_codec.tools.random_weights import reference_model

    folder = Path(spec["folder"])
    reference_model(spec["preset"], SEED).save(str(folder / "reference.pth"), package=False)
    write_model_folder(model_from_original(str(folder / "reference.pth")), folder / "ours")
    return {}


def run_tokenize(spec: dict) -> dict:
    from dac_codec.tools import corpus

    start = time.perf_counter()
    summary = corpus.tokenize(corpus.Corpus.open(spec["corpus"]), spec["output"], spec["model"], progress=False,
                              dtype=spec["dtype"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokenized": summary.tokenized, "failed": len(summary.failed)}


def run_model_only(spec: dict) -> dict:
    import torch

    from dac_codec import DacModel
    from dac_codec.tools.corpus.sources import Corpus, InputReader
    from dac_codec.tools.loading import resolve_device

    model = DacModel.from_pretrained(spec["model"]).to(*resolve_device("cpu", spec["dtype"]))
    rate = model.sampling_rate
    reader = InputReader(Corpus.open(spec["corpus"]), rate)
    signals = [reader.read(str(path)).samples for path in audio_files(Path(spec["corpus"]))]
    model.encode(signals[1], rate)  # warm-up on the 0.5 s file
    start = time.perf_counter()
    codes = [model.encode(x, rate).codes for x in signals]
    seconds = time.perf_counter() - start
    torch.save([c[0].to(torch.int16) for c in codes], spec["codes"])
    return {"seconds": seconds}


def run_reference(spec: dict) -> dict:
    import soundfile
    import torch
    from audiotools import AudioSignal

    model = _reference(spec)
    files = audio_files(Path(spec["corpus"]))[:: spec["every"]]
    audio_seconds = sum(soundfile.info(p).duration for p in files)
    start = time.perf_counter()
    codes = []
    with torch.no_grad():
        for path in files:
            data, rate = soundfile.read(path, dtype="float32", always_2d=True)
            signal = AudioSignal(torch.from_numpy(data.T)[None], rate).to_mono().resample(model.sample_rate)
            codes.append(model.encode(model.preprocess(signal.audio_data, model.sample_rate))[1])
    return {"seconds": time.perf_counter() - start, "audio_seconds": audio_seconds, "files": len(files)}


def _reference(spec: dict):
    import dac
    import torch

    checkpoint = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    model = dac.model.DAC(**checkpoint["metadata"]["kwargs"])
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval()


WORKERS = {"--prepare": prepare, "--tokenize": run_tokenize, "--model-only": run_model_only,
           "--reference": run_reference}


# ----------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="44khz", choices=sorted(PRESET_INFO), help="the model (random weights)")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", default=None, help="where the corpus is made and kept (default: in /tmp)")
    parser.add_argument("--reference-every", type=int, default=1, help="time the reference on every k-th file")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "mixed"], help="ours' dtype")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    folder = Path(args.corpus or tempfile.gettempdir()) / f"dac-bench-corpus-{args.files}-{args.seed}"
    audio_seconds = make_corpus(folder, args.files, args.seed)
    print(f"corpus: {args.files} files, {audio_seconds / 60:.1f} min of audio, in {folder}", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        script, home = str(Path(__file__).resolve()), work / "hf"

        def run(mode: str, **spec) -> dict:
            result = spawn(script, mode, {"preset": args.preset, **spec}, home)
            if "error" in result:
                raise SystemExit(f"{mode}: {result['error']}")
            return result

        run("prepare", folder=str(work))
        model = str(work / "ours")
        timings = {"model only": run("model-only", corpus=str(folder), model=model, codes=str(work / "codes.pt"),
                                     dtype=args.dtype)}
        tokenized = run("tokenize", corpus=str(folder), model=model, output=str(work / "tokens"), dtype=args.dtype)
        timings["tokenize"] = tokenized
        if not args.skip_reference:
            timings["reference loop"] = run("reference", corpus=str(folder), checkpoint=str(work / "reference.pth"),
                                            every=args.reference_every)
        same = same_codes(work / "tokens", work / "codes.pt")
    rates = {name: (t.get("audio_seconds", audio_seconds) / t["seconds"]) for name, t in timings.items()}
    print(f"\npreset {args.preset}, CPU, torch default threads, ours in {args.dtype}; codes of tokenize == model "
          f"only: {same}")
    print(f"{'':16}{'wall s':>10}{'audio h / wall h':>18}{'tokenize is':>14}")
    for name, t in timings.items():
        ratio = rates["tokenize"] / rates[name]
        print(f"{name:16}{t['seconds']:10.1f}{rates[name]:18.1f}{'' if name == 'tokenize' else f'{ratio:.2f}x':>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "files": args.files, "dtype": args.dtype,
                                               "audio_seconds": audio_seconds, "timings": timings,
                                               "audio_hours_per_hour": rates, "same_codes": same}, indent=2))


def same_codes(tokens: Path, codes: Path) -> bool:
    import pyarrow.parquet as pq
    import torch

    expected = torch.load(codes, weights_only=True)
    rows = [r for p in sorted(tokens.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return len(rows) == len(expected) and all(
        r["codes"] is not None and torch.equal(torch.tensor(r["codes"], dtype=torch.int16), e)
        for r, e in zip(rows, expected))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in WORKERS:
        print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
    else:
        main()
