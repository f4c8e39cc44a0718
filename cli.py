"""The `dac-codec` command line: audio files to `.dac` files and back, in the original package's file format.

    dac-codec encode INPUT... --output DIR [--model NAME] [--n-quantizers N] [--device D] [--dtype T]
    dac-codec decode INPUT... --output DIR [--model NAME] [--device D] [--dtype T]
    dac-codec info FILE.dac

An INPUT is a file or a folder, walked recursively; each file becomes DIR/<its path relative to the folder, or its
name> with the suffix `.dac` (encode) or `.wav` (decode). Files stream from disk in blocks, so memory stays flat
whatever their length. Encoding does what the original's `compress` does before its single padded pass: it
measures the loudness at the model's rate, normalises to -16 LUFS (`--no-normalize` leaves the level alone), keeps
every channel's peak within 1 and encodes each channel on its own; decoding (our files, and the original's padded
and windowed ones) restores each channel's loudness, resamples to the file's rate and length. Existing outputs are
skipped unless --overwrite; a file that cannot be done is reported with its path and the reason, the others are
done, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import soundfile
import torch

from .audio_io import AUDIO_SUFFIXES, prepare_blocks
from .chunking import decode_unpadded
from .dac_file import DacFile
from .loading import DTYPES, first_line, load_model, write_atomically

DEFAULT_MODEL = "descript/dac_44khz"
TARGET_DB = -16.0  # the original's `compress` default
BLOCK_SECONDS = 20.0  # audio read from disk per step


def find_inputs(inputs: list[str], suffixes: set[str]) -> list[tuple[Path, Path]]:
    """(file, its output path without suffix, relative to the output folder) for every input file."""
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
                found.append((path, path.relative_to(given).with_suffix("")))
        else:
            found.append((given, Path(given.stem)))  # a missing file is reported when its turn comes
    return found


def _channel_blocks(path: Path, rate: int, gains: Optional[np.ndarray] = None,
                    progress: Callable[[float], None] = lambda seconds: None) -> Iterator[np.ndarray]:
    """The file's samples (channels, 1, t) in blocks, each channel an item, scaled by `gains` (channels,); calls
    `progress` with each block's seconds."""
    for block in soundfile.blocks(path, blocksize=max(1, int(BLOCK_SECONDS * rate)), dtype="float32",
                                  always_2d=True):
        block = block.T[:, None, :]  # (t, C) -> (C, 1, t)
        yield block if gains is None else block * gains[:, None, None].astype(np.float32)
        progress(block.shape[-1] / rate)


def encode_file(model, path: Path, output: Path, n_quantizers: Optional[int], normalize: bool, name: str,
                progress: Callable[[float], None] = lambda seconds: None) -> None:
    """Writes the `.dac` file of one audio file, calling `progress` with the seconds encoded as it goes."""
    from .loudness import LoudnessMeter

    info = soundfile.info(path)
    if info.frames == 0:
        raise ValueError("it holds no samples")
    rate = model.config.sampling_rate
    meter, peaks = LoudnessMeter(rate), np.zeros(info.channels)
    for block in prepare_blocks(_channel_blocks(path, info.samplerate), info.samplerate, rate):  # (C, 1, t)
        meter.add(block[:, 0].numpy())
        peaks = np.maximum(peaks, block.abs().amax(dim=(1, 2)).numpy())
    input_db = meter.loudness()
    gain = 10 ** ((TARGET_DB - input_db) / 20) if normalize else 1.0
    gains = gain * np.minimum(1.0, 1.0 / np.maximum(gain * peaks, 1e-30))  # no channel's peak above 1
    blocks = prepare_blocks(_channel_blocks(path, info.samplerate, gains, progress), info.samplerate, rate)
    codes = torch.cat(list(model.encode_stream(blocks, rate, n_quantizers=n_quantizers)), dim=-1)
    written = DacFile(codes=codes.cpu(), chunk_length=codes.shape[-1], original_length=info.frames,
                      input_db=torch.tensor([input_db], dtype=torch.float32), channels=info.channels,
                      sample_rate=info.samplerate, padding=True,
                      model={"name": name, "sampling_rate": rate, "hop_length": model.config.hop_length,
                             "codebook_size": model.config.codebook_size})
    write_atomically(output, written.save)


def decode_file(model, path: Path, output: Path, progress: Callable[[float], None] = lambda seconds: None) -> None:
    """Writes the audio of one `.dac` file at its original rate, channels and length, calling `progress` with the
    seconds written as it goes."""
    from .loudness import LoudnessMeter

    dac = DacFile.load(path)
    made_by = {k: (dac.model or {}).get(k) for k in ("sampling_rate", "hop_length", "codebook_size")}
    ours = {"sampling_rate": model.config.sampling_rate, "hop_length": model.config.hop_length,
            "codebook_size": model.config.codebook_size}
    if any(value is not None and value != ours[key] for key, value in made_by.items()):
        raise ValueError(f"it was made by {(dac.model or {}).get('name')!r} ({made_by}), another model than the "
                         f"one given ({ours}); pass that one with --model")
    if dac.codes.shape[0] != dac.channels:
        raise ValueError(f"it holds {dac.codes.shape[0]} signals for {dac.channels} channels; batches are not "
                         "supported")
    rate, channels = model.config.sampling_rate, dac.channels
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as temporary:
        # Pass 1: decode at the model's rate to a float file, measuring each channel's loudness.
        meters = [LoudnessMeter(rate) for _ in range(channels)]
        decoded = Path(temporary) / "decoded.wav"
        with soundfile.SoundFile(decoded, "w", samplerate=rate, channels=channels, subtype="FLOAT") as file:
            for audio in _decoded(model, dac):
                audio = audio[:, 0].float().cpu().numpy()  # (C, 1, t) -> (C, t)
                for meter, channel in zip(meters, audio):
                    meter.add(channel[None])
                file.write(audio.T)
        gains = np.array([10 ** ((float(dac.input_db[0]) - m.loudness()) / 20) for m in meters], np.float32)
        # Pass 2: restore the loudness, resample to the file's rate, keep its length.
        def restored():
            for block in soundfile.blocks(decoded, blocksize=int(BLOCK_SECONDS * rate), dtype="float32",
                                          always_2d=True):
                yield block.T[:, None, :] * gains[:, None, None]  # (t, C) -> (C, 1, t)

        def write(target: str) -> None:
            remaining = dac.original_length
            with soundfile.SoundFile(target, "w", samplerate=dac.sample_rate, channels=channels,
                                     format="WAV", subtype="FLOAT") as file:
                for block in prepare_blocks(restored(), rate, dac.sample_rate):
                    block = block[:, 0, :remaining].numpy()
                    file.write(block.T)
                    remaining -= block.shape[-1]
                    progress(block.shape[-1] / dac.sample_rate)
                if remaining > 0:  # the 16 and 24 kHz decoders return up to 8 samples less
                    file.write(np.zeros((remaining, channels), np.float32))

        write_atomically(output, write)


def _decoded(model, dac: DacFile) -> Iterator[torch.Tensor]:
    """The audio (channels, 1, t) of a `.dac` file at the model's rate, piece by piece: our padded files (and the
    original's single-pass ones) as one stream; the original's unpadded windows one window at a time, as it does."""
    codes = dac.codes.to(model.device)
    if dac.padding:
        yield from model.decode_stream(codes.split(model.config.decoding_chunk_size or 1024, dim=-1))
        return
    with torch.inference_mode():
        for window in codes.split(dac.chunk_length, dim=-1):
            yield decode_unpadded(model.decoder, model.quantizer.from_codes(window))


def _seconds(path: Path) -> float:
    """The duration of an audio file, 0 where it cannot be read (it is reported when its turn comes)."""
    try:
        info = soundfile.info(path)
        return info.frames / info.samplerate
    except Exception:
        return 0.0


def info(path: str) -> str:
    """What a `.dac` file holds, a line a field."""
    dac = DacFile.load(path)
    items, n_codebooks, frames = dac.codes.shape
    duration = dac.original_length / dac.sample_rate
    lines = [f"file: {path}", f"model: {(dac.model or {}).get('name', 'not recorded (written by the original)')}",
             f"codebooks: {n_codebooks}", f"frames: {frames}", f"duration: {duration:.3f} s",
             f"sample rate: {dac.sample_rate} Hz", f"channels: {dac.channels}", f"signals: {items}",
             f"input loudness: {float(dac.input_db.reshape(-1)[0]):.2f} LUFS", f"padded: {dac.padding}",
             f"chunk length: {dac.chunk_length} frames"]
    recorded = dac.model or {}
    if {"sampling_rate", "hop_length", "codebook_size"} <= recorded.keys():
        frame_rate = recorded["sampling_rate"] / recorded["hop_length"]
        bits = frame_rate * n_codebooks * math.log2(recorded["codebook_size"])
        lines.append(f"bitrate: {bits / 1000:.2f} kbps ({frame_rate:.2f} frames a second)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dac-codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("encode", "decode"):
        command = commands.add_parser(name, help=f"{name} files or folders")
        command.add_argument("inputs", nargs="+", metavar="INPUT")
        command.add_argument("--output", required=True, help="folder for the outputs (mirrors input folders)")
        command.add_argument("--model", default=None, help=f"folder or Hub id (default {DEFAULT_MODEL}; decode: the "
                                                           "model the file names, if it names one)")
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--dtype", default="float32", choices=list(DTYPES))
        command.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
        if name == "encode":
            command.add_argument("--n-quantizers", type=int, default=None, help="codebooks (bitrate); all by default")
            command.add_argument("--no-normalize", action="store_true", help="encode at the input's loudness")
    commands.add_parser("info", help="what a .dac file holds").add_argument("file")
    _add_corpus_commands(commands)
    args = parser.parse_args(argv)
    if args.command in ("tokenize", "detokenize"):
        return _corpus_command(args, argv)

    if args.command == "info":
        try:
            print(info(args.file))
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0

    from tqdm import tqdm

    suffixes = AUDIO_SUFFIXES if args.command == "encode" else {".dac"}
    jobs = find_inputs(args.inputs, suffixes)
    if not jobs:
        print("error: no input files found", file=sys.stderr)
        return 1
    name = args.model
    if name is None and args.command == "decode":
        try:
            name = (DacFile.load(jobs[0][0]).model or {}).get("name")
        except (ValueError, FileNotFoundError):
            pass
    name = name or DEFAULT_MODEL
    try:
        model = load_model(name).to(args.device, DTYPES[args.dtype])
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    failed, done, skipped = [], 0, 0
    total = sum(_seconds(path) for path, _ in jobs) if args.command == "encode" else None
    with tqdm(total=total, unit="s", unit_scale=True, desc=f"{args.command} (audio)") as bar:
        for index, (path, relative) in enumerate(jobs):
            bar.set_postfix({"file": f"{index + 1}/{len(jobs)}"})
            output = Path(args.output) / relative.with_suffix(".dac" if args.command == "encode" else ".wav")
            if output.exists() and not args.overwrite:
                skipped += 1
                bar.update(_seconds(path) if args.command == "encode" else 0)
                continue
            try:
                if args.command == "encode":
                    encode_file(model, path, output, args.n_quantizers, not args.no_normalize, name, bar.update)
                else:
                    decode_file(model, path, output, bar.update)
                done += 1
            except Exception as error:  # one bad file is reported; the others are done
                failed.append(f"{path}: {first_line(error)}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{args.command}: {done} done, {skipped} skipped (exist; --overwrite redoes them), {len(failed)} failed",
          file=sys.stderr)
    return 1 if failed else 0


def _add_corpus_commands(commands) -> None:
    tokenize = commands.add_parser(
        "tokenize", help="a corpus to Parquet shards of codes (resumable)",
        description="Tokenizes every input of a folder of audio files (recursive), a text file of paths, or a "
                    "Hugging Face dataset (a save_to_disk folder or a Hub id) into DIR/part-NNNNN.parquet and "
                    "DIR/manifest.json; rerun the same command to resume.")
    tokenize.add_argument("input", metavar="INPUT")
    tokenize.add_argument("--output", required=True, metavar="DIR")
    tokenize.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub id (default {DEFAULT_MODEL})")
    tokenize.add_argument("--n-quantizers", type=int, default=None, help="codebooks (bitrate); all by default")
    tokenize.add_argument("--engine", choices=["local", "ray"], default="local")
    tokenize.add_argument("--workers", type=int, default=1,
                          help="local: CPU encoder processes, the cores split between them; ray: encoder actors")
    tokenize.add_argument("--devices", default=None, help="e.g. cuda:0,cuda:1 (one encoder process each); "
                                                          "default cuda if available, else cpu")
    tokenize.add_argument("--readers", type=int, default=None, help="reader processes per encoder")
    tokenize.add_argument("--shard-size", type=int, default=None, metavar="FILES", help="inputs a shard (1000)")
    tokenize.add_argument("--dtype", default="float32", choices=list(DTYPES))
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
    detokenize.add_argument("--dtype", default="float32", choices=list(DTYPES))
    detokenize.add_argument("--overwrite", action="store_true", help="redo outputs that exist")


def _corpus_command(args, argv: Optional[list[str]]) -> int:
    from . import corpus

    try:
        if args.command == "tokenize":
            source = corpus.Corpus.open(args.input, args.audio_column, args.id_column, args.split)
            summary = corpus.tokenize(
                source, args.output, args.model, args.n_quantizers,
                devices=args.devices.split(",") if args.devices else None, workers=args.workers,
                readers=args.readers, shard_size=args.shard_size, dtype=args.dtype, engine=args.engine,
                ray_address=args.ray_address, command=["dac-codec", *(sys.argv[1:] if argv is None else argv)])
            done = (f"tokenize: {summary.tokenized} inputs tokenized in {summary.shards_done} shards, "
                    f"{summary.shards_skipped} shards already done, {len(summary.failed)} failed")
        else:
            summary = corpus.detokenize(args.source, args.output, args.model, args.ids, args.device, args.dtype,
                                        args.overwrite)
            done = (f"detokenize: {summary.written} written, {summary.skipped} skipped (exist; --overwrite redoes "
                    f"them), {summary.without_codes} rows without codes, {len(summary.failed)} failed")
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for id, why in summary.failed:
        print(f"failed: {id}: {why}", file=sys.stderr)
    print(done, file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
