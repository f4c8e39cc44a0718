"""The `dac-codec` command line: audio files to `.dac` files and back, in the original package's file format.

    dac-codec encode INPUT... --output DIR [--model NAME] [--n-quantizers N] [--device D] [--dtype T]
    dac-codec decode INPUT... --output DIR [--model NAME] [--device D] [--dtype T]
    dac-codec info FILE.dac

An INPUT is a file or a folder, walked recursively; each file becomes DIR/<its path relative to the folder, or its
name> with the suffix `.dac` (encode) or `.wav` (decode). Two inputs that would write one output (a.wav and a.flac,
the same path under two folders, names equal up to case) are refused before any work. Files stream from disk in
blocks, so memory stays flat whatever their length. Encoding does what the original's `compress` does before its
single padded pass: it measures the loudness at the model's rate, normalises to -16 LUFS (`--no-normalize` leaves
the level alone), keeps every channel's peak within 1 and encodes each channel on its own; decoding (our files, and
the original's padded and windowed ones) restores each channel's loudness, resamples to the file's rate and length.
A file records the model that made it (its name, architecture and weights' hash), and decoding refuses another.
Existing outputs are skipped unless --overwrite; a file that cannot be done is reported with its path and the
reason, the others are done, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Optional

import numpy as np
import soundfile

from .dac_file import DacFile, read_fields
from .files import AUDIO_SUFFIXES, find_inputs, plan_outputs, write_atomically

if TYPE_CHECKING:
    import torch

    from .modeling_dac import DacModel

DEFAULT_MODEL = "descript/dac_44khz"
TARGET_DB = -16.0  # the original's `compress` default
BLOCK_SECONDS = 20.0  # audio read from disk per step
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# What a user's mistake raises (a bad path, file, model or argument): one line, never a traceback. Anything else is
# a bug and fails loudly.
USER_ERRORS = (ValueError, OSError, ImportError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`dac-codec encode: error: ...`) instead of the usage and a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_command(command: Callable[[], int]) -> int:
    """Runs a command, turning a user error into one line on stderr (status 1) and Ctrl-C or SIGTERM into one
    line (status 130): what the command leaves half done is removed on the way out, and what it finished is kept."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted: what was finished is kept; run the same command again to go on", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        from .loading import first_line

        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------------------------------------------
# One file each way
def _channel_blocks(path: Path, rate: int, gains: Optional[np.ndarray] = None,
                    progress: Callable[[float], None] = lambda seconds: None) -> Iterator[np.ndarray]:
    """The file's samples (channels, 1, t) in blocks, each channel an item, scaled by `gains` (channels,); calls
    `progress` with each block's seconds."""
    for block in soundfile.blocks(path, blocksize=max(1, int(BLOCK_SECONDS * rate)), dtype="float32",
                                  always_2d=True):
        block = block.T[:, None, :]  # (t, C) -> (C, 1, t)
        yield block if gains is None else block * gains[:, None, None].astype(np.float32)
        progress(block.shape[-1] / rate)


def encode_file(model: DacModel, path: Path, output: Path, n_quantizers: Optional[int], normalize: bool,
                identity: dict[str, Any], progress: Callable[[float], None] = lambda seconds: None) -> None:
    """Writes the `.dac` file of one audio file, recording `identity` (see `loading.model_identity`) as the model
    that made it, calling `progress` with the seconds encoded as it goes."""
    import torch

    from .audio_io import prepare_blocks
    from .loudness import LoudnessMeter

    info = _audio_info(path)
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
                      model={**identity, "sampling_rate": rate, "hop_length": model.config.hop_length,
                             "codebook_size": model.config.codebook_size})
    write_atomically(output, written.save)


def _audio_info(path: Path) -> soundfile._SoundFileInfo:
    try:
        info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"it is not audio that libsndfile reads ({error})") from None
    if info.frames <= 0:
        raise ValueError("it holds no samples")
    return info


def check_file_fits(model: DacModel, identity: dict[str, Any], dac: DacFile, path: Path) -> None:
    """Refuses a `.dac` file that the model cannot decode to what the file describes: made by another model (the
    architecture and weights it records), codes the model lacks, a length its codes cannot make, a rate or a
    channel layout that is not audio."""
    from .audio_io import check_sample_rate
    from .loading import check_identity

    config, recorded = model.config, dac.model or {}
    check_identity(recorded, identity, str(path))
    made_by = {k: recorded.get(k) for k in ("sampling_rate", "hop_length", "codebook_size")}
    if any(value is not None and value != getattr(config, key) for key, value in made_by.items()):
        raise ValueError(f"it was made by {recorded.get('name')!r} ({made_by}), another model than the one given "
                         f"({ {k: getattr(config, k) for k in made_by} }); pass that one with --model")
    items, n_codebooks, frames = dac.codes.shape
    if n_codebooks > config.n_codebooks or int(dac.codes.max()) >= config.codebook_size:
        raise ValueError(f"its codes ({n_codebooks} codebooks, values up to {int(dac.codes.max())}) do not fit the "
                         f"model ({config.n_codebooks} codebooks of {config.codebook_size}); pass the model that made "
                         "it with --model")
    if items != dac.channels:
        raise ValueError(f"it holds {items} signals for {dac.channels} channels; batches are not supported")
    check_sample_rate(dac.sample_rate, "metadata.sample_rate")
    most = math.ceil(frames * config.hop_length * dac.sample_rate / config.sampling_rate) + 1  # the frames' span
    if dac.original_length > most:
        raise ValueError(f"its metadata.original_length {dac.original_length} is more than its {frames} frames of "
                         f"codes can make ({most} samples at {dac.sample_rate} Hz)")


def decode_file(model: DacModel, identity: dict[str, Any], path: Path, output: Path,
                progress: Callable[[float], None] = lambda seconds: None) -> None:
    """Writes the audio of one `.dac` file at its original rate, channels and length, calling `progress` with the
    seconds written as it goes."""
    from .audio_io import prepare_blocks
    from .files import partial_path
    from .loudness import LoudnessMeter

    dac = DacFile.load(path)
    check_file_fits(model, identity, dac, path)
    rate, channels = model.config.sampling_rate, dac.channels
    output.parent.mkdir(parents=True, exist_ok=True)
    # Pass 1: decode at the model's rate to a float scratch file beside the output (hidden, and not an audio
    # suffix: never read back as an input), measuring each channel's loudness.
    scratch = partial_path(output.with_name(output.name + ".decoding"))
    try:
        meters = [LoudnessMeter(rate) for _ in range(channels)]
        with soundfile.SoundFile(scratch, "w", samplerate=rate, channels=channels, format="WAV",
                                 subtype="FLOAT") as file:
            for audio in _decoded(model, dac):
                audio = audio[:, 0].float().cpu().numpy()  # (C, 1, t) -> (C, t)
                for meter, channel in zip(meters, audio):
                    meter.add(channel[None])
                file.write(audio.T)
        gains = np.array([10 ** ((float(dac.input_db[0]) - m.loudness()) / 20) for m in meters], np.float32)

        # Pass 2: restore the loudness, resample to the file's rate, keep its length.
        def restored():
            for block in soundfile.blocks(scratch, blocksize=int(BLOCK_SECONDS * rate), dtype="float32",
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
    finally:
        scratch.unlink(missing_ok=True)


def _decoded(model: DacModel, dac: DacFile) -> Iterator[torch.Tensor]:
    """The audio (channels, 1, t) of a `.dac` file at the model's rate, piece by piece: our padded files (and the
    original's single-pass ones) as one stream; the original's unpadded windows one window at a time, as it does."""
    import torch

    from .chunking import decode_unpadded

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
        command.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
        command.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
        if name == "encode":
            command.add_argument("--n-quantizers", type=int, default=None, help="codebooks (bitrate); all by default")
            command.add_argument("--no-normalize", action="store_true", help="encode at the input's loudness")
    commands.add_parser("info", help="what a .dac file holds").add_argument("file")
    _add_corpus_commands(commands)
    args = parser.parse_args(argv)
    if args.command in ("tokenize", "detokenize"):
        return run_command(lambda: _corpus_command(args, argv))
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

    from . import loudness  # noqa: F401  (scipy: missing, it is one error before any file, not one per file)
    from .loading import first_line, load_model, model_identity, resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    name = args.model or (None if encoding else _recorded_model(jobs[0][0])) or DEFAULT_MODEL
    model = load_model(name)
    identity = model_identity(model, name)  # of the weights as stored, before any cast
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
                    encode_file(model, path, output, args.n_quantizers, not args.no_normalize, identity, bar.update)
                else:
                    decode_file(model, identity, path, output, bar.update)
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
    tokenize.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
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
    detokenize.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    detokenize.add_argument("--overwrite", action="store_true", help="redo outputs that exist")


def _corpus_command(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    from . import corpus

    if args.command == "tokenize":
        source = corpus.Corpus.open(args.input, args.audio_column, args.id_column, args.split)
        summary = corpus.tokenize(
            source, args.output, args.model, args.n_quantizers,
            devices=args.devices.split(",") if args.devices else None, workers=args.workers,
            readers=args.readers, shard_size=args.shard_size, dtype=args.dtype, engine=args.engine,
            ray_address=args.ray_address, command=["dac-codec", *(sys.argv[1:] if argv is None else argv)])
        done = (f"tokenize: {summary.tokenized} inputs tokenized, {len(summary.failed)} failed ({summary.shards_done} "
                f"shards done now, {summary.shards_skipped} already done)")
        if summary.redone:
            done += f"; {len(summary.redone)} shards redone ({summary.redone[0]})"
    else:
        summary = corpus.detokenize(args.source, args.output, args.model, args.ids, args.device, args.dtype,
                                    args.overwrite)
        done = (f"detokenize: {summary.written} written, {summary.skipped} skipped (exist; --overwrite redoes "
                f"them), {summary.without_codes} rows without codes, {len(summary.failed)} failed")
    for id, why in summary.failed:
        print(f"failed: {id}: {why}", file=sys.stderr)
    print(done, file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
