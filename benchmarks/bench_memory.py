"""Time and peak memory of our DAC encode / decode against chunk size and audio length, next to the reference.

    .venv/bin/python benchmarks/bench_memory.py                       # 16khz, 30 s and 180 s: ~20 minutes on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --seconds 10 --encode-chunks 0 1 --decode-chunks 0 64   # quick
    .venv/bin/python benchmarks/bench_memory.py --preset 44khz --reference-whole-max-seconds 60 --json mem.json

For each audio length (default 30 s and 180 s of the 16khz preset), each point in a fresh process (the workers of
bench_speed.py: load the model, build the input, one untimed warm-up call on 1 s, one timed call):
- ours: `encode(x, sample_rate=sr, chunk_size_in_sec=c)` for c in --encode-chunks (seconds, 0 = whole signal) and
  `decode(s=codes, chunk_size=c)` for c in --decode-chunks (frames, 0 = whole signal); the model's default chunk
  sizes (config.json of the converted folder) are marked "(default)", and run as well if not in the lists.
- reference whole signal: `encode(preprocess(x, sr))` / `decode(quantizer.from_codes(codes)[0])`.
- reference chunked: its own `compress(AudioSignal(x, sr), win_duration=--reference-win)` (windows without
  padding, plus loudness normalisation) and `decompress` of the file that compress wrote. They are slow (on this
  2-core machine about 1 s and 1.7 s per second of 16 kHz audio with 1 s windows), so by default they run on up to
  30 s of audio only (--reference-chunked-max-seconds 0 lifts the cap; --reference-whole-max-seconds caps the
  reference's whole-signal runs, which need ~4.4 GB (encode) and ~6.8 GB (decode) for 180 s at 16 kHz).

The models have the same random weights (see bench_speed.py). The audio is generated straight into one float32
tensor. Decode input: random codes with a fixed seed (decode work and memory do not depend on the code values), for
ours and the reference's whole-signal decode; decompress takes the reference's own compress output.

Columns: wall time of the one call; RSS after load (weights and input resident, before any call); peak RSS of the
process (`ru_maxrss`: load, warm-up and call); peak during the call (VmHWM reset just before the timed call). No
assertion is made; the line under the table gives our 3-minute default-settings peaks next to the 1.2 GB target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import bench_speed  # this folder, the script's own: shared helpers and the worker; imports no torch
from bench_speed import fmt

TARGET_MB = 1200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="16khz", choices=list(bench_speed.PRESET_INFO))
    parser.add_argument("--seconds", nargs="+", type=float, default=[30.0, 180.0], help="audio lengths")
    parser.add_argument("--encode-chunks", nargs="+", type=float, default=[0, 1, 5, 20],
                        help="our chunk_size_in_sec values; 0 = whole signal")
    parser.add_argument("--decode-chunks", nargs="+", type=int, default=[0, 64, 256, 1024],
                        help="our decode chunk_size values (frames); 0 = whole signal")
    parser.add_argument("--reference-win", type=float, default=1.0,
                        help="win_duration of the reference's compress (its default, 1 s)")
    parser.add_argument("--reference-whole-max-seconds", type=float, default=None,
                        help="skip the reference's whole-signal runs above this length (memory / time cap)")
    parser.add_argument("--reference-chunked-max-seconds", type=float, default=30.0,
                        help="skip the reference's compress / decompress above this length (default 30: they take "
                             "~1 s and ~1.7 s per second of 16 kHz audio on 2 cores); 0 = no cap")
    parser.add_argument("--no-reference", action="store_true", help="only our model")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a worker is given up")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args()

    preset = args.preset
    load_start = os.getloadavg()[0]
    temp = Path(tempfile.mkdtemp(prefix="dac_bench_memory_"))
    folder, home = temp / preset, temp / "hf_home"
    rows = []
    try:
        print(f"preparing {preset} (weights, converted folders, codes) ...", file=sys.stderr, flush=True)
        check = bench_speed.spawn(bench_speed.__file__, "prepare", dict(
            preset=preset, folder=str(folder), seconds=args.seconds, codes="random"), home)
        if "error" in check:
            sys.exit(f"preparing {preset} failed: {check['error']}")
        config = json.loads((folder / "ours" / "config.json").read_text())
        defaults = {"encode": config["encoding_chunk_size_in_sec"] or 0, "decode": config["decoding_chunk_size"] or 0}
        chunks = {"encode": list(args.encode_chunks), "decode": list(args.decode_chunks)}
        for op in chunks:
            if defaults[op] not in chunks[op]:
                chunks[op].append(defaults[op])

        for seconds in args.seconds:
            base = dict(preset=preset, seconds=seconds, dtype="float32", threads=args.threads, folder=str(folder))
            dac_file = str(temp / f"compress_{seconds:g}s.dac")
            points = [(dict(base, impl="ours", op=op, chunk=chunk), chunk) for op in ("encode", "decode")
                      for chunk in chunks[op]]
            if not args.no_reference:
                whole_ok = args.reference_whole_max_seconds is None or seconds <= args.reference_whole_max_seconds
                if whole_ok:
                    points += [(dict(base, impl="reference", op=op), "whole") for op in ("encode", "decode")]
                chunked_ok = not args.reference_chunked_max_seconds or seconds <= args.reference_chunked_max_seconds
                points += [] if not chunked_ok else [
                    (dict(base, impl="reference-chunked", op="encode", win_duration=args.reference_win,
                          save_dac=dac_file), f"compress, win {args.reference_win:g} s"),
                    (dict(base, impl="reference-chunked", op="decode", load_dac=dac_file),
                     "decompress of that file"),
                ]
            for spec, chunk in points:
                if spec.get("load_dac") and not Path(spec["load_dac"]).exists():
                    result = {"error": "no file from the compress run"}
                else:
                    result = bench_speed.spawn(bench_speed.__file__, "worker", spec, home, args.timeout)
                label = chunk
                if spec["impl"] == "ours":
                    unit = " s" if spec["op"] == "encode" else " frames"
                    label = "0 (whole)" if chunk == 0 else f"{chunk:g}{unit}"
                    label += " (default)" if chunk == defaults[spec["op"]] else ""
                rows.append(dict(seconds=seconds, impl=spec["impl"], op=spec["op"], chunk=label,
                                 chunk_value=spec.get("chunk"), default=spec["impl"] == "ours" and chunk ==
                                 defaults[spec["op"]], **result))
                shown = result.get("error") or f"{result['time_s']:.2f} s, peak {result['peak_rss_mb']:.0f} MB"
                print(f"{seconds:g}s {spec['impl']} {spec['op']} {label}: {shown}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    print(f"\n{preset}, float32, one fresh process per row\n")
    print("| audio | impl | op | chunk | time (s) | x real time | RSS after load (MB) | peak RSS (MB) | "
          "peak during call (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        time_cell = fmt(r.get("time_s")) if "error" not in r else f"error: {r['error']}"
        speed = fmt(r["seconds"] / r["time_s"], 1, "x") if "time_s" in r else "—"
        print(f"| {r['seconds']:g} s | {r['impl']} | {r['op']} | {r['chunk']} | {time_cell} | {speed} | "
              f"{fmt(r.get('rss_loaded_mb'), 0)} | {fmt(r.get('peak_rss_mb'), 0)} | {fmt(r.get('call_peak_mb'), 0)} |")
    longest = max(args.seconds)
    for op in ("encode", "decode"):
        row = next((r for r in rows if r["impl"] == "ours" and r["op"] == op and r["default"]
                    and r["seconds"] == longest), None)
        if row and "peak_rss_mb" in row and "error" not in row:
            print(f"\nours, {longest:g} s, {op} with default settings ({row['chunk']}): peak RSS "
                  f"{row['peak_rss_mb']:.0f} MB (target: under {TARGET_MB} MB)", end="")
    threads = next((r["threads"] for r in rows if "threads" in r), None)
    print(f"\n\n{threads} torch threads; {os.cpu_count()} CPUs; load average {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; torch {check.get('torch')}; our model code (sha256 of the folder's .py "
          f"files) {check.get('model_code_sha256')}")
    print(f"command: {bench_speed.command_line()}")
    if args.json:
        meta = dict(command=bench_speed.command_line(), preset=preset, threads=threads, cpus=os.cpu_count(),
                    load_average=[load_start, os.getloadavg()[0]], target_mb=TARGET_MB)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
