"""GPU speed and reduced-precision accuracy: our encode / decode against the reference package on the same GPU.

    python benchmarks/bench_cuda.py --seconds 10 600 --json out.json

Same weights: a full-size 44.1 kHz reference model with a fixed seed and perturbed alphas, biases and weight-norm
gains (`scripts/random_weights.py`), saved as a release checkpoint and converted to ours. Input: bench_speed's
test signal. Decode input: our fp32 codes of that signal.

Measured per length: ours in fp32 (torch's defaults: cuDNN convolutions in TF32), bf16 and fp16 (`model.to(dtype)`),
each through the public API (`encode(x, sample_rate=...)`, `decode(s=codes)`, default chunk sizes: batches of
windows); the reference in fp32 (`encode(preprocess(x))`, `decode(quantizer.from_codes(codes))`, whole signal, same
TF32 defaults). Times are the median of --repeats calls after a warm-up call on the same length, with the device
synchronised around each call; peak memory is torch's max_memory_allocated during the calls. Accuracy, against ours
in true fp32 (TF32 off): the share of equal codes, of the first codebook too, and the SNR of audio decoded from the
same codes. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import PRESET_INFO, make_audio, num_samples  # this folder: the script's own

from dac_codec import DacConfig
from dac_codec.tools.loading import model_from_original
from dac_codec.tools.random_weights import random_model, reference_model

ROOT = Path(__file__).resolve().parents[1]

PRESET = "44khz"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def reference_or_none():
    """The perturbed reference model, or None where the reference package is not installed."""
    try:
        return reference_model(PRESET)
    except ImportError as error:
        print(f"reference package not importable ({error}); reference rows left out", file=sys.stderr)
        return None


def timed(run, device, repeats):
    """(median seconds, peak bytes, last output) of `repeats` calls after one warm-up call."""
    run()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return statistics.median(times), peak, output


def snr_db(signal: torch.Tensor, estimate: torch.Tensor) -> float:
    signal, estimate = signal.double().cpu(), estimate.double().cpu()
    return (10 * torch.log10(signal.pow(2).sum() / (estimate - signal).pow(2).sum())).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", nargs="+", type=float, default=[10.0, 600.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sample_rate = PRESET_INFO[PRESET]["sample_rate"]

    reference = None if args.no_reference else reference_or_none()
    with tempfile.TemporaryDirectory() as temp:
        if reference is not None:
            reference.save(f"{temp}/weights.pth", package=False)
            ours = model_from_original(f"{temp}/weights.pth")
        else:
            ours = random_model(DacConfig.from_preset(PRESET))
    ours = ours.to(device)
    reference = reference.to(device) if reference is not None else None

    rows = []
    for seconds in args.seconds:
        audio = make_audio(sample_rate, num_samples(PRESET, seconds)).to(device)
        # Accuracy baseline: ours in true fp32.
        torch.backends.cudnn.allow_tf32 = False
        exact_codes = ours.encode(audio, sample_rate=sample_rate).codes
        exact_audio = ours.decode(s=exact_codes)
        torch.backends.cudnn.allow_tf32 = True
        codes = exact_codes
        for name in args.dtypes:
            model = ours if name == "float32" else copy.deepcopy(ours).to(DTYPES[name])
            x = audio.to(DTYPES[name])
            for op in ("encode", "decode"):
                run = (lambda model=model, x=x: model.encode(x, sample_rate=sample_rate).codes) if op == "encode" \
                    else (lambda model=model, codes=codes: model.decode(s=codes))
                try:
                    seconds_taken, peak, output = timed(run, device, args.repeats)
                except torch.OutOfMemoryError:
                    rows.append(dict(seconds=seconds, op=op, impl="ours", dtype=name, error="out of memory"))
                    torch.cuda.empty_cache()
                    continue
                row = dict(seconds=seconds, op=op, impl="ours", dtype=name, time_s=seconds_taken, peak_bytes=peak)
                if op == "encode":
                    row["codes_equal"] = (output == exact_codes).float().mean().item()
                    row["first_codebook_equal"] = (output[:, 0] == exact_codes[:, 0]).float().mean().item()
                else:
                    row["snr_db"] = snr_db(exact_audio, output)
                rows.append(row)
                del output
            model = x = None  # frees the half-precision copy
            torch.cuda.empty_cache() if device.type == "cuda" else None
        if reference is not None:
            with torch.no_grad():
                for op in ("encode", "decode"):
                    run = (lambda audio=audio: reference.encode(reference.preprocess(audio, sample_rate))[1]) \
                        if op == "encode" else (lambda codes=codes: reference.decode(reference.quantizer.from_codes(
                            codes)[0]))
                    try:
                        seconds_taken, peak, output = timed(run, device, args.repeats)
                    except torch.OutOfMemoryError:
                        rows.append(dict(seconds=seconds, op=op, impl="reference", dtype="float32",
                                         error="out of memory"))
                        torch.cuda.empty_cache()
                        continue
                    row = dict(seconds=seconds, op=op, impl="reference", dtype="float32", time_s=seconds_taken,
                               peak_bytes=peak)
                    if op == "encode":
                        row["codes_equal"] = (output == exact_codes).float().mean().item()
                        row["first_codebook_equal"] = (output[:, 0] == exact_codes[:, 0]).float().mean().item()
                    else:
                        row["snr_db"] = snr_db(exact_audio, output[..., : exact_audio.shape[-1]])
                    rows.append(row)
                    del output
        audio = exact_audio = None
        torch.cuda.empty_cache() if device.type == "cuda" else None

    for row in rows:
        base = next((r.get("time_s") for r in rows if r["impl"] == "reference" and r["op"] == row["op"]
                     and r["seconds"] == row["seconds"]), None)
        row["speedup_vs_reference"] = base / row["time_s"] if base and row.get("time_s") else None
        row["realtime_factor"] = row["seconds"] / row["time_s"] if row.get("time_s") else None

    def cell(value, digits, suffix=""):
        return "—" if value is None else f"{value:.{digits}f}{suffix}"

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{PRESET}, {name}, torch {torch.__version__}, median of {args.repeats} after a warm-up call")
    print("| audio | op | impl | dtype | time (s) | vs reference | x real time | peak GPU memory (GB) "
          "| codes equal to fp32 | first codebook | SNR vs fp32 (dB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        time_cell = cell(r.get("time_s"), 3) if "error" not in r else r["error"]
        peak = r.get("peak_bytes")
        print(f"| {r['seconds']:g} s | {r['op']} | {r['impl']} | {r['dtype']} | {time_cell} | "
              f"{cell(r['speedup_vs_reference'], 1, 'x')} | {cell(r['realtime_factor'], 0)} | "
              f"{cell(peak / 1e9 if peak else None, 2)} | "
              f"{cell(100 * r['codes_equal'] if 'codes_equal' in r else None, 2, '%')} | "
              f"{cell(100 * r['first_codebook_equal'] if 'first_codebook_equal' in r else None, 2, '%')} | "
              f"{cell(r.get('snr_db'), 1)} |")
    print(f"command: python benchmarks/bench_cuda.py {' '.join(sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
