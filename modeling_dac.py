"""DAC as a transformers `PreTrainedModel`: audio in, residual-vector-quantized codes out, and back.

    model = AutoModel.from_pretrained(repo_or_folder, trust_remote_code=True)
    zq, s = model.encode("speech.wav")        # z_q (1, latent_dim, frames), codes (1, n_codebooks, frames)
    waveform = model.decode(s=s)              # (1, 1, samples)
    model.waveform_to_audiofile(waveform, "out.wav")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import soundfile
import soxr
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .chunking import conv_geometry, input_span, output_length, plan_context_windows, plan_overlap_chunks
from .configuration_dac import DECODING_MODES, DacConfig
from .dac_layers import Decoder, Encoder, ResidualVectorQuantize, Snake1d, apply_weight_norm, remove_weight_norm

AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]
QUANTIZE_FRAMES = 1024  # latent frames quantized together by `encode` (streams quantize at once)
# Batched windows (accelerators): the widest activation of one batch, 1 GiB in fp32; chunks at least this many
# times their receptive-field context, so that recomputing the context costs at most a quarter more.
BATCH_ELEMENTS = 1 << 28
MIN_CHUNK_OVER_CONTEXT = 4


class _UnpacksAsTuple:
    """Makes `a, b = output` give the tensors, as a tuple would, rather than the field names."""

    def __iter__(self):
        return iter(self.to_tuple())


@dataclass
class DacEncoderOutput(_UnpacksAsTuple, ModelOutput):
    """Output of `DacModel.encode`; unpacks as `zq, s = model.encode(...)`.

    Args:
        z_q: (batch, latent_dim, frames) quantized latent, the sum of the codebooks' contributions.
        codes: (batch, n_quantizers, frames) int64 codebook indices in [0, codebook_size).
        frame_lengths: (batch,) valid frames of each item, only when `encode` was given `lengths` (then the
            output unpacks as `zq, s, frame_lengths`); frames past an item's length hold zeros.
    """

    z_q: Optional[torch.Tensor] = None
    codes: Optional[torch.Tensor] = None
    frame_lengths: Optional[torch.Tensor] = None


@dataclass
class DacOutput(_UnpacksAsTuple, ModelOutput):
    """Output of `DacModel.forward` (encode then decode).

    Args:
        audio: (batch, 1, samples) reconstruction, cropped to the input's length (up to 8 samples short at 16 and
            24 kHz, as in the reference; see `forward`).
        codes: (batch, n_quantizers, frames) codebook indices.
        z_q: (batch, latent_dim, frames) quantized latent.
    """

    audio: Optional[torch.Tensor] = None
    codes: Optional[torch.Tensor] = None
    z_q: Optional[torch.Tensor] = None


def load_audio(path: Union[str, os.PathLike]) -> tuple[np.ndarray, int]:
    """Reads an audio file (WAV, FLAC, OGG, MP3, ... as libsndfile reads them) as float32 (channels, time)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No audio file at {os.fspath(path)!r}.")
    try:
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"Could not read {os.fspath(path)!r} as audio: {error}") from error
    return data.T, sample_rate  # (time, channels) -> (channels, time)


class DacModel(PreTrainedModel):
    """The Descript Audio Codec: an encoder, a residual vector quantizer and a decoder (Kumar et al., 2023).

    `encode` and `decode` take audio in any common form and process long signals in chunks whose result equals
    whole-signal processing (see `chunking.py`); `forward` is the plain encode-decode round trip for training.
    """

    config_class = DacConfig
    base_model_prefix = "dac"
    main_input_name = "input_values"

    def __init__(self, config: DacConfig):
        super().__init__(config)
        self.encoder = Encoder(config.encoder_dim, config.encoder_rates, config.latent_dim)
        self.quantizer = ResidualVectorQuantize(
            config.latent_dim, config.n_codebooks, config.codebook_size, config.codebook_dim
        )
        self.decoder = Decoder(config.latent_dim, config.decoder_dim, config.decoder_rates)
        self._encoder_geometry = conv_geometry(self.encoder)
        self._decoder_geometry = conv_geometry(self.decoder)
        hop = config.hop_length
        lo, hi = input_span(self._encoder_geometry, 0, 0)  # the samples that code frame 0 reads
        self._encoder_context = (math.ceil(-lo / hop), math.ceil((hi + 1 - hop) / hop))
        lo, hi = input_span(self._decoder_geometry, 0, hop - 1)  # the frames that frame 0's samples read
        self._decoder_context = (-lo, hi)
        self.post_init()
        self.eval()

    def _init_weights(self, module: nn.Module) -> None:
        # As the reference initialises: truncated normal convolutions, zero biases, unit Snake frequencies.
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Snake1d):
            nn.init.ones_(module.alpha)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "DacModel":
        model = super().from_pretrained(*args, **kwargs)
        # safetensors may hand out views at any byte offset of the file; oneDNN picks other kernels (other float
        # rounding, less speed) for unaligned weights, so give every parameter its own aligned storage.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.data_ptr() % 64:
                    parameter.data = parameter.data.clone()
        return model

    # ----------------------------------------------------------------------------------------------------------
    # Derived geometry
    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` samples at the model's rate: ceil(num_samples / hop_length)."""
        return -(-num_samples // self.hop_length)

    def num_samples(self, num_frames: int) -> int:
        """Samples that `decode` returns for `num_frames` frames (hop_length * frames, less 8 at 16 and 24 kHz)."""
        return output_length(self._decoder_geometry, num_frames)

    def apply_weight_norm(self) -> None:
        """Re-parametrizes every convolution with weight norm for fine-tuning, as the reference trains."""
        apply_weight_norm(self)

    def remove_weight_norm(self) -> None:
        """Folds weight norm back into plain weights; do this before `save_pretrained`."""
        remove_weight_norm(self)

    # ----------------------------------------------------------------------------------------------------------
    # Input checking
    def _prepare_audio(self, audio: AudioInput, sample_rate: Optional[int]) -> torch.Tensor:
        """Any accepted audio -> float (batch, 1, time) at the model's rate, on the model's device and dtype."""
        if isinstance(audio, (str, os.PathLike)):
            data, file_rate = load_audio(audio)
            if sample_rate is not None and sample_rate != file_rate:
                raise ValueError(
                    f"`sample_rate={sample_rate}` contradicts the file's own rate {file_rate} Hz; leave it out."
                )
            audio, sample_rate = torch.from_numpy(data), file_rate
        elif isinstance(audio, np.ndarray):
            if not np.issubdtype(audio.dtype, np.floating):
                raise TypeError(
                    f"Audio samples must be floating point in [-1, 1], got a numpy array of {audio.dtype}. "
                    "Convert integer PCM first, e.g. `x.astype(np.float32) / 32768` for int16."
                )
            audio = torch.from_numpy(np.ascontiguousarray(audio))
        elif not isinstance(audio, torch.Tensor):
            raise TypeError(
                "`audio` must be a path, a numpy array or a torch tensor shaped (time,), (channels, time) or "
                f"(batch, channels, time); got {type(audio).__name__}."
            )
        if not audio.is_floating_point():
            raise TypeError(
                f"Audio samples must be floating point in [-1, 1], got a tensor of {audio.dtype}. "
                "Convert integer PCM first, e.g. `x.float() / 32768` for int16."
            )
        if sample_rate is None:
            raise ValueError(
                "`sample_rate` is required with raw samples, so that audio at another rate is resampled rather "
                f"than silently misread; pass `sample_rate={self.sampling_rate}` if it is at the model's rate."
            )
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"`sample_rate` must be a positive int in Hz, got {sample_rate!r}.")
        if audio.dim() not in (1, 2, 3):
            raise ValueError(
                f"Audio must be shaped (time,), (channels, time) or (batch, channels, time); got {tuple(audio.shape)}."
            )
        audio = audio.reshape((1,) * (3 - audio.dim()) + tuple(audio.shape))  # -> (B, C, T)
        if audio.shape[0] == 0 or audio.shape[1] == 0 or audio.shape[-1] == 0:
            raise ValueError(f"Audio is empty: shape {tuple(audio.shape)}; it needs at least one sample.")
        if not torch.isfinite(audio).all():
            raise ValueError("Audio contains NaN or Inf samples; clean or clip the signal before encoding.")
        audio = audio.to(self.device, self.dtype)
        if audio.shape[1] > 1:
            audio = audio.mean(dim=1, keepdim=True)  # mix down to mono, as the model is mono
        if sample_rate != self.sampling_rate:
            audio = self._resample(audio, int(sample_rate))
        return audio

    def _resample(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(batch, 1, time) at `sample_rate` -> (batch, 1, time') at the model's rate, with soxr (HQ)."""
        signal = audio[:, 0].T.double().cpu().numpy()  # (B, 1, T) -> (T, B): soxr takes channels last
        resampled = soxr.resample(signal, sample_rate, self.sampling_rate, quality="HQ")
        if resampled.shape[0] == 0:
            raise ValueError(
                f"Audio of {signal.shape[0]} samples at {sample_rate} Hz is too short to resample to "
                f"{self.sampling_rate} Hz; it needs at least one output sample."
            )
        return torch.from_numpy(np.ascontiguousarray(resampled.T)).to(audio)[:, None]  # (T, B) -> (B, 1, T)

    def _check_n_quantizers(self, n_quantizers: Optional[int]) -> int:
        if n_quantizers is None:
            return self.config.n_codebooks
        if isinstance(n_quantizers, bool) or not isinstance(n_quantizers, (int, np.integer)) or not (
            1 <= n_quantizers <= self.config.n_codebooks
        ):
            raise ValueError(
                f"`n_quantizers` must be an int in [1, {self.config.n_codebooks}], got {n_quantizers!r}."
            )
        return int(n_quantizers)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"`s` (codes) must be a torch tensor, got {type(codes).__name__}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"`s` (codes) must be an integer tensor, got {codes.dtype}.")
        if codes.dim() == 2:
            codes = codes[None]
        if codes.dim() != 3 or codes.shape[0] == 0 or codes.shape[-1] == 0:
            raise ValueError(
                "`s` (codes) must be shaped (batch, n_codebooks, frames) with batch and frames >= 1, "
                f"got {tuple(codes.shape)}."
            )
        if not 1 <= codes.shape[1] <= self.config.n_codebooks:
            raise ValueError(
                f"`s` (codes) has {codes.shape[1]} codebooks; this model has {self.config.n_codebooks} "
                f"(codes shaped (batch, n_codebooks, frames) may use the first 1 to {self.config.n_codebooks})."
            )
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(
                f"`s` (codes) must lie in [0, {self.config.codebook_size}), got values in [{low}, {high}]."
            )
        return codes.to(self.device, torch.long)

    def _check_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        if not isinstance(z_q, torch.Tensor) or not z_q.is_floating_point():
            raise TypeError(f"`zq` must be a floating point torch tensor, got {getattr(z_q, 'dtype', type(z_q))}.")
        if z_q.dim() == 2:
            z_q = z_q[None]
        if z_q.dim() != 3 or z_q.shape[1] != self.config.latent_dim or z_q.shape[0] == 0 or z_q.shape[-1] == 0:
            raise ValueError(
                f"`zq` must be shaped (batch, {self.config.latent_dim}, frames) with frames >= 1, "
                f"got {tuple(z_q.shape)}."
            )
        if not torch.isfinite(z_q).all():
            raise ValueError("`zq` contains NaN or Inf.")
        return z_q.to(self.device, self.dtype)

    @staticmethod
    def _chunk_frames(value: Optional[float], frames_per_unit: float, name: str) -> int:
        """Chunk size in frames; 0 means no chunking. Seconds for the encoder, whole frames for the decoder."""
        if value is None or value == 0:
            return 0
        kind = (int, float) if frames_per_unit != 1 else int
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0:
            allowed = "a positive number of seconds" if frames_per_unit != 1 else "a positive int (frames)"
            raise ValueError(f"`{name}` must be {allowed} or 0 (no chunking), got {value!r}.")
        return max(1, round(value * frames_per_unit))

    # ----------------------------------------------------------------------------------------------------------
    # Public API
    @torch.inference_mode()
    def encode(
        self,
        audio: AudioInput,
        sample_rate: Optional[int] = None,
        n_quantizers: Optional[int] = None,
        chunk_size_in_sec: Optional[float] = None,
        lengths: Optional[Union[list[int], torch.Tensor]] = None,
    ) -> DacEncoderOutput:
        """Encodes audio into codes.

        Args:
            audio: A path to an audio file, or samples as a numpy array or torch tensor shaped (time,),
                (channels, time) or (batch, channels, time). Channels are mixed down to mono; other sample rates
                are resampled to `config.sampling_rate`.
            sample_rate: Rate of `audio` in Hz; required for raw samples, read from the file for paths.
            n_quantizers: Number of codebooks to use (the bitrate), 1 to `config.n_codebooks`; all by default.
            chunk_size_in_sec: Audio per chunk; `config.encoding_chunk_size_in_sec` by default; 0 for no chunking.
                The codes do not depend on it. On an accelerator, chunks are batched windows (see
                `_encode_windows`), by default as long as BATCH_ELEMENTS allows.
            lengths: For a padded batch (batch, channels, time) of signals of different lengths: the samples of
                each. Each item is then encoded as if alone, and the output carries `frame_lengths`.

        Returns:
            `DacEncoderOutput` (unpacks as `zq, s`): z_q (batch, latent_dim, frames) and codes
            (batch, n_quantizers, frames), frames = ceil(samples / hop_length) at the model's rate.
        """
        if lengths is not None:
            return self._encode_padded_batch(audio, sample_rate, n_quantizers, chunk_size_in_sec, lengths)
        audio = self._prepare_audio(audio, sample_rate)
        n_quantizers = self._check_n_quantizers(n_quantizers)
        given = chunk_size_in_sec is not None
        if not given:
            chunk_size_in_sec = self.config.encoding_chunk_size_in_sec
        chunk = self._chunk_frames(chunk_size_in_sec, self.config.frame_rate, "chunk_size_in_sec")

        if audio.device.type != "cpu":
            return self._encode_windows(audio, n_quantizers, chunk if given else None)
        n_frames = self.num_frames(audio.shape[-1])
        z_q = audio.new_empty(audio.shape[0], self.config.latent_dim, n_frames)
        codes = torch.empty(audio.shape[0], n_quantizers, n_frames, dtype=torch.long, device=audio.device)
        pieces = audio.split(chunk * self.hop_length if chunk else audio.shape[-1], dim=-1)
        done = 0
        for z_q_piece, codes_piece in self._encode_pieces(pieces, n_quantizers, min_frames=QUANTIZE_FRAMES):
            z_q[..., done : done + z_q_piece.shape[-1]] = z_q_piece
            codes[..., done : done + codes_piece.shape[-1]] = codes_piece
            done += codes_piece.shape[-1]
        return DacEncoderOutput(z_q=z_q, codes=codes)

    def _encode_padded_batch(self, audio, sample_rate, n_quantizers, chunk_size_in_sec, lengths) -> DacEncoderOutput:
        """Encodes each item of a padded batch on its own, so padding never leaks into an item's codes."""
        if not isinstance(audio, (np.ndarray, torch.Tensor)) or audio.ndim != 3:
            raise ValueError("`lengths` needs a padded batch shaped (batch, channels, time) as a tensor or array.")
        lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, (torch.Tensor, np.ndarray)) else lengths)]
        if len(lengths) != audio.shape[0] or not all(1 <= n <= audio.shape[-1] for n in lengths):
            raise ValueError(
                f"`lengths` must give one length in [1, {audio.shape[-1]}] per item of the batch of "
                f"{audio.shape[0]}, got {lengths}."
            )
        items = [
            self.encode(audio[i : i + 1, :, :n], sample_rate, n_quantizers, chunk_size_in_sec)
            for i, n in enumerate(lengths)
        ]
        n_frames = max(item.codes.shape[-1] for item in items)
        z_q = items[0].z_q.new_zeros(len(items), items[0].z_q.shape[1], n_frames)
        codes = items[0].codes.new_zeros(len(items), items[0].codes.shape[1], n_frames)
        for i, item in enumerate(items):
            z_q[i, :, : item.z_q.shape[-1]], codes[i, :, : item.codes.shape[-1]] = item.z_q[0], item.codes[0]
        frame_lengths = torch.tensor([item.codes.shape[-1] for item in items], device=codes.device)
        return DacEncoderOutput(z_q=z_q, codes=codes, frame_lengths=frame_lengths)

    @torch.inference_mode()
    def decode(
        self,
        zq: Optional[torch.Tensor] = None,
        s: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        mode: Optional[str] = None,
    ) -> torch.Tensor:
        """Decodes a quantized latent or codes into audio. Give exactly one of `zq` and `s`.

        Args:
            zq: (batch, latent_dim, frames) quantized latent, as `encode` returns.
            s: (batch, n, frames) codes, with the first n <= n_codebooks codebooks.
            chunk_size: Frames per chunk; `config.decoding_chunk_size` by default; 0 for no chunking. On an
                accelerator, chunks are batched windows, by default as long as BATCH_ELEMENTS allows.
            mode: "exact" (default; equal to whole-signal decoding) or "overlap_average" (the seed model card's
                averaged chunks, approximate); `config.decoding_mode` by default.

        Returns:
            (batch, 1, samples) waveform at `config.sampling_rate`, samples = `num_samples(frames)`.
        """
        if (zq is None) == (s is None):
            raise ValueError("Pass exactly one of `zq` (quantized latent) and `s` (codes) to `decode`.")
        mode = mode if mode is not None else self.config.decoding_mode
        if mode not in DECODING_MODES:
            raise ValueError(f"`mode` must be one of {DECODING_MODES}, got {mode!r}.")
        chunk = self._decode_chunk(chunk_size)
        if mode == "exact" and self.device.type != "cpu":
            return self._decode_windows(zq, s, chunk if chunk_size is not None else None)
        if mode == "overlap_average":
            z_q = self._check_latent(zq) if zq is not None else self.quantizer.from_codes(self._check_codes(s))
            hop, n_frames = self.hop_length, z_q.shape[-1]
            audio = z_q.new_zeros(z_q.shape[0], 1, self.num_samples(n_frames))
            weight = torch.zeros_like(audio)
            for start, stop in plan_overlap_chunks(n_frames, chunk, self.config.decoding_overlap_rate):
                y = self.decoder(z_q[..., start:stop])
                audio[..., start * hop : start * hop + y.shape[-1]] += y
                weight[..., start * hop : start * hop + y.shape[-1]] += 1
            return audio.div_(weight)

        pieces, batch, n_frames = self._latent_pieces(zq, s, chunk)
        audio = torch.empty(batch, 1, self.num_samples(n_frames), dtype=self.dtype, device=self.device)
        done = 0
        for piece in self._decode_pieces(pieces):
            audio[..., done : done + piece.shape[-1]] = piece
            done += piece.shape[-1]
        assert done == audio.shape[-1], (done, audio.shape)
        return audio

    @torch.inference_mode()
    def decode_to_audiofile(
        self,
        path: Union[str, os.PathLike],
        zq: Optional[torch.Tensor] = None,
        s: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
    ) -> None:
        """Decodes straight into an audio file (format by extension), holding no more than a chunk of audio:
        an hour of codes decodes in the memory of a chunk. Same arguments and result as `decode` (exact mode)."""
        pieces, batch, _ = self._latent_pieces(zq, s, self._decode_chunk(chunk_size))
        if batch != 1:
            raise ValueError(f"`decode_to_audiofile` writes one signal; got a batch of {batch}: decode each item.")
        with soundfile.SoundFile(path, "w", samplerate=self.sampling_rate, channels=1) as file:
            for piece in self._decode_pieces(pieces):
                file.write(piece[0, 0].float().cpu().numpy())

    def _decode_chunk(self, chunk_size: Optional[int]) -> int:
        return self._chunk_frames(
            self.config.decoding_chunk_size if chunk_size is None else chunk_size, 1, "chunk_size"
        )

    def _latent_pieces(self, zq: Optional[torch.Tensor], s: Optional[torch.Tensor], chunk: int):
        """Checks `zq` / `s` and splits them into latent pieces of `chunk` frames (all at once for 0). Codes
        become latents piece by piece, so a long signal's z_q is never held whole. Returns (pieces, batch, frames)."""
        if (zq is None) == (s is None):
            raise ValueError("Pass exactly one of `zq` (quantized latent) and `s` (codes).")
        if zq is not None:
            z_q = self._check_latent(zq)
            return z_q.split(chunk or z_q.shape[-1], dim=-1), z_q.shape[0], z_q.shape[-1]
        codes = self._check_codes(s)
        pieces = (self.quantizer.from_codes(piece) for piece in codes.split(chunk or codes.shape[-1], dim=-1))
        return pieces, codes.shape[0], codes.shape[-1]

    def _window_batches(
        self, n_frames: int, chunk: Optional[int], context: tuple[int, int], per_frame: int, batch: int
    ) -> tuple[list, int]:
        """Batches of `plan_context_windows` for `n_frames` frames, each batch's widest activation (`per_frame`
        elements a frame and item) within BATCH_ELEMENTS. `chunk`: frames kept per window; 0 for one window;
        None for windows as long as the budget allows. Returns (list of batches of windows, window length)."""
        if chunk is None:
            chunk = max(1, BATCH_ELEMENTS // (per_frame * batch) - sum(context))
        chunk = max(chunk or n_frames, MIN_CHUNK_OVER_CONTEXT * sum(context))
        windows = plan_context_windows(n_frames, chunk, *context)
        length = min(n_frames, chunk + sum(context))
        size = max(1, BATCH_ELEMENTS // (length * per_frame * batch))
        return [windows[i : i + size] for i in range(0, len(windows), size)], length

    def _encode_windows(self, audio: torch.Tensor, n_quantizers: int, chunk: Optional[int]) -> DacEncoderOutput:
        """`encode` of model-rate audio (batch, 1, time) as batches of windows with receptive-field context: on an
        accelerator one wide batch beats many small streaming steps. Equals whole-signal encoding."""
        hop, batch = self.hop_length, audio.shape[0]
        n_frames = self.num_frames(audio.shape[-1])
        audio = nn.functional.pad(audio, (0, n_frames * hop - audio.shape[-1]))  # as the reference's preprocess
        per_frame = self.config.encoder_dim * hop  # the first block's activations are the widest
        batches, length = self._window_batches(n_frames, chunk, self._encoder_context, per_frame, batch)
        z = audio.new_empty(batch, self.config.latent_dim, n_frames)
        for windows in batches:
            x = torch.cat([audio[..., start * hop : (start + length) * hop] for start, _, _ in windows])
            y = self.encoder(x).view(len(windows), batch, -1, length)  # (K * B, D, length) -> (K, B, D, length)
            for (start, keep, stop), y_k in zip(windows, y):
                z[..., keep:stop] = y_k[..., keep - start : stop - start]
        z_q, codes = zip(*(self.quantizer(piece, n_quantizers) for piece in z.split(64 * QUANTIZE_FRAMES, -1)))
        return DacEncoderOutput(z_q=torch.cat(z_q, -1), codes=torch.cat(codes, -1))

    def _decode_windows(
        self, zq: Optional[torch.Tensor], s: Optional[torch.Tensor], chunk: Optional[int]
    ) -> torch.Tensor:
        """`decode` (exact mode) as batches of windows with receptive-field context; see `_encode_windows`."""
        if zq is not None:
            z_q = self._check_latent(zq)
            latent, batch, n_frames = (lambda a, b: z_q[..., a:b]), z_q.shape[0], z_q.shape[-1]
        else:
            codes = self._check_codes(s)
            latent, batch, n_frames = (lambda a, b: self.quantizer.from_codes(codes[..., a:b])), *codes.shape[::2]
        hop = self.hop_length
        per_frame = max(  # the widest activation: (channels, samples a frame) after each block
            block.res_unit1.conv1.out_channels * math.prod(self.config.decoder_rates[: i + 1])
            for i, block in enumerate(self.decoder.block)
        )
        batches, length = self._window_batches(n_frames, chunk, self._decoder_context, per_frame, batch)
        audio = torch.empty(batch, 1, self.num_samples(n_frames), dtype=self.dtype, device=self.device)
        for windows in batches:
            z = torch.cat([latent(start, start + length) for start, _, _ in windows])
            y = self.decoder(z).view(len(windows), batch, 1, -1)  # (K * B, 1, t) -> (K, B, 1, t)
            for (start, keep, stop), y_k in zip(windows, y):
                end = min(stop * hop, audio.shape[-1])  # the last frames of 16 and 24 kHz are 8 samples short
                audio[..., keep * hop : end] = y_k[..., (keep - start) * hop : end - start * hop]
        return audio

    def _encode_pieces(
        self, pieces: Iterable[torch.Tensor], n_quantizers: int, min_frames: int = 0
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """(z_q, codes) of the frames that each piece of model-rate audio (batch, 1, t) completes.

        The encoder runs as a stream (`Encoder.step`), so the result equals whole-signal encoding. Latent frames
        are quantized in groups of at least `min_frames` (0: as soon as they come), since the quantizer's many
        small projections cost more per frame on short inputs.
        """
        cache, received, piece, pending = {}, 0, None, []

        def quantize(final: bool):
            if pending and (final or sum(z.shape[-1] for z in pending) >= min_frames):
                z = torch.cat(pending, dim=-1) if len(pending) > 1 else pending[0]
                pending.clear()
                yield self.quantizer(z, n_quantizers)

        for piece in pieces:
            received += piece.shape[-1]
            for z in self.encoder.step(piece, cache, final=False):
                pending.append(z)
                yield from quantize(final=False)
        if piece is None:
            raise ValueError("The audio stream held no blocks; it needs at least one sample.")
        # The end of the signal, padded to whole frames as the reference's preprocess does.
        end = piece.new_zeros(*piece.shape[:-1], -received % self.hop_length)
        for z in self.encoder.step(end, cache, final=True):
            if z.shape[-1]:
                pending.append(z)
        yield from quantize(final=True)

    def _decode_pieces(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The audio (batch, 1, t) that each piece of latent frames (batch, latent_dim, n) completes."""
        cache, piece = {}, None
        for piece in pieces:
            yield from self.decoder.step(piece, cache, final=False)
        if piece is None:
            raise ValueError("The code stream held no blocks; it needs at least one frame.")
        yield from self.decoder.step(piece[..., :0], cache, final=True)

    @torch.inference_mode()
    def encode_stream(
        self,
        blocks: Iterable[Union[np.ndarray, torch.Tensor]],
        sample_rate: Optional[int] = None,
        n_quantizers: Optional[int] = None,
        chunk_size_in_sec: Optional[float] = None,
    ) -> Iterator[torch.Tensor]:
        """Encodes audio that arrives in blocks, yielding codes as soon as they are determined.

        The codes, concatenated along time, equal `encode` of the whole signal. A frame is yielded as soon as the
        audio reaches the end of its receptive field: `stream_latency["encode"]` past the frame's end.

        Args:
            blocks: Samples at the model's rate, each shaped (time,), (channels, time) or (batch, channels, time);
                blocks may have any length, including less than a frame.
            sample_rate: Rate of the blocks; must be `config.sampling_rate` (resample before streaming).
            n_quantizers: Codebooks to use; all by default.
            chunk_size_in_sec: At most this much audio is encoded per step (bounds memory); config by default.

        Yields:
            Codes (batch, n_quantizers, frames) for the frames determined so far and not yet yielded.
        """
        if sample_rate != self.sampling_rate:
            raise ValueError(
                f"`encode_stream` takes blocks at the model's rate: pass `sample_rate={self.sampling_rate}` "
                f"(got {sample_rate!r}), resampling the audio beforehand if needed."
            )
        n_quantizers = self._check_n_quantizers(n_quantizers)
        if chunk_size_in_sec is None:
            chunk_size_in_sec = self.config.encoding_chunk_size_in_sec
        chunk = self._chunk_frames(chunk_size_in_sec, self.config.frame_rate, "chunk_size_in_sec")
        audio = (self._prepare_audio(block, sample_rate) for block in blocks)
        pieces = (piece for block in audio for piece in block.split(chunk * self.hop_length or block.shape[-1], -1))
        for _, codes in self._encode_pieces(pieces, n_quantizers):
            yield codes

    @torch.inference_mode()
    def decode_stream(self, blocks: Iterable[torch.Tensor], chunk_size: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Decodes codes that arrive in blocks of frames, yielding audio as soon as it is determined.

        The audio, concatenated along time, equals `decode(s=...)` of all the codes. Each sample is yielded as soon
        as the codes reach the end of its receptive field (`stream_latency["decode"]`).

        Args:
            blocks: Codes shaped (batch, n, frames), n <= n_codebooks, the same n in every block.
            chunk_size: At most this many frames are decoded per step (bounds memory); config by default.

        Yields:
            Audio (batch, 1, samples) for the frames determined so far and not yet yielded.
        """
        chunk = self._decode_chunk(chunk_size)
        codes = (piece for block in blocks for piece in self._check_codes(block).split(chunk or block.shape[-1], -1))
        yield from self._decode_pieces(self.quantizer.from_codes(piece) for piece in codes)

    @property
    def stream_latency(self) -> dict[str, float]:
        """Lookahead of the streams in seconds. `encode_stream` yields a frame's codes once the audio reaches
        this far past the frame's end; `decode_stream` yields all of a frame's audio once the codes reach this
        far past the frame."""
        _, last_sample = input_span(self._encoder_geometry, 0, 0)
        _, last_frame = input_span(self._decoder_geometry, 0, self.hop_length - 1)
        return {
            "encode": (last_sample + 1 - self.hop_length) / self.sampling_rate,
            "decode": last_frame / self.config.frame_rate,
        }

    def forward(
        self,
        input_values: torch.Tensor,
        n_quantizers: Optional[int] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[DacOutput, tuple]:
        """Encode-decode round trip of model-rate audio (batch, 1, samples), whole-signal, as the reference's
        `forward`. The reconstruction is cropped to the input's length; like the reference, the 16 and 24 kHz
        models return up to 8 samples less when the length is within 8 samples of a multiple of the hop."""
        if input_values.dim() != 3 or input_values.shape[1] != 1:
            raise ValueError(f"`input_values` must be (batch, 1, samples), got {tuple(input_values.shape)}.")
        length = input_values.shape[-1]
        n_quantizers = self._check_n_quantizers(n_quantizers)
        x = nn.functional.pad(input_values, (0, self.num_frames(length) * self.hop_length - length))
        z_q, codes = self.quantizer(self.encoder(x), n_quantizers)
        audio = self.decoder(z_q)[..., :length]
        output = DacOutput(audio=audio, codes=codes, z_q=z_q)
        return output if return_dict is not False else output.to_tuple()

    # ----------------------------------------------------------------------------------------------------------
    # Files
    def waveform_to_audiofile(self, waveform: torch.Tensor, path: Union[str, os.PathLike]) -> None:
        """Writes a (1, 1, samples), (1, samples) or (samples,) waveform to an audio file at the model's rate;
        the format follows the extension (.wav, .flac, .ogg, ...)."""
        if not isinstance(waveform, torch.Tensor):
            raise TypeError(f"`waveform` must be a torch tensor, got {type(waveform).__name__}.")
        if waveform.numel() != waveform.shape[-1] or waveform.numel() == 0:
            raise ValueError(
                f"`waveform` must hold one mono signal, (1, 1, samples), got {tuple(waveform.shape)}; "
                "write each item of a batch separately."
            )
        soundfile.write(path, waveform.detach().reshape(-1).float().cpu().numpy(), self.sampling_rate)

    @staticmethod
    def save_tensor(tensor: torch.Tensor, path: Union[str, os.PathLike]) -> None:
        """Saves codes or a latent: safetensors for a `.safetensors` path, else `torch.save`."""
        if os.fspath(path).endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({"tensor": tensor.detach().contiguous().cpu()}, path)
        else:
            torch.save(tensor.detach().cpu(), path)

    @staticmethod
    def load_tensor(path: Union[str, os.PathLike]) -> torch.Tensor:
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
            raise ValueError(
                f"Could not load {os.fspath(path)!r} as a tensor without unpickling code: {error}"
            ) from error
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{os.fspath(path)!r} holds a {type(tensor).__name__}, not a tensor.")
        return tensor


__all__ = ["DacConfig", "DacModel", "DacEncoderOutput", "DacOutput", "load_audio"]
