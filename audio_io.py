"""Audio and tensor files, and turning what users hand in into model input: checked, mono, at the model's rate.

Audio is read and written with soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...) and resampled with soxr (HQ), whose
stream resampler gives the same samples as resampling the whole signal, for any split into blocks. Tensors are
saved as safetensors, or with `torch.save` and loaded with `weights_only=True`: nothing here unpickles code.
"""

from __future__ import annotations

import os
from numbers import Integral
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import soundfile
import soxr
import torch

PathLike = Union[str, os.PathLike]
AudioInput = Union[PathLike, np.ndarray, torch.Tensor]
SHAPES = "(time,), (channels, time) or (batch, channels, time)"
WRITE_BLOCK = 1 << 18  # samples per call into libsndfile
# Sample rates that audio has: below, a rate is a mistake (samples per minute?); above, resampling to the model's
# rate would run for minutes before anything could say so.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000


def check_sample_rate(sample_rate: object, name: str = "sample_rate") -> int:
    """A sample rate in Hz: an int (numpy ints too) in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; bools and floats are a
    TypeError."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral):
        raise TypeError(f"`{name}` must be an int in Hz, got {sample_rate!r} ({type(sample_rate).__name__}).")
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise ValueError(f"`{name}` must be a positive int in Hz, got {sample_rate!r}.")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"`{name}` must be a rate that audio has, {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz; got "
                         f"{sample_rate!r}.")
    return sample_rate


def check_tensor(value: object, name: str) -> torch.Tensor:
    """`value` if it is a dense torch tensor that holds data, else a TypeError or ValueError naming `name`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch tensor, got {type(value).__name__}.")
    if value.layout != torch.strided:
        raise TypeError(f"`{name}` must be a dense tensor, got layout {value.layout}; call `.to_dense()` first.")
    if value.device.type == "meta":
        raise ValueError(f"`{name}` is on the meta device and holds no data; give a tensor with values.")
    return value


def check_blocks(blocks: Any) -> Iterator:
    """An iterator over a stream's blocks; one tensor or array is refused, since its rows would pass for blocks."""
    if isinstance(blocks, (torch.Tensor, np.ndarray)):
        raise TypeError("`blocks` must be an iterable of blocks, not one tensor or array (whose rows would be "
                        "taken for blocks); to stream one signal, split it: `x.split(n, dim=-1)`.")
    try:
        return iter(blocks)
    except TypeError:
        raise TypeError(f"`blocks` must be an iterable of blocks, got {type(blocks).__name__}.") from None


def check_same_shape(blocks: Iterable[torch.Tensor], what: str) -> Iterator[torch.Tensor]:
    """The blocks of a stream, each checked to have the first one's batch size and `what` (dimension 1)."""
    shape = None
    for index, block in enumerate(blocks):
        if shape is not None and block.shape[:2] != shape:
            raise ValueError(f"Block {index} has batch size and {what} {tuple(block.shape[:2])}, but the stream "
                             f"began with {tuple(shape)}; every block of a stream must have the same.")
        shape = block.shape[:2]
        yield block


def check_lengths(lengths: object, audio: object) -> list[int]:
    """The lengths of the items of a zero-padded batch `audio` (batch, channels, time): one int in [1, time] each."""
    if not isinstance(audio, (np.ndarray, torch.Tensor)) or audio.ndim != 3:
        raise ValueError("`lengths` needs a padded batch shaped (batch, channels, time) as a tensor or array.")
    if isinstance(lengths, (torch.Tensor, np.ndarray)):
        lengths = lengths.tolist()
    if not isinstance(lengths, (list, tuple)) or any(isinstance(n, bool) or not isinstance(n, Integral)
                                                     for n in lengths):
        raise TypeError(f"`lengths` must be a list of ints (samples of each item), got {lengths!r}.")
    if len(lengths) != audio.shape[0] or not all(1 <= n <= audio.shape[-1] for n in lengths):
        raise ValueError(f"`lengths` must give one length in [1, {audio.shape[-1]}] per item of the batch of "
                         f"{audio.shape[0]}, got {lengths}.")
    return [int(n) for n in lengths]


def check_output_path(path: object, name: str = "path") -> str:
    """The path of a file to write: its folder must exist, and it must not be a folder itself."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a file path, got {type(path).__name__}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot write {path!r}: the folder {folder!r} does not exist; create it first.")
    if os.path.isdir(path):
        raise ValueError(f"Cannot write {path!r}: it is a folder; give a file name.")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading and preparing audio
def load_audio(path: PathLike) -> tuple[np.ndarray, int]:
    """Reads an audio file (WAV, FLAC, OGG, MP3, ... as libsndfile reads them).

    Returns:
        (samples, sample_rate): float32 samples shaped (channels, time), and the file's rate in Hz.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No audio file at {os.fspath(path)!r}.")
    try:
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"Could not read {os.fspath(path)!r} as audio: {error}") from error
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"{os.fspath(path)!r} claims a sample rate of {sample_rate} Hz; audio has "
                         f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz.")
    return data.T, sample_rate  # (time, channels) -> (channels, time)


def as_audio(audio: Any, name: str = "audio") -> torch.Tensor:
    """Samples as a numpy array or tensor, checked and shaped (batch, channels, time), float32 or float64."""
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(
                f"`{name}` samples must be floating point in [-1, 1], got a numpy array of {audio.dtype}. "
                "Convert integer PCM first, e.g. `x.astype(np.float32) / 32768` for int16."
            )
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    elif not isinstance(audio, torch.Tensor):
        raise TypeError(f"`{name}` must be a path, a numpy array or a torch tensor shaped {SHAPES}; "
                        f"got {type(audio).__name__}.")
    audio = check_tensor(audio, name)
    if not audio.is_floating_point():
        raise TypeError(
            f"`{name}` samples must be floating point in [-1, 1], got a tensor of {audio.dtype}. "
            "Convert integer PCM first, e.g. `x.float() / 32768` for int16."
        )
    if audio.dim() not in (1, 2, 3):
        raise ValueError(f"`{name}` must be shaped {SHAPES}; got {tuple(audio.shape)}.")
    if audio.dim() >= 2 and 0 < audio.shape[-1] < audio.shape[-2]:
        raise ValueError(
            f"`{name}` shaped {tuple(audio.shape)} has more channels ({audio.shape[-2]}) than samples "
            f"({audio.shape[-1]}): it looks like (time, channels), the layout soundfile reads. Channels come "
            "before time here: pass `x.T` (numpy) or `x.transpose(-1, -2)` (torch)."
        )
    audio = audio.reshape((1,) * (3 - audio.dim()) + tuple(audio.shape))  # -> (B, C, T)
    if audio.dtype not in (torch.float32, torch.float64):
        audio = audio.float()  # half precision in, full precision for mixing and resampling
    return audio


def _check_samples(audio: torch.Tensor, name: str) -> None:
    if 0 in audio.shape:
        raise ValueError(f"`{name}` is empty: shape {tuple(audio.shape)}; it needs at least one sample.")
    if not torch.isfinite(audio).all():
        raise ValueError(f"`{name}` contains NaN or Inf samples; clean or clip the signal first.")


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """(batch, channels, time) -> float32 (batch, 1, time), the mean of the channels."""
    audio = audio.float()
    return audio.mean(dim=1, keepdim=True) if audio.shape[1] > 1 else audio


def resample(audio: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """(batch, 1, time) at `sample_rate` -> (batch, 1, time') at `target_rate`, with soxr (HQ), float64 inside."""
    resampled = _resample_chunk(_resampler(sample_rate, target_rate, audio.shape[0]), audio, last=True)
    if resampled.shape[-1] == 0:
        raise ValueError(
            f"Audio of {audio.shape[-1]} samples at {sample_rate} Hz is too short to resample to "
            f"{target_rate} Hz; it needs at least one output sample."
        )
    return resampled


def _resampler(sample_rate: int, target_rate: int, channels: int) -> "soxr.ResampleStream":
    """soxr's stream resampler: the same samples as resampling the whole signal at once, for any split."""
    return soxr.ResampleStream(sample_rate, target_rate, channels, dtype="float64", quality="HQ")


def _resample_chunk(resampler: "soxr.ResampleStream", block: torch.Tensor, last: bool) -> torch.Tensor:
    signal = block[:, 0].T.double().cpu().numpy()  # (B, 1, t) -> (t, B): soxr takes channels last
    resampled = resampler.resample_chunk(np.ascontiguousarray(signal), last=last)
    return torch.from_numpy(np.ascontiguousarray(resampled.T)).to(block)[:, None]  # (t, B) -> (B, 1, t)


def prepare_audio(audio: AudioInput, sample_rate: Optional[int], target_rate: int) -> torch.Tensor:
    """Any accepted audio -> float32 (batch, 1, time) at `target_rate`, on the input's device.

    Args:
        audio: A path to an audio file, or samples shaped (time,), (channels, time) or (batch, channels, time).
        sample_rate: The samples' rate in Hz; required for samples, read from the file for a path (where it may
            be given only if it agrees).
        target_rate: The model's rate.
    """
    if isinstance(audio, (str, os.PathLike)):
        data, file_rate = load_audio(audio)
        if sample_rate is not None and check_sample_rate(sample_rate) != file_rate:
            raise ValueError(
                f"`sample_rate={sample_rate}` contradicts the file's own rate {file_rate} Hz; leave it out."
            )
        audio, sample_rate = torch.from_numpy(data), file_rate
    audio = as_audio(audio)
    if sample_rate is None:
        raise ValueError(
            "`sample_rate` is required with raw samples, so that audio at another rate is resampled rather than "
            f"silently misread; pass `sample_rate={target_rate}` if it is at the model's rate."
        )
    sample_rate = check_sample_rate(sample_rate)
    _check_samples(audio, "audio")
    audio = to_mono(audio)
    return resample(audio, sample_rate, target_rate) if sample_rate != target_rate else audio


def prepare_blocks(blocks: Iterable[object], sample_rate: int, target_rate: int) -> Iterator[torch.Tensor]:
    """A stream of sample blocks -> float32 (batch, 1, t) blocks at `target_rate`, resampled as a stream (the
    same samples as resampling the whole signal). Every block must have the first one's batch and channels; empty
    blocks are allowed and skipped."""
    sample_rate, resampler, batch = check_sample_rate(sample_rate), None, 1
    blocks = check_same_shape((as_audio(block, f"block {i}") for i, block in enumerate(blocks)), "channels")
    for index, block in enumerate(blocks):
        if index == 0:
            if 0 in block.shape[:2]:
                raise ValueError(f"Block 0 shaped {tuple(block.shape)} has no batch items or no channels.")
            if sample_rate != target_rate:
                batch = block.shape[0]
                resampler = _resampler(sample_rate, target_rate, batch)
        if block.shape[-1] == 0:
            continue
        _check_samples(block, f"block {index}")
        block = to_mono(block)
        if resampler is not None:
            block = _resample_chunk(resampler, block, last=False)
        if block.shape[-1]:
            yield block
    if resampler is not None:
        end = _resample_chunk(resampler, torch.zeros(batch, 1, 0), last=True)
        if end.shape[-1]:
            yield end


# ----------------------------------------------------------------------------------------------------------------
# Writing audio
def check_waveform(waveform: Any) -> torch.Tensor:
    """One mono signal of finite float samples shaped (1, 1, samples), (1, samples) or (samples,) -> (samples,)."""
    waveform = check_tensor(waveform, "waveform")
    if not waveform.is_floating_point():
        raise TypeError(f"`waveform` must hold float samples, got {waveform.dtype}.")
    if waveform.numel() != waveform.shape[-1] or waveform.numel() == 0:
        raise ValueError(
            f"`waveform` must hold one mono signal, (1, 1, samples), got {tuple(waveform.shape)}; "
            "write each item of a batch separately."
        )
    if not torch.isfinite(waveform).all():
        raise ValueError("`waveform` contains NaN or Inf samples, which no audio file can hold; clean them first.")
    return waveform.reshape(-1)


def open_audio_file(path: PathLike, sample_rate: int) -> soundfile.SoundFile:
    """A mono audio file open for writing, its format by extension (.wav, .flac, .ogg, ...)."""
    path = check_output_path(path)
    try:
        return soundfile.SoundFile(path, "w", samplerate=sample_rate, channels=1)
    except (soundfile.LibsndfileError, TypeError, ValueError) as error:
        formats = ", ".join(f".{name.lower()}" for name in soundfile.available_formats())
        raise ValueError(f"Cannot write audio to {path!r} ({error}); use an extension such as {formats}.") from error


def write_samples(file: soundfile.SoundFile, samples: np.ndarray) -> None:
    """Writes samples in blocks of at most WRITE_BLOCK: libsndfile's Vorbis encoder crashes the process when one
    call hands it a few million samples (about a minute of 44.1 kHz audio)."""
    for start in range(0, len(samples), WRITE_BLOCK):
        file.write(samples[start : start + WRITE_BLOCK])


def write_audio(path: PathLike, waveform: torch.Tensor, sample_rate: int) -> None:
    """Writes one mono signal (see `check_waveform`) to an audio file, its format by extension."""
    samples = check_waveform(waveform).detach().float().cpu().numpy()
    with open_audio_file(path, sample_rate) as file:
        write_samples(file, samples)


def write_audio_pieces(path: PathLike, pieces: Iterable[torch.Tensor], sample_rate: int) -> None:
    """Writes a mono signal that comes in pieces (1, 1, t) to an audio file as they come. The file is opened (and
    its path checked) before the first piece is asked for; if making a piece fails, no file is left."""
    file = open_audio_file(path, sample_rate)
    try:
        with file:
            for piece in pieces:
                write_samples(file, piece[0, 0].float().cpu().numpy())
    except BaseException:
        os.remove(file.name)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Tensor files
def save_tensor(tensor: torch.Tensor, path: PathLike) -> None:
    """Saves codes or a latent: safetensors for a `.safetensors` path, else `torch.save`."""
    tensor = check_tensor(tensor, "tensor").detach().cpu()
    path = check_output_path(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({"tensor": tensor.contiguous()}, path)
    else:
        torch.save(tensor, path)


def load_tensor(path: PathLike) -> torch.Tensor:
    """Loads what `save_tensor` saved, without unpickling code (safetensors, or `weights_only=True`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No tensor file at {os.fspath(path)!r}.")
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)["tensor"]
        except Exception as error:  # a corrupt file, or one saved without the "tensor" key
            raise ValueError(f"Could not read a tensor from {os.fspath(path)!r}: {error}") from error
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, or a pickle that would need to run code to load
        raise ValueError(f"Could not load {os.fspath(path)!r} as a tensor without unpickling code: {error}") from error
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(tensor).__name__}, not a tensor.")
    return tensor
