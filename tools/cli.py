"""The `dac-codec` command line: it parses arguments, loops over files and prints; the work is the library's
(`compress` / `decompress`, the corpus package, fine-tuning).

    dac-codec encode INPUT... --output DIR [--model NAME] [--n-quantizers N] [--device D] [--dtype T]
    dac-codec decode INPUT... --output DIR [--model NAME] [--device D] [--dtype T]
    dac-codec info FILE.dac
    dac-codec tokenize INPUT --output DIR [...]          dac-codec detokenize DIR --output AUDIO_DIR [...]
    dac-codec finetune --model NAME --data DIR --output RUN [...]
    dac-codec evaluate INPUT --model NAME [--model NAME2 ...] [--n-quantizers 1,2,4,all] --output DIR
    dac-codec export --model NAME --output DIR

An INPUT is a file or a folder, walked recursively; each file becomes DIR/<its path relative to the folder, or its
name> with the suffix `.dac` (encode) or `.wav` (decode). Two inputs that would write one output (a.wav and a.flac,
the same path under two folders, names equal up to case) are refused before any work. Files stream from disk in
blocks, so memory stays flat whatever their length. Encoding is the original's `compress` in one padded pass
(loudness normalised to -16 LUFS unless --no-normalize, every channel encoded on its own); decoding restores each
channel's loudness, the file's rate and its length. A file records the model that made it (its name, architecture and
weights' hash), and decoding refuses another. Existing outputs are skipped unless --overwrite; a file that cannot be
done is reported with its path and the reason, the others are done, and the command exits with status 1. A mistake
in the command itself is one line on stderr, never a traceback; Ctrl-C or SIGTERM stops with one line.

This module imports torch and transformers only for the commands that need them: `--help` and `info` answer at once.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

import soundfile

from .command import ArgumentParser, run_command
from .dac_file import read_fields
from .files import AUDIO_SUFFIXES, find_inputs, plan_outputs, write_atomically

DEFAULT_MODEL = "descript/dac_44khz"
DTYPE_NAMES = ("float32", "bfloat16", "float16", "mixed")
DTYPE_HELP = "mixed: float32, with bf16 products where they decide no codes (CPUs with AMX; 99%% of codes)"
def _seconds(path: Path) -> float:
    """The duration of an audio file, 0 where it cannot be read (it is reported when its turn comes)."""
    try:
        info = soundfile.info(path)
        return info.frames / info.samplerate
    except (soundfile.LibsndfileError, RuntimeError, ZeroDivisionError):
        return 0.0


def info(path: str) -> str:
    """What a `.dac` file holds, a line a field (reads the file alone: no model, no torch)."""
    dac = read_fields(path)
    items, n_codebooks, frames = dac["codes"].shape
    recorded = dac["model"] or {}
    lines = [f"file: {path}", f"model: {recorded.get('name', 'not recorded (written by the original)')}",
             f"codebooks: {n_codebooks}", f"frames: {frames}",
             f"duration: {dac['original_length'] / dac['sample_rate']:.3f} s",
             f"sample rate: {dac['sample_rate']} Hz", f"channels: {dac['channels']}", f"signals: {items}",
             f"input loudness: {float(dac['input_db'][0]):.2f} LUFS", f"padded: {dac['padding']}",
             f"chunk length: {dac['chunk_length']} frames"]
    if recorded.get("weights_sha256"):
        lines.append(f"weights sha256: {recorded['weights_sha256']}")
    if {"sampling_rate", "hop_length", "codebook_size"} <= recorded.keys():
        frame_rate = recorded["sampling_rate"] / recorded["hop_length"]
        bits = frame_rate * n_codebooks * math.log2(recorded["codebook_size"])
        lines.append(f"bitrate: {bits / 1000:.2f} kbps ({frame_rate:.2f} frames a second)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Commands
def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog="dac-codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name in ("encode", "decode"):
        command = commands.add_parser(name, help=f"{name} files or folders")
        command.add_argument("inputs", nargs="+", metavar="INPUT")
        command.add_argument("--output", required=True, help="folder for the outputs (mirrors input folders)")
        command.add_argument("--model", default=None, help=f"folder, Hub id or original .pth (default {DEFAULT_MODEL}; "
                                                           "decode: the model the file names, if it names one)")
        command.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
        command.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help=DTYPE_HELP)
        command.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
        if name == "encode":
            command.add_argument("--n-quantizers", type=int, default=None, help="codebooks (bitrate); all by default")
            command.add_argument("--no-normalize", action="store_true", help="encode at the input's loudness")
    commands.add_parser("info", help="what a .dac file holds").add_argument("file")
    _add_corpus_commands(commands)
    _add_finetune_command(commands)
    _add_evaluate_command(commands)
    export = commands.add_parser(
        "export", help="the encoder and decoder as ONNX graphs, for ONNX Runtime and transformers.js",
        description="Writes DIR/onnx/encoder_model.onnx and decoder_model.onnx (dynamic batch and length) with their "
                    "_fp16 variants, the step graphs encoder_step.onnx and decoder_step.onnx (streams with explicit "
                    "state), and DIR/config.json as transformers.js reads it.")
    export.add_argument("--model", default=DEFAULT_MODEL, help=f"folder, Hub id or .pth (default {DEFAULT_MODEL})")
    export.add_argument("--output", required=True, metavar="DIR")
    export.add_argument("--block-frames", type=int, default=4, help="frames per call of the step graphs (default 4)")
    export.add_argument("--int8", action="store_true",
                        help="also the _int8 variants (dynamic quantization; slower than fp32 on CPU, see README)")
    args = parser.parse_args(argv)
    if args.command in ("tokenize", "detokenize"):
        return run_command(lambda: _corpus_command(args, argv))
    if args.command == "finetune":
        return run_command(lambda: _finetune_command(args))
    if args.command == "evaluate":
        return run_command(lambda: _evaluate_command(args))
    if args.command == "export":
        return run_command(lambda: _export_command(args))
    if args.command == "info":
        return run_command(lambda: print(info(args.file)) or 0)
    return run_command(lambda: _files_command(args))


def _files_command(args: argparse.Namespace) -> int:
    """`encode` or `decode`: plans every output before any work, then does each file, reporting the bad ones."""
    encoding = args.command == "encode"
    jobs = find_inputs(args.inputs, AUDIO_SUFFIXES if encoding else {".dac"})
    if not jobs:
        raise ValueError(f"no {'audio' if encoding else '.dac'} files in {' '.join(args.inputs)}")
    outputs = plan_outputs(jobs, Path(args.output), ".dac" if encoding else ".wav")
    from tqdm import tqdm

    from .command import first_line
    from .compress import TARGET_DB, compress, decompress
    from .loading import load_model, model_identity, resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    name = args.model or (None if encoding else _recorded_model(jobs[0][0])) or DEFAULT_MODEL
    model = load_model(name)
    identity = model_identity(model)  # of the weights as stored, before any cast
    model = model.to(device, dtype)
    if encoding:
        model.check_n_quantizers(args.n_quantizers)

    failed, done, skipped = [], 0, 0
    total = sum(_seconds(path) for path, _ in jobs) if encoding else None
    with tqdm(total=total, unit="s", unit_scale=True, desc=f"{args.command} (audio)") as bar:
        for index, ((path, _), output) in enumerate(zip(jobs, outputs)):
            bar.set_postfix({"file": f"{index + 1}/{len(jobs)}"})
            if output.exists() and not args.overwrite:
                skipped += 1
                bar.update(_seconds(path) if encoding else 0)
                continue
            try:
                if encoding:
                    dac = compress(model, path, args.n_quantizers, None if args.no_normalize else TARGET_DB,
                                   identity, bar.update)
                    write_atomically(output, dac.save)
                else:
                    decompress(model, path, output, identity, bar.update)
                done += 1
            except (ValueError, OSError) as error:  # one bad file is reported; the others are done
                failed.append(f"{path}: {first_line(error)}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{args.command}: {done} done, {skipped} skipped (exist; --overwrite redoes them), {len(failed)} failed",
          file=sys.stderr)
    return 1 if failed else 0


def _recorded_model(path: Path) -> Optional[str]:
    """The model a `.dac` file names, if it names one and can be read (else it is reported when its turn comes).

    Raises:
        ValueError: The file names its model by a relative path and records no weights to check it by (files of
            earlier versions): from another folder that path may be another model.
    """
    try:
        recorded = read_fields(path)["model"] or {}
    except (ValueError, OSError):
        return None
    name = recorded.get("name")
    if name and not recorded.get("weights_sha256") and Path(name).exists() and not Path(name).is_absolute():
        raise ValueError(f"{path} names its model by the relative path {name!r} and records no weights to check it "
                         "by; give the model with --model")
    return name


def _add_corpus_commands(commands) -> None:
    tokenize = commands.add_parser(
        "tokenize", help="a corpus to Parquet shards of codes (resumable)",
        description="Tokenizes every input of a folder of audio files (recursive), one audio file, a text file of "
                    "paths, or a Hugging Face dataset (a save_to_disk folder or a Hub id) into "
                    "DIR/part-NNNNN.parquet and DIR/manifest.json; rerun the same command to resume.")
    tokenize.add_argument("input", metavar="INPUT")
    tokenize.add_argument("--output", required=True, metavar="DIR")
    tokenize.add_argument("--model", default=DEFAULT_MODEL, help=f"folder, Hub id or .pth (default {DEFAULT_MODEL})")
    tokenize.add_argument("--n-quantizers", type=int, default=None, help="codebooks (bitrate); all by default")
    tokenize.add_argument("--engine", choices=["local", "ray"], default="local")
    tokenize.add_argument("--workers", type=int, default=None,
                          help="local: CPU encoder processes, the cores split between them (1); ray: encoder actors "
                               "(default: as many as fit, one a GPU or one a node)")
    tokenize.add_argument("--devices", default=None, help="e.g. cuda:0,cuda:1 (one encoder process each); "
                                                          "default cuda if available, else cpu")
    tokenize.add_argument("--readers", type=int, default=None, help="reader processes per encoder")
    tokenize.add_argument("--shard-size", type=int, default=None, metavar="FILES", help="inputs a shard (1000)")
    tokenize.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help=DTYPE_HELP)
    tokenize.add_argument("--audio-column", default="audio", help="datasets: the audio column")
    tokenize.add_argument("--id-column", default=None, help="datasets: the column of ids (default: row index)")
    tokenize.add_argument("--split", default=None, help="datasets: the split")
    tokenize.add_argument("--ray-address", default=None, help="ray: a cluster's address (default: start one)")
    detokenize = commands.add_parser("detokenize", help="rows of codes back to audio files")
    detokenize.add_argument("source", metavar="DIR", help="a folder of shards, or a Parquet file with a codes column")
    detokenize.add_argument("--output", required=True, metavar="AUDIO_DIR")
    detokenize.add_argument("--model", default=None, help="folder or Hub id (default: the one the manifest names)")
    detokenize.add_argument("--ids", nargs="+", default=None, help="only these rows")
    detokenize.add_argument("--device", default=None)
    detokenize.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help=DTYPE_HELP)
    detokenize.add_argument("--overwrite", action="store_true", help="redo outputs that exist")


def _corpus_command(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    from .corpus import Corpus, detokenize, tokenize

    if args.command == "tokenize":
        source = Corpus.open(args.input, args.audio_column, args.id_column, args.split)
        summary = tokenize(
            source, args.output, args.model, args.n_quantizers,
            devices=args.devices.split(",") if args.devices else None, workers=args.workers,
            readers=args.readers, shard_size=args.shard_size, dtype=args.dtype, engine=args.engine,
            ray_address=args.ray_address, command=["dac-codec", *(sys.argv[1:] if argv is None else argv)])
        done = (f"tokenize: {summary.tokenized} inputs tokenized, {len(summary.failed)} failed ({summary.shards_done} "
                f"shards done now, {summary.shards_skipped} already done)")
        if summary.redone:
            done += f"; {len(summary.redone)} shards redone ({summary.redone[0]})"
    else:
        summary = detokenize(args.source, args.output, args.model, args.ids, args.device, args.dtype,
                             args.overwrite)
        done = (f"detokenize: {summary.written} written, {summary.skipped} skipped (exist; --overwrite redoes "
                f"them), {summary.without_codes} rows without codes, {len(summary.failed)} failed")
    for id, why in summary.failed:
        print(f"failed: {id}: {why}", file=sys.stderr)
    print(done, file=sys.stderr)
    return 1 if summary.failed else 0


def _add_finetune_command(commands) -> None:
    finetune = commands.add_parser(
        "finetune", help="fine-tune DAC on a folder of audio (the original's objective), resumably",
        description="Fine-tunes a model on random excerpts of the audio files under --data with the original's "
                    "objective, discriminator and optimisers; writes OUTPUT/checkpoint.pt (rerun to resume) and "
                    "finally OUTPUT/model, a model folder. Real runs want a GPU.")
    finetune.add_argument("--model", required=True, help="folder or Hub id (ours or transformers'), or a .pth")
    finetune.add_argument("--data", required=True, help="folder of audio files, searched recursively")
    finetune.add_argument("--output", required=True, help="folder for checkpoint.pt and the final model/")
    finetune.add_argument("--steps", type=int, default=10000, help="training steps in all (a resumed run counts on)")
    finetune.add_argument("--batch-size", type=int, default=12)
    finetune.add_argument("--duration", type=float, default=0.38, help="seconds per excerpt (base.yml: 0.38)")
    finetune.add_argument("--lr", type=float, default=1e-4)
    finetune.add_argument("--quantizer-dropout", type=float, default=1.0, help="base.yml: 1.0")
    finetune.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    finetune.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    finetune.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="mixed on CUDA")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--val", default=None, metavar="DIR",
                          help="held-out audio: scored every --val-every steps (log.csv, tensorboard/), the best "
                               "model kept in OUTPUT/best, and an evaluate report against the starting model at the "
                               "end (OUTPUT/evaluation)")
    finetune.add_argument("--val-every", type=int, default=500, help="steps between validations")
    finetune.add_argument("--val-count", type=int, default=8, help="held-out excerpts (drawn once, seeded)")
    finetune.add_argument("--val-duration", type=float, default=3.0, help="seconds per held-out excerpt")


def _finetune_command(args: argparse.Namespace) -> int:
    from ..training.finetune import finetune

    folder = finetune(args.model, args.data, args.output, steps=args.steps, batch_size=args.batch_size,
                      duration=args.duration, lr=args.lr, quantizer_dropout=args.quantizer_dropout,
                      save_every=args.save_every, device=args.device, precision=args.precision, seed=args.seed,
                      val=args.val, val_every=args.val_every, val_count=args.val_count,
                      val_duration=args.val_duration)
    print(f"wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")
    return 0


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="how good each model is on your audio, at each bitrate: a table, a summary and a report",
        description="Encodes and decodes every input of a folder of audio files, one audio file, a text file of "
                    "paths or a Hugging Face dataset with each model at each bitrate, scores each reconstruction "
                    "against its input (the original's mel, STFT, L1 and SI-SDR at 22.05 and 44.1 kHz, ViSQOL, STOI, "
                    "F0 correlation; PESQ if asked for) and writes DIR/metrics.parquet and .csv, DIR/summary.json "
                    "and DIR/report.html; rerun the same command to resume.")
    evaluate.add_argument("input", metavar="INPUT")
    evaluate.add_argument("--model", action="append", required=True,
                          help="folder, Hub id or .pth; give it again for more models (the first is the baseline of "
                               "the paired differences)")
    evaluate.add_argument("--n-quantizers", default="all", help="codebooks per bitrate, e.g. 1,2,4,all (all)")
    evaluate.add_argument("--output", required=True, metavar="DIR")
    evaluate.add_argument("--measures", default=None,
                          help="comma-separated, of original, visqol, stoi, f0, pesq (default: all but pesq)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    evaluate.add_argument("--workers", type=int, default=1,
                          help="processes on --device sharing the inputs (on the CPU, the cores split between them)")
    evaluate.add_argument("--devices", default=None, help="e.g. cuda:0,cuda:1: one process each, instead of --device")
    evaluate.add_argument("--no-report", action="store_true", help="the table and summary only")
    evaluate.add_argument("--audio-column", default="audio", help="datasets: the audio column")
    evaluate.add_argument("--id-column", default=None, help="datasets: the column of ids (default: row index)")
    evaluate.add_argument("--split", default=None, help="datasets: the split")


def _evaluate_command(args: argparse.Namespace) -> int:
    from ..evaluation import DEFAULT_MEASURES, evaluate, parse_bitrates
    from .corpus import Corpus

    measures = [m.strip() for m in args.measures.split(",")] if args.measures else list(DEFAULT_MEASURES)
    bitrates = parse_bitrates(args.n_quantizers)
    source = Corpus.open(args.input, args.audio_column, args.id_column, args.split)
    devices = args.devices.split(",") if args.devices else None
    summary = evaluate(source, args.output, args.model, bitrates, measures, args.device, args.workers, devices,
                       report=not args.no_report)
    for id, why in summary.failed:
        print(f"failed: {id}: {why}", file=sys.stderr)
    where = Path(args.output) / ("metrics.csv" if args.no_report else "report.html")
    print(f"evaluate: {summary.measured} inputs measured, {summary.already_done} already done, "
          f"{len(summary.failed)} failed; see {where}", file=sys.stderr)
    return 1 if summary.failed else 0


def _export_command(args: argparse.Namespace) -> int:
    from ..export.onnx import check_installed, export_onnx
    from .loading import load_model

    check_installed()  # before the model loads
    if args.block_frames < 1:
        raise ValueError(f"--block-frames must be at least 1, got {args.block_frames}")
    folder = export_onnx(load_model(args.model), args.output, args.block_frames, args.int8)
    print(f"wrote {folder}: " + ", ".join(sorted(p.name for p in folder.glob("*.onnx"))), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
