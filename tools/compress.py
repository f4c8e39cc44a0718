"""The original's `compress` and `decompress`, for a library user: an audio file to a `DacFile` and back, streamed
from disk in blocks so memory stays flat whatever the length.

    dac = compress(model, "speech.flac")          # loudness normalised to -16 LUFS, every channel encoded alone
    dac.save("speech.dac")
    audio = decompress(model, DacFile.load("speech.dac"))   # (channels, samples) at the file's rate and length
    decompress(model, "speech.dac", "speech.wav")            # or straight to a WAV file

`compress` does what the original's `compress` does before its single padded pass: it measures the loudness
(BS.1770) at the model's rate, normalises to `normalize_db`, keeps every channel's peak within 1 and encodes each
channel as an item. `decompress` decodes our padded files (and the original's single-pass ones) as one stream and
the original's unpadded windows window by window, as the original does, restores each channel's loudness, resamples
to the file's rate and keeps its length. A file records the model that made it, and `decompress` refuses another.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import soundfile
import torch

from ..audio_io import check_sample_rate, prepare_blocks
from ..modeling_dac import DacModel
from .dac_file import DacFile
from .files import partial_path, write_atomically
from .loading import check_identity, model_identity
from .loudness import LoudnessMeter

TARGET_DB = -16.0  # the original's `compress` default
BLOCK_SECONDS = 20.0  # audio read from disk per step
Progress = Callable[[float], None]  # seconds of audio done


def _no_progress(seconds: float) -> None:
    pass


def audio_info(path: Union[str, os.PathLike]) -> Any:
    """soundfile's description of an audio file that holds samples."""
    try:
        info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"it is not audio that libsndfile reads ({error})") from None
    if info.frames <= 0:
        raise ValueError("it holds no samples")
    return info


def _channel_blocks(path: Union[str, os.PathLike], rate: int, gains: Optional[np.ndarray] = None,
                    progress: Progress = _no_progress) -> Iterator[np.ndarray]:
    """The file's samples (channels, 1, t) in blocks, each channel an item, scaled by `gains` (channels,); calls
    `progress` with each block's seconds."""
    for block in soundfile.blocks(path, blocksize=max(1, int(BLOCK_SECONDS * rate)), dtype="float32",
                                  always_2d=True):
        block = block.T[:, None, :]  # (t, C) -> (C, 1, t)
        yield block if gains is None else block * gains[:, None, None].astype(np.float32)
        progress(block.shape[-1] / rate)


def compress(model: DacModel, audio: Union[str, os.PathLike], n_quantizers: Optional[int] = None,
             normalize_db: Optional[float] = TARGET_DB, identity: Optional[dict[str, Any]] = None,
             progress: Progress = _no_progress) -> DacFile:
    """The `.dac` contents of an audio file (any format libsndfile reads, any rate and channel count).

    Args:
        model: The model that encodes.
        audio: The audio file's path.
        n_quantizers: Codebooks to use (the bitrate); all by default.
        normalize_db: The loudness to normalise to, in LUFS; None encodes at the input's level (the file records
            the loudness either way).
        identity: What the file records about the model (`loading.model_identity`); computed if None (hashing the
            weights: give it when compressing many files).
        progress: Called with the seconds encoded as it goes.
    """
    info = audio_info(audio)
    rate = model.config.sampling_rate
    meter, peaks = LoudnessMeter(rate), np.zeros(info.channels)
    for block in prepare_blocks(_channel_blocks(audio, info.samplerate), info.samplerate, rate):  # (C, 1, t)
        meter.add(block[:, 0].numpy())
        peaks = np.maximum(peaks, block.abs().amax(dim=(1, 2)).numpy())
    input_db = meter.loudness()
    gain = 10 ** ((normalize_db - input_db) / 20) if normalize_db is not None else 1.0
    gains = gain * np.minimum(1.0, 1.0 / np.maximum(gain * peaks, 1e-30))  # no channel's peak above 1
    blocks = prepare_blocks(_channel_blocks(audio, info.samplerate, gains, progress), info.samplerate, rate)
    codes = torch.cat(list(model.encode_stream(blocks, rate, n_quantizers=n_quantizers)), dim=-1)
    identity = identity if identity is not None else model_identity(model)
    return DacFile(codes=codes.cpu(), chunk_length=codes.shape[-1], original_length=info.frames,
                   input_db=torch.tensor([input_db], dtype=torch.float32), channels=info.channels,
                   sample_rate=info.samplerate, padding=True,
                   model={**identity, "sampling_rate": rate, "hop_length": model.config.hop_length,
                          "codebook_size": model.config.codebook_size})


def check_fits(model: DacModel, dac: DacFile, identity: dict[str, Any], source: str) -> None:
    """Refuses a `.dac` file that the model cannot decode to what the file describes: made by another model (the
    architecture and weights it records), codes the model lacks, a length its codes cannot make, a rate or a
    channel layout that is not audio."""
    config, recorded = model.config, dac.model or {}
    check_identity(recorded, identity, source)
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


def _decoded(model: DacModel, dac: DacFile) -> Iterator[torch.Tensor]:
    """The audio (channels, 1, t) of a `.dac` file at the model's rate, piece by piece: our padded files (and the
    original's single-pass ones) as one stream; the original's unpadded windows one at a time, as it does."""
    codes = dac.codes.to(model.device)
    if dac.padding:
        yield from model.decode_stream(codes.split(model.config.decoding_chunk_size or 1024, dim=-1))
        return
    for window in codes.split(dac.chunk_length, dim=-1):
        yield model.decode(s=window, chunk_size=0, mode="unpadded")


def decompress(model: DacModel, dac: Union[DacFile, str, os.PathLike], output: Optional[Union[str, os.PathLike]] = None,
               identity: Optional[dict[str, Any]] = None, progress: Progress = _no_progress
               ) -> Union[np.ndarray, Path]:
    """The audio of a `.dac` file at its original rate, channels and length, with its loudness restored.

    Args:
        model: The model that made the file (one of another architecture or other weights than it records is
            refused).
        dac: A `DacFile`, or a `.dac` file's path.
        output: A file to write (WAV, float), atomically; None returns the audio.
        identity: The model's `loading.model_identity`; computed if None.
        progress: Called with the seconds written as it goes.

    Returns:
        float32 samples (channels, samples), or the path written.
    """
    source = os.fspath(dac) if not isinstance(dac, DacFile) else "the file"
    dac = dac if isinstance(dac, DacFile) else DacFile.load(dac)
    check_fits(model, dac, identity if identity is not None else model_identity(model), source)
    rate, channels = model.config.sampling_rate, dac.channels
    target = Path(output) if output is not None else None
    # Pass 1: decode at the model's rate to a float scratch file (beside the output: hidden, and not an audio
    # suffix, so never read back as an input), measuring each channel's loudness.
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = partial_path(target.with_name(target.name + ".decoding"))
    else:
        handle, name = tempfile.mkstemp(suffix=".decoding.partial")
        os.close(handle)
        scratch = Path(name)
    try:
        meters = [LoudnessMeter(rate) for _ in range(channels)]
        with soundfile.SoundFile(scratch, "w", samplerate=rate, channels=channels, format="WAV",
                                 subtype="FLOAT") as file:
            for piece in _decoded(model, dac):
                samples = piece[:, 0].float().cpu().numpy()  # (C, 1, t) -> (C, t)
                for meter, channel in zip(meters, samples):
                    meter.add(channel[None])
                file.write(samples.T)
        gains = np.array([10 ** ((float(dac.input_db[0]) - m.loudness()) / 20) for m in meters], np.float32)

        def restored() -> Iterator[np.ndarray]:  # pass 2: loudness restored, at the file's rate and length
            remaining = dac.original_length
            blocks = (block.T[:, None, :] * gains[:, None, None]  # (t, C) -> (C, 1, t)
                      for block in soundfile.blocks(scratch, blocksize=int(BLOCK_SECONDS * rate), dtype="float32",
                                                    always_2d=True))
            for resampled in prepare_blocks(blocks, rate, dac.sample_rate):
                block = resampled[:, 0, :remaining].numpy()
                remaining -= block.shape[-1]
                progress(block.shape[-1] / dac.sample_rate)
                yield block
            if remaining > 0:  # the 16 and 24 kHz decoders return up to 8 samples less
                yield np.zeros((channels, remaining), np.float32)

        if target is None:
            return np.concatenate(list(restored()), axis=-1)

        def write(path: str) -> None:
            with soundfile.SoundFile(path, "w", samplerate=dac.sample_rate, channels=channels, format="WAV",
                                     subtype="FLOAT") as file:
                for block in restored():
                    file.write(block.T)

        write_atomically(target, write)
        return target
    finally:
        scratch.unlink(missing_ok=True)
