"""DAC as a transformers `PreTrainedModel`: audio in, residual-vector-quantized codes out, and back.

    model = AutoModel.from_pretrained(repo_or_folder, trust_remote_code=True)
    zq, s = model.encode("speech.wav")        # z_q (1, latent_dim, frames), codes (1, n_codebooks, frames)
    waveform = model.decode(s=s)              # (1, 1, samples)
    model.waveform_to_audiofile(waveform, "out.wav")

`DacModel` is the user-facing API and checks what it is given. The layers are in dac_layers.py, the chunked and
streamed strategies in chunking.py, files and input preparation in audio_io.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .audio_io import (
    AudioInput,
    PathLike,
    check_blocks,
    check_lengths,
    check_same_shape,
    check_sample_rate,
    check_tensor,
    load_audio,
    load_tensor,
    prepare_audio,
    prepare_blocks,
    save_tensor,
    write_audio,
    write_audio_pieces,
)
from .chunking import (
    BATCH_ELEMENTS,
    PACK_BATCHES,
    PACK_CHUNKS,
    PACKED,
    STREAM,
    CodecGeometry,
    Latents,
    choose_strategy,
    decode_blocks,
    decode_overlap_average,
    decode_packed,
    decode_streamed,
    decode_unpadded,
    decode_windows,
    encode_blocks,
    encode_packed,
    encode_streamed,
    encode_windows,
    plan_overlap_chunks,
    stack_padded,
    stream_decode,
)
from .configuration_dac import DECODING_MODES, DacConfig, check_chunk_size, check_int
from .dac_layers import Decoder, Encoder, ResidualVectorQuantize, Snake1d, apply_weight_norm, remove_weight_norm
from .streaming import ChainStep, Clock, Signal, bf16_products


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
    """Output of `DacModel.forward` (encode then decode), the reference's training outputs.

    Args:
        audio: (batch, 1, samples) reconstruction, cropped to the input's length (up to 8 samples short at 16 and
            24 kHz, as in the reference; see `forward`).
        codes: (batch, n_quantizers, frames) codebook indices.
        z_q: (batch, latent_dim, frames) quantized latent.
        latents: (batch, n_quantizers * codebook_dim, frames) each codebook's projected latent z_e, before lookup.
        commitment_loss: Scalar, summed over codebooks: the batch mean of each one's mean squared distance from z_e
            to its codebook entries, with the gradient to the encoder.
        codebook_loss: Scalar, the same distance with the gradient to the codebooks.
        loss: `config.commitment_loss_weight * commitment_loss + config.codebook_loss_weight * codebook_loss`, as
            transformers' `DacModel` defines it; the reconstruction and adversarial losses are the trainer's.
    """

    audio: Optional[torch.Tensor] = None
    codes: Optional[torch.Tensor] = None
    z_q: Optional[torch.Tensor] = None
    latents: Optional[torch.Tensor] = None
    commitment_loss: Optional[torch.Tensor] = None
    codebook_loss: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None


class DacModel(PreTrainedModel):
    """The Descript Audio Codec: an encoder, a residual vector quantizer and a decoder (Kumar et al., 2023).

    `encode` and `decode` take audio and codes in any common form and process long signals in chunks whose result
    equals whole-signal processing; `encode_stream` and `decode_stream` do the same for signals that arrive in
    blocks; `forward` is the plain encode-decode round trip for training.
    """

    config_class = DacConfig
    base_model_prefix = "dac"
    main_input_name = "input_values"
    _keep_in_fp32_modules_strict = ["quantizer"]  # it decides the codes (see `ResidualVectorQuantize`)

    def __init__(self, config: DacConfig):
        super().__init__(config)
        self.encoder = Encoder(config.encoder_dim, config.encoder_rates, config.latent_dim)
        self.quantizer = ResidualVectorQuantize(
            config.latent_dim, config.n_codebooks, config.codebook_size, config.codebook_dim, config.quantizer_dropout
        )
        self.decoder = Decoder(config.latent_dim, config.decoder_dim, config.decoder_rates)
        self.geometry = CodecGeometry.of(self.encoder, self.decoder, config.hop_length)
        self.post_init()
        self.eval()

    def _init_weights(self, module: nn.Module) -> None:
        # As the reference initialises: truncated normal convolutions, zero biases, unit Snake frequencies.
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Snake1d):
            nn.init.ones_(module.alpha)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' `from_pretrained`, strict: a weight missing from the checkpoint, one it has too much or
        of another shape, or a damaged weights file is a `ValueError` that names the checkpoint (transformers would
        initialise what is missing at random and go on)."""
        from safetensors import SafetensorError

        wants_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # reported below, with the rest, rather than raised mid-load
        try:
            loaded: Any = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        except SafetensorError as error:
            raise ValueError(f"The weights of {os.fspath(pretrained_model_name_or_path)!r} are damaged or truncated "
                             f"({str(error).strip().splitlines()[0]}).") from None
        model, info = loaded
        problems = {what: sorted(str(k[0] if isinstance(k, tuple) else k) for k in info[key])
                    for what, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                                      ("mis-shaped", "mismatched_keys")) if info.get(key)}
        if problems or info.get("error_msgs"):
            found = "; ".join(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                              for what, names in problems.items()) or info["error_msgs"][0]
            raise ValueError(f"The weights of {os.fspath(pretrained_model_name_or_path)!r} do not fit its config: "
                             f"{found}.")
        # safetensors may hand out views at any byte offset of the file; oneDNN picks other kernels (other float
        # rounding, less speed) for unaligned weights, so give every parameter its own aligned storage.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.data_ptr() % 64:
                    parameter.data = parameter.data.clone()
        return (model, info) if wants_info else model

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` samples at the model's rate: ceil(num_samples / hop_length)."""
        return self.geometry.num_frames(num_samples)

    def num_samples(self, num_frames: int) -> int:
        """Samples that `decode` returns for `num_frames` frames (hop_length * frames, less 8 at 16 and 24 kHz)."""
        return self.geometry.num_samples(num_frames)

    @property
    def stream_latency(self) -> dict[str, float]:
        """Lookahead of the streams in seconds: `encode_stream` yields a frame's codes once the audio reaches this
        far past the frame's end, `decode_stream` all of a frame's audio once the codes reach this far past it."""
        return {"encode": self.geometry.encoder_lookahead / self.sampling_rate,
                "decode": self.geometry.decoder_lookahead / self.config.frame_rate}

    @staticmethod
    def takes_bf16_products(device: Union[str, torch.device] = "cpu") -> bool:
        """Whether float32 calls on `device` take bf16 products now, where they decide no codes: on a CPU whose
        oneDNN takes them (AMX), under `torch.set_float32_matmul_precision("medium")`. Elsewhere that setting leaves
        the CPU's float32 calls as they were."""
        return bf16_products(torch.device(device))

    def apply_weight_norm(self) -> None:
        """Re-parametrizes every convolution with weight norm for fine-tuning, as the reference trains."""
        apply_weight_norm(self)

    def remove_weight_norm(self) -> None:
        """Folds weight norm back into plain weights; do this before `save_pretrained`."""
        remove_weight_norm(self)

    # ----------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(
        self,
        audio: AudioInput,
        sample_rate: Optional[int] = None,
        n_quantizers: Optional[int] = None,
        chunk_size_in_sec: Optional[float] = None,
        lengths: Optional[Union[list[int], torch.Tensor, np.ndarray]] = None,
    ) -> DacEncoderOutput:
        """Encodes audio into codes.

        Args:
            audio: A path to an audio file, or samples in [-1, 1] as a numpy array or torch tensor shaped (time,),
                (channels, time) or (batch, channels, time). Channels are mixed down to mono; other sample rates
                are resampled to `config.sampling_rate`.
            sample_rate: Rate of `audio` in Hz; required for samples, read from the file for paths.
            n_quantizers: Number of codebooks to use (the bitrate), 1 to `config.n_codebooks`; all by default.
            chunk_size_in_sec: Audio per chunk; `config.encoding_chunk_size_in_sec` by default; 0 for no chunking.
                The codes do not depend on it. On an accelerator, chunks run as batched windows, by default as long
                as memory allows; on the CPU, short signals run as one plain pass unless a chunk size is given.
            lengths: For a zero-padded batch (batch, channels, time) of signals of different lengths: the samples
                of each. Each item is then encoded as if alone, and the output carries `frame_lengths`.

        Returns:
            `DacEncoderOutput` (unpacks as `zq, s`): z_q (batch, latent_dim, frames) and codes
            (batch, n_quantizers, frames), frames = ceil(samples / hop_length) at the model's rate.
        """
        if lengths is not None:
            batch: Any = audio  # check_lengths: a tensor or array (batch, channels, time)
            lengths = check_lengths(lengths, batch)
            items = self.encode_many([batch[i : i + 1, :, :n] for i, n in enumerate(lengths)], sample_rate,
                                     n_quantizers, chunk_size_in_sec)
            return DacEncoderOutput(*stack_padded([(item.z_q, item.codes) for item in items]))  # type: ignore[misc]
        n_quantizers = self.check_n_quantizers(n_quantizers)
        chunk_frames = self._chunk_frames("chunk_size_in_sec", chunk_size_in_sec)
        audio = prepare_audio(audio, sample_rate, self.sampling_rate).to(self.device, self.dtype)
        widest = audio.shape[0] * self.num_frames(audio.shape[-1]) * self.geometry.encoder_width
        given = chunk_size_in_sec is not None
        if choose_strategy(self.device.type, widest, given) == STREAM:
            return DacEncoderOutput(*encode_streamed(self.encoder, self.quantizer, audio, n_quantizers, chunk_frames,
                                                     self.geometry))
        return DacEncoderOutput(*encode_windows(self.encoder, self.quantizer, audio, n_quantizers,
                                                chunk_frames if given else None, self.geometry))

    @torch.inference_mode()
    def encode_many(
        self,
        signals: Sequence[AudioInput],
        sample_rate: Optional[int] = None,
        n_quantizers: Optional[int] = None,
        chunk_size_in_sec: Optional[float] = None,
    ) -> list[DacEncoderOutput]:
        """Encodes many signals of any lengths, each as `encode` encodes it alone: on the CPU one at a time; on an
        accelerator their windows are packed into shared batches (give a call about `pack_frames("encode")` frames
        of audio to fill them), each signal's windows cut from it alone, so padding never reaches a code.

        Args:
            signals: Each one signal, as `encode` takes it: a path, or samples shaped (time,) or (channels, time)
                (or (1, channels, time)).
            sample_rate, n_quantizers, chunk_size_in_sec: As for `encode`, the same for every signal.

        Returns:
            A `DacEncoderOutput` per signal, z_q (1, latent_dim, frames_i) and codes (1, n_quantizers, frames_i).
        """
        n_quantizers = self.check_n_quantizers(n_quantizers)
        if choose_strategy(self.device.type, signals=len(signals)) != PACKED:
            return [self.encode(signal, sample_rate, n_quantizers, chunk_size_in_sec) for signal in signals]
        prepared = []
        for index, signal in enumerate(signals):
            audio = prepare_audio(signal, sample_rate, self.sampling_rate)
            if audio.shape[0] != 1:
                raise ValueError(f"`signals[{index}]` holds a batch of {audio.shape[0]}; each signal must be one.")
            prepared.append(audio.to(self.device, self.dtype))
        tiers: tuple[int, ...] = PACK_CHUNKS
        if chunk_size_in_sec is not None:  # windows of the given chunk; 0: each signal one window
            tiers = (self._chunk_frames("chunk_size_in_sec", chunk_size_in_sec) or max(self.num_frames(x.shape[-1])
                                                                                       for x in prepared),)
        items = encode_packed(self.encoder, self.quantizer, prepared, n_quantizers, self.geometry, tiers)
        return [DacEncoderOutput(z_q, codes) for z_q, codes in items]

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
                accelerator, chunks run as batched windows, by default as long as memory allows; on the CPU, short
                signals run as one plain pass unless a chunk size is given.
            mode: "exact" (equal to whole-signal decoding), "overlap_average" (the earlier model card's averaged
                chunks, approximate) or "unpadded" (the original package's windowed `.dac` files: each chunk of
                `chunk_size` frames decoded on its own with the convolutions' padding off, as the original decodes
                them; the audio is the chunks' one after another); `config.decoding_mode` by default.

        Returns:
            (batch, 1, samples) waveform at `config.sampling_rate`, samples = `num_samples(frames)`.
        """
        latents, mode = self._latents(zq, s), self._mode(mode)
        chunk_frames = self._chunk_frames("chunk_size", chunk_size)
        if mode == "overlap_average":
            return decode_overlap_average(self.decoder, latents, chunk_frames, self.config.decoding_overlap_rate,
                                          self.geometry)
        if mode == "unpadded":
            self._check_unpadded(latents, chunk_frames)
            return torch.cat([decode_unpadded(self.decoder, z_q) for z_q in latents.chunks(chunk_frames)], dim=-1)
        widest = latents.batch * latents.frames * self.geometry.decoder_width
        given = chunk_size is not None
        if choose_strategy(self.device.type, widest, given, direction="decode") == STREAM:
            return decode_streamed(self.decoder, latents, chunk_frames, self.geometry)
        return decode_windows(self.decoder, latents, chunk_frames if given else None, self.geometry)

    @torch.inference_mode()
    def decode_many(self, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decodes many codes of any lengths, each as `decode(s=...)` decodes it alone: on the CPU one at a time; on an
        accelerator their windows packed into shared batches (give a call about `pack_frames("decode")` frames).

        Args:
            codes: Each (1, n, frames_i) or (n, frames_i) codes, n <= n_codebooks.

        Returns:
            Audio (1, 1, num_samples(frames_i)) for each.
        """
        checked = [self._codes(c, f"codes[{i}]") for i, c in enumerate(codes)]
        for index, c in enumerate(checked):
            if c.shape[0] != 1:
                raise ValueError(f"`codes[{index}]` holds a batch of {c.shape[0]}; each must be one signal's codes.")
        if choose_strategy(self.device.type, signals=len(checked)) != PACKED:
            return [self.decode(s=c) for c in checked]
        return decode_packed(self.decoder, self.quantizer, checked, self.geometry)

    def pack_frames(self, direction: str = "encode") -> int:
        """Frames of signals (`direction` "encode") or of codes ("decode") that one `encode_many` or `decode_many`
        call takes to fill its batches on the model's device; 0 where signals run one at a time (the CPU)."""
        if direction not in ("encode", "decode"):
            raise ValueError(f"`direction` must be 'encode' or 'decode', got {direction!r}.")
        if choose_strategy(self.device.type, signals=2) != PACKED:
            return 0
        width = self.geometry.encoder_width if direction == "encode" else self.geometry.decoder_width
        return PACK_BATCHES * BATCH_ELEMENTS // width

    @torch.inference_mode()
    def decode_to_audiofile(
        self,
        path: PathLike,
        zq: Optional[torch.Tensor] = None,
        s: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        mode: Optional[str] = None,
    ) -> None:
        """Decodes straight into an audio file, for one signal (batch 1); a failed decode leaves no file.

        Args:
            path: The file to write, its format by extension (.wav, .flac, .ogg, ...); its folder must exist.
            zq, s, chunk_size, mode: As for `decode`. In exact and unpadded modes no more than a chunk of audio is
                held, so an hour of codes decodes in the memory of a chunk; "overlap_average" decodes the whole
                signal first.
        """
        latents, mode = self._latents(zq, s), self._mode(mode)
        chunk_frames = self._chunk_frames("chunk_size", chunk_size)
        if latents.batch != 1:
            raise ValueError(f"`decode_to_audiofile` writes one signal; got a batch of {latents.batch}: decode "
                             "each item.")
        pieces: Iterable[torch.Tensor]
        if mode == "overlap_average":
            pieces = (self.decode(zq, s, chunk_size, mode) for _ in range(1))  # lazily: the file is checked first
        elif mode == "unpadded":
            self._check_unpadded(latents, chunk_frames)
            pieces = (decode_unpadded(self.decoder, z_q) for z_q in latents.chunks(chunk_frames))
        else:
            pieces = stream_decode(self.decoder, latents.chunks(chunk_frames), last_ends=True)
        write_audio_pieces(path, pieces, self.sampling_rate)

    def encode_stream(
        self,
        blocks: Iterable[Union[np.ndarray, torch.Tensor]],
        sample_rate: int,
        n_quantizers: Optional[int] = None,
        chunk_size_in_sec: Optional[float] = None,
    ) -> Iterator[torch.Tensor]:
        """Encodes audio that arrives in blocks, yielding codes as soon as they are determined.

        The codes, concatenated along time, equal `encode` of the whole signal. A frame is yielded once the audio
        reaches `stream_latency["encode"]` past the frame's end (at the model's rate).

        Args:
            blocks: Samples shaped (time,), (channels, time) or (batch, channels, time), each of any length (empty
                too), all with the first block's batch size and channels.
            sample_rate: Rate of the blocks in Hz; other rates than the model's are resampled as a stream.
            n_quantizers: Codebooks to use; all by default.
            chunk_size_in_sec: At most this much audio is encoded per step (bounds memory); config by default.

        Yields:
            Codes (batch, n_quantizers, frames) for the frames determined so far and not yet yielded.
        """
        blocks = check_blocks(blocks)
        n_quantizers = self.check_n_quantizers(n_quantizers)
        chunk_samples = self._chunk_frames("chunk_size_in_sec", chunk_size_in_sec) * self.hop_length
        audio = prepare_blocks(blocks, check_sample_rate(sample_rate), self.sampling_rate)
        return self._encode_stream(audio, n_quantizers, chunk_samples)

    @torch.inference_mode()
    def _encode_stream(self, audio: Iterator[torch.Tensor], n_quantizers: int,
                       chunk_samples: int) -> Iterator[torch.Tensor]:
        audio = (block.to(self.device, self.dtype) for block in audio)
        yield from encode_blocks(self.encoder, self.quantizer, audio, n_quantizers, chunk_samples, self.hop_length)

    def decode_stream(self, blocks: Iterable[torch.Tensor], chunk_size: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Decodes codes that arrive in blocks of frames, yielding audio as soon as it is determined.

        The audio, concatenated along time, equals `decode(s=...)` of all the codes. Each sample is yielded once
        the codes reach the end of its receptive field (`stream_latency["decode"]`).

        Args:
            blocks: Codes shaped (batch, n, frames), n <= n_codebooks, each of any length (empty too), all with the
                first block's batch size and n.
            chunk_size: At most this many frames are decoded per step (bounds memory); config by default.

        Yields:
            Audio (batch, 1, samples) for the frames determined so far and not yet yielded.
        """
        return self._decode_stream(check_blocks(blocks), self._chunk_frames("chunk_size", chunk_size))

    @torch.inference_mode()
    def _decode_stream(self, blocks: Iterator[torch.Tensor], chunk_frames: int) -> Iterator[torch.Tensor]:
        codes = (self._codes(block, f"block {i}", allow_empty=True) for i, block in enumerate(blocks))
        yield from decode_blocks(self.decoder, self.quantizer, check_same_shape(codes, "codebooks"), chunk_frames)

    def forward(
        self, input_values: torch.Tensor, n_quantizers: Optional[int] = None, return_dict: Optional[bool] = None
    ) -> Union[DacOutput, tuple]:
        """Encode-decode round trip of model-rate audio, whole-signal, as the reference's `forward`; in training
        mode with its quantizer dropout, losses and gradients.

        Args:
            input_values: (batch, 1, samples) float audio at `config.sampling_rate`.
            n_quantizers: Codebooks to use; all by default. The reference ignores it in training mode; here it
                holds in both modes (training at a fixed bitrate then works), with dropout drawing below it.
            return_dict: False for a tuple (audio, codes, z_q, latents, commitment_loss, codebook_loss, loss).

        Returns:
            `DacOutput`. The reconstruction is cropped to the input's length; like the reference, the 16 and 24 kHz
            models return up to 8 samples less when the length is within 8 samples of a multiple of the hop.
        """
        x = check_tensor(input_values, "input_values")
        if not x.is_floating_point() or x.dim() != 3 or x.shape[1] != 1 or 0 in x.shape:
            raise (ValueError if x.is_floating_point() else TypeError)(
                f"`input_values` must be float audio shaped (batch, 1, samples), got {x.dtype} {tuple(x.shape)}."
            )
        length, n_quantizers = x.shape[-1], self.check_n_quantizers(n_quantizers)
        x = nn.functional.pad(x, (0, self.num_frames(length) * self.hop_length - length))
        q = self.quantizer(self.encoder(x), n_quantizers)
        weights = self.config.commitment_loss_weight, self.config.codebook_loss_weight
        loss = None if q.commitment_loss is None else weights[0] * q.commitment_loss + weights[1] * q.codebook_loss
        output = DacOutput(audio=self.decoder(q.z_q)[..., :length], codes=q.codes, z_q=q.z_q, latents=q.latents,
                           commitment_loss=q.commitment_loss, codebook_loss=q.codebook_loss, loss=loss)
        return output if return_dict is not False else output.to_tuple()

    def overlap_chunks(self, n_frames: int, chunk_size: Optional[int] = None) -> list[tuple[int, int]]:
        """Frame ranges [start, stop) that `decode(..., mode="overlap_average")` decodes for `n_frames` frames in
        chunks of `chunk_size` frames (`config.decoding_chunk_size` by default), neighbours overlapping by
        `config.decoding_overlap_rate`."""
        return list(plan_overlap_chunks(n_frames, self._chunk_frames("chunk_size", chunk_size),
                                        self.config.decoding_overlap_rate))

    def graphs(self) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder) as two plain modules of whole-signal tensor maths, for tracing and export (ONNX):
        `encoder(input_values)` maps (batch, 1, samples) model-rate audio to codes (batch, n_codebooks, frames) as
        `encode(audio, chunk_size_in_sec=0)` does; `decoder(audio_codes)` maps codes to (batch, 1, frames * hop)
        audio as `decode(s=codes, chunk_size=0)` does. They share this model's weights."""
        return CodesEncoder(self), CodesDecoder(self)

    def step_graphs(self, block_frames: int = 4) -> tuple["StepGraph", "StepGraph"]:
        """(encoder, decoder) as fixed-block streams with explicit state, for export (ONNX): each call takes
        `block_frames` frames of input (`block_frames * hop_length` samples for the encoder), the stream state and
        position, and returns that block's outputs and the next state and position. See `StepGraph`."""
        block_frames = check_int("block_frames", block_frames)
        return EncoderStepGraph(self, block_frames), DecoderStepGraph(self, block_frames)

    # ----------------------------------------------------------------------------------------------------------
    # Argument checks
    def check_n_quantizers(self, n_quantizers: Optional[int]) -> int:
        """A codebook count for this model: `n_quantizers` checked to be an int in [1, n_codebooks], or all of them
        for None. A bool or float is a TypeError, an int out of range a ValueError."""
        if n_quantizers is None:
            return self.config.n_codebooks
        allowed = f"`n_quantizers` must be an int in [1, {self.config.n_codebooks}], got {n_quantizers!r}."
        if isinstance(n_quantizers, bool) or not isinstance(n_quantizers, Integral):
            raise TypeError(allowed)
        if not 1 <= n_quantizers <= self.config.n_codebooks:
            raise ValueError(allowed)
        return int(n_quantizers)

    def _chunk_frames(self, name: str, value: Optional[float]) -> int:
        """A call's chunk size (the config's if None) in frames; 0 for no chunking."""
        if name == "chunk_size":
            return int(check_chunk_size(name, self.config.decoding_chunk_size if value is None else value, "frames"))
        seconds = check_chunk_size(name, self.config.encoding_chunk_size_in_sec if value is None else value,
                                   "seconds")
        return max(1, round(seconds * self.config.frame_rate)) if seconds else 0

    def _check_unpadded(self, latents: Latents, chunk_frames: int) -> None:
        chunk = chunk_frames or latents.frames
        shortest = min(chunk, latents.frames - chunk * ((latents.frames - 1) // chunk))  # the last chunk's
        if shortest < self.geometry.unpadded_frames:
            raise ValueError(f"mode 'unpadded' decodes each chunk alone without padding, which needs chunks of at "
                             f"least {self.geometry.unpadded_frames} frames; got one of {shortest} (chunk_size "
                             f"{chunk_frames}, {latents.frames} frames).")

    def _mode(self, mode: Optional[str]) -> str:
        mode = self.config.decoding_mode if mode is None else mode
        if mode not in DECODING_MODES:
            raise ValueError(f"`mode` must be one of {DECODING_MODES}, got {mode!r}.")
        return mode

    def _latents(self, zq: Optional[torch.Tensor], s: Optional[torch.Tensor]) -> Latents:
        if (zq is None) == (s is None):
            raise ValueError("Pass exactly one of `zq` (quantized latent) and `s` (codes).")
        if s is not None:
            return Latents(self.quantizer, codes=self._codes(s, "s"))
        z_q = check_tensor(zq, "zq")
        if not z_q.is_floating_point():
            raise TypeError(f"`zq` must be a floating point tensor, got {z_q.dtype}.")
        z_q = z_q[None] if z_q.dim() == 2 else z_q
        if z_q.dim() != 3 or z_q.shape[1] != self.config.latent_dim or 0 in z_q.shape:
            raise ValueError(f"`zq` must be shaped (batch, {self.config.latent_dim}, frames) with frames >= 1, "
                             f"got {tuple(z_q.shape)}.")
        if not torch.isfinite(z_q).all():
            raise ValueError("`zq` contains NaN or Inf.")
        return Latents(self.quantizer, z_q=z_q.to(self.device, self.dtype))

    def _codes(self, codes: torch.Tensor, name: str, allow_empty: bool = False) -> torch.Tensor:
        codes = check_tensor(codes, name)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"`{name}` (codes) must be an integer tensor, got {codes.dtype}.")
        if codes.dtype in (torch.uint16, torch.uint32, torch.uint64):  # as files store them; torch's min/max lack them
            codes = codes.to(torch.long)
        codes = codes[None] if codes.dim() == 2 else codes
        if codes.dim() != 3 or codes.shape[0] == 0 or (codes.shape[-1] == 0 and not allow_empty):
            raise ValueError(f"`{name}` (codes) must be shaped (batch, n_codebooks, frames) with batch and frames "
                             f">= 1, got {tuple(codes.shape)}.")
        if not 1 <= codes.shape[1] <= self.config.n_codebooks:
            raise ValueError(f"`{name}` (codes) has {codes.shape[1]} codebooks; this model has "
                             f"{self.config.n_codebooks} (codes may use the first 1 to {self.config.n_codebooks}).")
        if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < self.config.codebook_size):
            raise ValueError(f"`{name}` (codes) must lie in [0, {self.config.codebook_size}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}].")
        return codes.to(self.device, torch.long)

    # ----------------------------------------------------------------------------------------------------------
    # The earlier model card's file helpers
    def waveform_to_audiofile(self, waveform: torch.Tensor, path: PathLike) -> None:
        """Writes one mono signal to an audio file at the model's rate.

        Args:
            waveform: (1, 1, samples), (1, samples) or (samples,), as `decode` returns for one signal.
            path: The file to write, its format by extension (.wav, .flac, .ogg, ...); its folder must exist.
        """
        write_audio(path, waveform, self.sampling_rate)

    save_tensor = staticmethod(save_tensor)
    load_tensor = staticmethod(load_tensor)


__all__ = ["DacConfig", "DacModel", "DacEncoderOutput", "DacOutput", "load_audio"]


class CodesEncoder(nn.Module):
    """Whole-signal encoding as one traceable graph: audio (batch, 1, samples) -> codes (batch, n_codebooks,
    frames), the input zero-padded on the right to whole frames as `encode` pads it."""

    def __init__(self, model: DacModel):
        super().__init__()
        self.encoder, self.quantizer, self.hop_length = model.encoder, model.quantizer, model.hop_length

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        pad = (self.hop_length - input_values.shape[-1] % self.hop_length) % self.hop_length
        return self.quantizer(self.encoder(nn.functional.pad(input_values, (0, pad)))).codes


class CodesDecoder(nn.Module):
    """Whole-signal decoding as one traceable graph: codes (batch, n, frames) -> audio (batch, 1, frames * hop)."""

    def __init__(self, model: DacModel):
        super().__init__()
        self.decoder, self.quantizer = model.decoder, model.quantizer

    def forward(self, audio_codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.from_codes(audio_codes))


class StepGraph(nn.Module):
    """One step of a fixed-block stream (streaming.py) as one traceable graph:

        forward(block (batch, C_in, block), input_length (1,) int64, state (batch, state_size), position (2,) int64)
            -> (outputs (batch, C_out, output_block), state, position)

    Start with zero `state` and position (0, -1). Every call takes `block` input rows; `input_length` says how many
    of them belong to the signal: `block` for all but the last, which passes fewer (0 if the signal ended with the
    previous block) and marks the end; calls after it pass 0 and flush. Output row i of call k lies at position
    k * output_block - delay + i: the stream's first `delay` rows and those past the whole signal's output length
    (`output_length`) are not part of the output. Concatenated, the rest is the whole-signal output.
    """

    big = 2**40  # the input length while the end is unknown: past any position

    def __init__(self, layers: ChainStep, block: int):
        super().__init__()
        self.layers, self.block = layers, block
        self.slots: list[tuple[int, int]] = []  # (channels, rows) of each layer's state
        out = layers.plan(Signal(block, 0, lambda n: n), self.slots)
        self.output_block, self.delay = out.rows, out.delay
        self.state_size = sum(channels * rows for channels, rows in self.slots)

    input_type, output_type = "float32", "float32"  # dtypes of the block and of the outputs

    def output_length(self, input_length: int) -> int:
        raise NotImplementedError

    def spec(self) -> dict:
        """What a driver needs to know of this graph (`StepStream`; the exported config's "streaming" entry)."""
        return {"block": self.block, "output_block": self.output_block, "delay": self.delay,
                "trim": self.output_block - self.output_length(self.block), "state_size": self.state_size,
                "output_channels": self.output_channels, "input_type": self.input_type,
                "output_type": self.output_type}

    def start(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(state, position) before the first call."""
        return torch.zeros(batch, self.state_size), torch.tensor([0, -1])

    def advance(self, input_length: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(step, end, valid input rows (block,), next position) of a call: the end is fixed by the first call
        whose input_length falls short of the block."""
        step, end, given = position[0], position[1], input_length[0]
        end = torch.where((end < 0) & (given < self.block), step * self.block + given, end)
        rows = step * self.block + torch.arange(self.block)
        return step, end, (end < 0) | (rows < end), torch.stack([step + 1, end])


class EncoderStepGraph(StepGraph):
    """`encode`'s step: input_values (batch, 1, block_frames * hop) -> audio_codes (batch, n_codebooks,
    block_frames); the signal is zero-padded to whole frames as `encode` pads it."""

    output_type = "int64"

    def __init__(self, model: DacModel, block_frames: int):
        self.hop_length = model.hop_length
        super().__init__(model.encoder.steps(), block_frames * model.hop_length)
        self.quantizer, self.output_channels = model.quantizer, model.config.n_codebooks

    def output_length(self, input_length: int) -> int:
        return -(-input_length // self.hop_length)

    def forward(self, input_values, input_length, state, position):
        step, end, valid, position = self.advance(input_length, position)
        padded = torch.where(end < 0, self.big, (end + self.hop_length - 1) // self.hop_length * self.hop_length)
        x = torch.where(valid, input_values, input_values.new_zeros(()))
        clock = Clock(step, padded, state, self.slots)
        return self.quantizer(self.layers(x, clock)).codes, clock.next_state(), position


class DecoderStepGraph(StepGraph):
    """`decode`'s step: audio_codes (batch, n_codebooks, block_frames) int64 -> audio_values (batch, 1,
    block_frames * hop)."""

    input_type = "int64"

    def __init__(self, model: DacModel, block_frames: int):
        super().__init__(model.decoder.steps(), block_frames)
        self.quantizer, self.num_samples, self.output_channels = model.quantizer, model.num_samples, 1

    def output_length(self, input_length: int) -> int:
        return self.num_samples(input_length)

    def forward(self, audio_codes, input_length, state, position):
        step, end, valid, position = self.advance(input_length, position)
        codes = torch.where(valid, audio_codes, audio_codes.new_zeros(()))  # flushes may pass anything
        clock = Clock(step, torch.where(end < 0, self.big, end), state, self.slots)
        z_q = self.quantizer.from_codes(codes).to(next(self.layers.parameters()).dtype)  # float32 to the decoder's
        return torch.tanh(self.layers(z_q, clock)), clock.next_state(), position
