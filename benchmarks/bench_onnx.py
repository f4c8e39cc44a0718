"""ONNX Runtime (CPU) next to our PyTorch path and the reference package, same weights and input, in one run; and the
reduced-precision variants' agreement with float32.

    .venv/bin/python benchmarks/bench_onnx.py                              # 44khz, 10 s and 1 min, 3 repeats
    .venv/bin/python benchmarks/bench_onnx.py --seconds 2 --repeats 1      # quick check

What is measured (bench_speed.py's set-up: a full-size model with seeded random weights, its chirp + chord + noise
input, our codes of it as the decode input; every timed call in a fresh process after a 1 s warm-up):
- ours, reference: as bench_speed.py measures them (its worker).
- onnx, onnx+int8, onnx+fp16: `dac-codec export`'s encoder_model.onnx / decoder_model.onnx (and their _int8 / _fp16
  variants) in one ONNX Runtime InferenceSession (CPUExecutionProvider, its default threads), the whole signal in one
  call.
- onnx-stream: encoder_step.onnx / decoder_step.onnx driven by `StepStream` over the whole signal, block by block;
  the table adds the time per block and the real-time factor (audio seconds per second).
Agreement: on 10 s of speech (samples/speech.flac, looped) and of the music-like test signal, each variant's codes
against float32 ONNX Runtime's and against ours, and the SNR of its decoded audio against float32 decoding of the
same codes. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_speed
from bench_speed import PRESET_INFO, WARMUP_SECONDS, command_line, fmt, num_samples, spawn

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("ours", "reference", "onnx", "onnx+int8", "onnx+fp16", "onnx-stream")
SUFFIX = {"onnx": "", "onnx+int8": "_int8", "onnx+fp16": "_fp16"}


def export(spec: dict) -> dict:
    """Exports our folder's model to spec["folder"]/onnx_export and measures the variants' agreement."""
    import numpy as np
    import onnxruntime
    import torch

    from dac_codec import DacModel
    from dac_codec.export import export_onnx

    folder = Path(spec["folder"])
    model = DacModel.from_pretrained(folder / "ours")
    start = time.perf_counter()
    graphs = export_onnx(model, folder / "onnx_export", int8=True)
    result = {"export_s": time.perf_counter() - start}
    rate = model.sampling_rate
    n = num_samples(spec["preset"], 10.0)
    signals = {"speech": bench_speed.speech_audio(rate, n), "music": bench_speed.make_audio(rate, n)}
    sessions = {(name, suffix): onnxruntime.InferenceSession(str(graphs / f"{name}{suffix}.onnx"))
                for name in ("encoder_model", "decoder_model") for suffix in SUFFIX.values()}

    def run(name, suffix, x):
        session = sessions[(name, suffix)]
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    for signal, audio in signals.items():
        with torch.no_grad():
            ours = model.encode(audio, rate, chunk_size_in_sec=0).codes.numpy()
        base = run("encoder_model", "", audio.numpy())
        reference_audio = run("decoder_model", "", base)
        for variant, suffix in SUFFIX.items():
            codes = run("encoder_model", suffix, audio.numpy())
            decoded = run("decoder_model", suffix, base)
            error = np.sum((decoded - reference_audio) ** 2)
            result[f"{signal} {variant}"] = {
                "codes_equal_fp32": float((codes == base).mean()), "codes_equal_ours": float((codes == ours).mean()),
                "codes_differing_ours": int((codes != ours).sum()), "codes": int(codes.size),
                "snr_db": float(10 * np.log10(np.sum(reference_audio**2) / error)) if error else float("inf")}
    result["onnxruntime"] = onnxruntime.__version__
    return result


def worker(spec: dict) -> dict:
    """One ONNX Runtime measurement in this (fresh) process: load, build the input, warm up on 1 s, time one call."""
    import numpy as np
    import onnxruntime
    import torch

    from dac_codec.export.onnx import StepStream

    folder = Path(spec["folder"])
    graphs = folder / "onnx_export" / "onnx"
    config = json.loads((folder / "onnx_export" / "config.json").read_text())
    preset, seconds, op, impl = spec["preset"], spec["seconds"], spec["op"], spec["impl"]
    sample_rate = PRESET_INFO[preset]["sample_rate"]
    result = {}
    try:
        if op == "encode":
            full = bench_speed.make_audio(sample_rate, num_samples(preset, seconds)).numpy()
            warm = full[..., : num_samples(preset, WARMUP_SECONDS)].copy()
        else:
            full = torch.load(folder / f"codes_{seconds:g}s.pt", weights_only=True).numpy()
            warm = full[..., : num_samples(preset, WARMUP_SECONDS) // PRESET_INFO[preset]["hop"]].copy()
        graph = "encoder" if op == "encode" else "decoder"
        if impl == "onnx-stream":
            session = onnxruntime.InferenceSession(str(graphs / f"{graph}_step.onnx"))
            names = [i.name for i in session.get_inputs()]
            step = lambda *arrays: session.run(None, dict(zip(names, arrays)))

            def call(x):
                stream = StepStream(step, config["streaming"][graph], 1)
                return np.concatenate([stream.feed(x), stream.finish()], axis=-1), stream
        else:
            session = onnxruntime.InferenceSession(str(graphs / f"{graph}_model{SUFFIX[impl]}.onnx"))
            call = lambda x: (session.run(None, {session.get_inputs()[0].name: x})[0], None)
        call(warm)
        start = time.perf_counter()
        output, stream = call(full)
        result["time_s"] = time.perf_counter() - start
        result["output_shape"] = list(output.shape)
        if stream is not None:
            calls = int(stream.position[0])
            result["calls"] = calls
            result["block_ms"] = 1000 * result["time_s"] / calls
    except Exception as error:  # reported in the table; the other measurements go on
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="44khz", choices=list(PRESET_INFO))
    parser.add_argument("--seconds", nargs="+", type=float, default=[10.0, 60.0])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per point (median)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args()

    preset, temp = args.preset, Path(tempfile.mkdtemp(prefix="dac_bench_onnx_"))
    folder, home = temp / preset, temp / "hf_home"
    points = [(s, o, i) for s in args.seconds for o in bench_speed.OPS for i in args.impls]
    runs = {point: [] for point in points}
    load_start = os.getloadavg()[0]
    try:
        print(f"preparing {preset} (weights, converted folders, codes) ...", file=sys.stderr, flush=True)
        checks = spawn(bench_speed.__file__, "prepare", {"preset": preset, "folder": str(folder),
                                                         "seconds": args.seconds}, home)
        if "error" in checks:
            sys.exit(f"preparing failed: {checks['error']}")
        print("exporting and measuring the variants' agreement ...", file=sys.stderr, flush=True)
        agreement = spawn(__file__, "export", {"preset": preset, "folder": str(folder)}, home)
        if "error" in agreement:
            sys.exit(f"exporting failed: {agreement['error']}")
        print(f"agreement: {json.dumps(agreement)}", file=sys.stderr, flush=True)
        for repeat in range(args.repeats):  # interleaved, so that drift in machine load hits every impl alike
            for seconds, op, impl in points:
                spec = dict(preset=preset, seconds=seconds, op=op, impl=impl, dtype="float32", threads=None,
                            folder=str(folder))
                script = bench_speed.__file__ if impl in ("ours", "reference") else __file__
                result = spawn(script, "worker", spec, home, args.timeout)
                runs[(seconds, op, impl)].append(result)
                shown = result.get("error") or f"{result['time_s']:.2f} s"
                print(f"[{repeat + 1}/{args.repeats}] {seconds:g}s {op} {impl}: {shown}", file=sys.stderr, flush=True)
            if args.json:  # every round's results, so that a cut run keeps what it measured
                Path(args.json).write_text(json.dumps({"command": command_line(), "checks": checks,
                                                       "agreement": agreement, "rounds_done": repeat + 1,
                                                       "runs": [[*point, results] for point, results in
                                                                runs.items()]}, indent=1))
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    rows = []
    for seconds, op, impl in points:
        results = runs[(seconds, op, impl)]
        times = [r["time_s"] for r in results if "time_s" in r]
        errors = [r["error"] for r in results if "error" in r]
        median = statistics.median(times) if times and not errors else None
        blocks = [r["block_ms"] for r in results if "block_ms" in r]
        rows.append(dict(seconds=seconds, op=op, impl=impl, times_s=times, median_s=median,
                         error=errors[0] if errors else None,
                         audio_seconds=num_samples(preset, seconds) / PRESET_INFO[preset]["sample_rate"],
                         block_ms=statistics.median(blocks) if blocks else None))
    for row in rows:
        base = next((r["median_s"] for r in rows if r["impl"] == "reference" and r["seconds"] == row["seconds"]
                     and r["op"] == row["op"]), None)
        ours = next((r["median_s"] for r in rows if r["impl"] == "ours" and r["seconds"] == row["seconds"]
                     and r["op"] == row["op"]), None)
        row["vs_reference"] = base / row["median_s"] if base and row["median_s"] else None
        row["vs_ours"] = ours / row["median_s"] if ours and row["median_s"] else None

    print(f"\n{preset}, float32 audio; ONNX Runtime {agreement.get('onnxruntime', '')}")
    print("\n| audio | op | impl | median time (s) | vs reference | vs ours | real time | per block (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cell = fmt(r["median_s"]) if not r["error"] else f"error: {r['error']}"
        realtime = r["audio_seconds"] / r["median_s"] if r["median_s"] else None
        print(f"| {r['seconds']:g} s | {r['op']} | {r['impl']} | {cell} | {fmt(r['vs_reference'], 2, 'x')} | "
              f"{fmt(r['vs_ours'], 2, 'x')} | {fmt(realtime, 1, 'x')} | {fmt(r['block_ms'], 1)} |")
    print("\n| signal | variant | codes = fp32 ONNX | codes = ours (differing / all) | decoded SNR vs fp32 (dB) |")
    print("|---|---|---|---|---|")
    for key, value in agreement.items():
        if isinstance(value, dict):
            signal, variant = key.split()
            print(f"| {signal} | {variant} | {100 * value['codes_equal_fp32']:.2f}% | "
                  f"{100 * value['codes_equal_ours']:.2f}% ({value['codes_differing_ours']} / {value['codes']}) | "
                  f"{value['snr_db']:.1f} |")
    print(f"\nexport took {agreement['export_s']:.0f} s; median of {args.repeats} fresh-process runs; "
          f"{os.cpu_count()} CPUs; load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end; torch "
          f"{checks.get('torch')}; same codes from ours, the reference and transformers on 1 s: "
          f"{'yes' if checks.get('same_codes') else 'NO'}")
    print(f"command: {command_line()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command_line(), "checks": checks, "agreement": agreement,
                                               "rounds_done": args.repeats, "rows": rows}, indent=1))


if __name__ == "__main__":
    modes = {"--worker": worker, "--export": export}
    if len(sys.argv) == 3 and sys.argv[1] in modes:
        print(json.dumps(modes[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
    else:
        main()
