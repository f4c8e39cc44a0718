"""Chunked and streamed encoding and decoding that give exactly what whole-signal processing gives.

Three words belong to this module (streaming.py defines state and tile):
- *block*: what a user's stream hands in at a time (`encode_stream`, `decode_stream`), of any length;
- *chunk*: what one step processes: a block is cut into chunks of at most the chunk size, which bounds memory;
- *window*: the accelerator path's unit, a chunk with its receptive-field context on both sides.

Every code frame depends on a finite span of audio, and every audio sample on a finite span of frames: the receptive
field, which `CodecGeometry` computes once by walking the convolutions. Two strategies use it:

- Streams (the CPU path, and `encode_stream` / `decode_stream` everywhere): the layers run as streams
  (streaming.py), carrying state from chunk to chunk; every sample is computed once, and the result equals
  whole-signal processing for any chunk size and any split into blocks.
- Batched windows (accelerators, where one wide batch beats many small steps): the signal is cut into windows of
  one length, each carrying its context, that run as batches through the plain forward; only the middle of each
  window is kept, so the kept outputs equal whole-signal processing and the context is computed twice:

        frames  |0 ............................................................. n_frames|
        window k        |-- left --|======= keep [k * chunk, (k + 1) * chunk) =======|-- right --|
        first   |======= keep =======|-- right + left --|   (the signal's ends need no context: windows are
        last                                     |-- left + right --|======= keep =======|   moved inside)

Equal means up to float rounding in the convolutions: codes are identical, audio agrees to about 1e-6.
`decode_overlap_average` keeps the earlier model card's approximate decoding (chunks without context, averaged
over an overlap) for compatibility.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from .streaming import PACK_WEIGHTS, bf16_products

# Batched windows: the widest activation of one batch, 1 GiB in fp32; chunks at least this many times their
# receptive-field context, so that recomputing the context costs at most a quarter more.
BATCH_ELEMENTS = 1 << 28
MIN_CHUNK_OVER_CONTEXT = 4
QUANTIZE_FRAMES = 1024  # latent frames that `encode` quantizes at once: the quantizer's small projections want width
END_SAMPLES = 1 << 16  # a whole signal's last samples, at most, that go with its end (`stream_encode`)
# On the CPU, a signal whose widest activation stays below this (by direction) runs as one plain pass (the
# batched-windows path, one window): a stream's per-step work costs more than such a signal's convolutions. Where the
# streams' weights are packed once (`PACK_WEIGHTS`, AVX-512) that work is small: on a Zen 5 encoding streams win
# from about 0.5M elements (1.3x faster at 1 s of 16 kHz, 1.1x at 0.25 s of 44.1 kHz, 0.9x at 0.5 s of 16 kHz: a
# plain pass page-faults in its fresh activations, a stream reuses its thread's scratch), decoding from about 1M
# (0.9x at 0.5 s of 16 kHz, 1.1x at 0.5 s of 44.1 kHz). Unpacked, both only from about 3M (1 s at 44.1 kHz), below
# which they run 0.6-0.9x as fast as the plain pass.
ONE_PASS_ELEMENTS = {"encode": 1 << 19, "decode": 1 << 20} if PACK_WEIGHTS else {"encode": 3 << 20, "decode": 3 << 20}
PACK_BATCHES = 8  # many signals on an accelerator: gather enough of them to fill this many full batches

# How a call runs: `choose_strategy` decides for every path of the model (encode, decode, padded batches, many
# signals), and the tools read it through `DacModel.pack_frames`.
STREAM = "stream"  # the layers as streams, chunk by chunk: every sample computed once, memory bounded by the chunk
WINDOWS = "windows"  # batches of windows through the plain forward; one window for a short signal: a plain pass
EACH = "each"  # many signals one at a time, each as it would run alone
PACKED = "packed"  # many signals' windows in shared batches


def choose_strategy(device_type: str, widest: int = 0, chunk_given: bool = False, signals: int = 1,
                    direction: str = "encode") -> str:
    """The strategy for `signals` signals on a device of `device_type` ("cpu", "cuda", ...), whose widest
    activation holds `widest` elements (one signal), with a chunk size given by the caller or not, to encode or
    decode (`direction`).

    On the CPU a long signal, or one given a chunk size, streams (a short one runs as one plain pass: a stream's
    per-step work costs more than its convolutions), and many signals run one at a time; on an accelerator, where one
    wide batch beats many small steps, a signal runs as batches of windows, and many signals share them.
    """
    if signals > 1:
        return EACH if device_type == "cpu" else PACKED
    if device_type == "cpu" and (chunk_given or widest > ONE_PASS_ELEMENTS[direction]):
        return STREAM
    if device_type == "cpu" and direction == "encode" and bf16_products(torch.device("cpu")):
        return STREAM  # the streams keep the convs that decide codes from bf16 products, which a plain pass takes
    return WINDOWS


# ----------------------------------------------------------------------------------------------------------------
# Geometry
@dataclass(frozen=True)
class ConvGeometry:
    """The index arithmetic of one convolution (or transposed convolution) along time."""

    kernel: int
    stride: int
    dilation: int
    padding: int
    transposed: bool
    out_channels: int

    def input_span(self, lo: int, hi: int) -> tuple[int, int]:
        """The input indices [lo', hi'] that output indices [lo, hi] read."""
        reach = self.dilation * (self.kernel - 1)
        if self.transposed:  # output n = j * stride - padding + k * dilation
            return -((reach - self.padding - lo) // self.stride), (hi + self.padding) // self.stride
        return lo * self.stride - self.padding, hi * self.stride - self.padding + reach

    def output_length(self, length: int) -> int:
        reach = self.dilation * (self.kernel - 1)
        if self.transposed:
            return (length - 1) * self.stride - 2 * self.padding + reach + 1
        return (length + 2 * self.padding - reach - 1) // self.stride + 1


def conv_geometry(module: nn.Module) -> list[ConvGeometry]:
    """The convolutions of `module` in forward order (its layers are registered in the order they run).

    Residual branches add nothing: the identity path reads a subset of what the convolution path reads.
    """
    return [
        ConvGeometry(m.kernel_size[0], m.stride[0], m.dilation[0], m.padding[0], isinstance(m, nn.ConvTranspose1d),
                     m.out_channels)
        for m in module.modules()
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))
    ]


def input_span(layers: list[ConvGeometry], lo: int, hi: int) -> tuple[int, int]:
    """The input indices that output indices [lo, hi] of the stack `layers` depend on."""
    for layer in reversed(layers):
        lo, hi = layer.input_span(lo, hi)
    return lo, hi


def output_length(layers: list[ConvGeometry], length: int) -> int:
    """Output length of the stack `layers` for an input of `length`."""
    for layer in layers:
        length = layer.output_length(length)
    return length


def widest_activation(layers: list[ConvGeometry], steps_per_frame: float) -> int:
    """Elements per code frame of the stack's widest activation, for input of `steps_per_frame` steps a frame."""
    widest = 0
    for layer in layers:
        steps_per_frame = steps_per_frame * layer.stride if layer.transposed else steps_per_frame / layer.stride
        widest = max(widest, math.ceil(layer.out_channels * steps_per_frame))
    return widest


@dataclass(frozen=True)
class CodecGeometry:
    """What chunking needs to know of a model, computed once from its layers.

    Attributes:
        hop_length: Audio samples per code frame.
        encoder, decoder: Their convolutions in forward order.
        encoder_context: (left, right) code frames of context that a frame's encoding reads beyond the frame.
        decoder_context: (left, right) code frames that the audio of a frame reads beyond the frame.
        encoder_lookahead: Samples past a frame's end that its codes read (the encoder stream's latency).
        decoder_lookahead: Frames past a frame that all of its audio reads (the decoder stream's latency).
        encoder_width, decoder_width: Elements per frame of each one's widest activation.
    """

    hop_length: int
    encoder: tuple[ConvGeometry, ...]
    decoder: tuple[ConvGeometry, ...]
    encoder_context: tuple[int, int]
    decoder_context: tuple[int, int]
    encoder_lookahead: int
    decoder_lookahead: int
    encoder_width: int
    decoder_width: int

    @classmethod
    def of(cls, encoder: nn.Module, decoder: nn.Module, hop_length: int) -> "CodecGeometry":
        enc, dec = tuple(conv_geometry(encoder)), tuple(conv_geometry(decoder))
        first_sample, last_sample = input_span(enc, 0, 0)  # the samples that code frame 0 reads
        first_frame, last_frame = input_span(dec, 0, hop_length - 1)  # the frames that frame 0's samples read
        lookahead = last_sample + 1 - hop_length
        return cls(
            hop_length=hop_length, encoder=enc, decoder=dec,
            encoder_context=(math.ceil(-first_sample / hop_length), math.ceil(lookahead / hop_length)),
            decoder_context=(-first_frame, last_frame),
            encoder_lookahead=lookahead, decoder_lookahead=last_frame,
            encoder_width=widest_activation(enc, hop_length), decoder_width=widest_activation(dec, 1),
        )

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` samples: ceil(num_samples / hop_length)."""
        return -(-num_samples // self.hop_length)

    def num_samples(self, num_frames: int) -> int:
        """Samples that the decoder returns for `num_frames` frames."""
        return output_length(self.decoder, num_frames)

    @property
    def unpadded_frames(self) -> int:
        """The fewest frames that the decoder without its convolutions' padding (`decode_unpadded`) decodes: every
        layer's output must keep a step."""
        unpadded = [dataclasses.replace(layer, padding=0) for layer in self.decoder]
        frames = 1
        while True:
            length = frames
            for layer in unpadded:
                length = layer.output_length(length)
                if length < 1:
                    break
            else:
                return frames
            frames += 1


# ----------------------------------------------------------------------------------------------------------------
# Plans
def plan_context_windows(n_frames: int, chunk_frames: int, left: int, right: int) -> list[tuple[int, int, int]]:
    """Windows of one length that keep chunks of `chunk_frames` frames, each with its `left` and `right` frames of
    context (see the module's diagram). Outputs kept from a window read only inputs inside it, and a window moved
    against an end of the signal sees that end where the whole signal has it, so the kept outputs equal whole-signal
    processing. Returns (window_start, keep_start, keep_stop) per chunk; every window spans
    [window_start, window_start + min(n_frames, chunk_frames + left + right)).
    """
    length = min(n_frames, chunk_frames + left + right)
    return [
        (min(max(0, start - left), n_frames - length), start, min(start + chunk_frames, n_frames))
        for start in range(0, n_frames, chunk_frames)
    ]


def plan_window_batches(
    n_frames: int, chunk_frames: Optional[int], context: tuple[int, int], width: int
) -> tuple[list[list[tuple[int, int, int]]], int]:
    """`plan_context_windows` grouped into batches whose widest activation (`width` elements a frame, all items
    of the signal's batch counted) stays within BATCH_ELEMENTS. `chunk_frames`: frames kept per window; 0 for one
    window; None for windows as long as the budget allows. Returns (batches of windows, window length)."""
    if chunk_frames is None:
        chunk_frames = max(1, BATCH_ELEMENTS // width - sum(context))
    chunk_frames = max(chunk_frames or n_frames, MIN_CHUNK_OVER_CONTEXT * sum(context))
    windows = plan_context_windows(n_frames, chunk_frames, *context)
    length = min(n_frames, chunk_frames + sum(context))
    size = max(1, BATCH_ELEMENTS // (length * width))
    return [windows[i : i + size] for i in range(0, len(windows), size)], length


def plan_overlap_chunks(n_frames: int, chunk_frames: int, overlap_rate: float) -> Iterator[tuple[int, int]]:
    """Frame ranges [start, stop) of the earlier model card's overlap-averaged decoding: chunks of `chunk_frames`
    frames whose neighbours overlap by `overlap_rate` of a chunk (at least one frame when the rate is > 0)."""
    if chunk_frames <= 0 or chunk_frames >= n_frames:
        yield 0, n_frames
        return
    overlap = min(chunk_frames - 1, math.ceil(overlap_rate * chunk_frames))
    start = 0
    while True:
        stop = min(start + chunk_frames, n_frames)
        yield start, stop
        if stop == n_frames:
            return
        start += chunk_frames - overlap


# ----------------------------------------------------------------------------------------------------------------
# Decoder input
class Latents:
    """What `decode` decodes: a quantized latent, or codes looked up into one frame range at a time, so that a
    long signal's latent is never held whole.

    Args:
        quantizer: The model's `ResidualVectorQuantize`.
        z_q: (batch, latent_dim, frames), or None.
        codes: (batch, n, frames) int64 with n <= n_codebooks, or None; exactly one of the two is given.
    """

    def __init__(
        self, quantizer: nn.Module, z_q: Optional[torch.Tensor] = None, codes: Optional[torch.Tensor] = None
    ):
        self.quantizer, self.z_q, self.codes = quantizer, z_q, codes
        given = z_q if z_q is not None else codes
        self.batch, self.frames = given.shape[0], given.shape[-1]

    def __getitem__(self, frames: slice) -> torch.Tensor:
        """z_q (batch, latent_dim, n) of a frame range."""
        if self.z_q is not None:
            return self.z_q[..., frames]
        return self.quantizer.from_codes(self.codes[..., frames])

    def chunks(self, chunk_frames: int) -> Iterator[torch.Tensor]:
        """z_q in chunks of `chunk_frames` frames (one chunk for 0)."""
        chunk_frames = chunk_frames or self.frames
        return (self[start : start + chunk_frames] for start in range(0, self.frames, chunk_frames))


# ----------------------------------------------------------------------------------------------------------------
# Streams
def stream_encode(
    encoder: nn.Module, quantizer: nn.Module, chunks: Iterable[torch.Tensor], n_quantizers: int, hop_length: int,
    min_frames: int = 0, last_ends: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(z_q, codes) of the frames that each chunk of model-rate audio (batch, 1, t) completes; together, those of
    the whole signal. Latent frames are quantized in groups of at least `min_frames` (0: as soon as they come).
    With `last_ends` (chunks known in advance, not a live stream), each chunk waits for the next, so that the last
    one, padded (its last `END_SAMPLES` copied with the padding), ends the stream in its own step: one step fewer
    for every layer (1.02-1.03x at 1 s).

    Raises:
        ValueError: If the chunks hold no sample.
    """
    stream, received, pending, held = encoder.stream(), 0, [], None

    def quantize(final: bool):
        if pending and (final or sum(z.shape[-1] for z in pending) >= min_frames):
            z = torch.cat(pending, dim=-1) if len(pending) > 1 else pending[0]
            pending.clear()
            yield quantizer(z, n_quantizers)[:2]  # (z_q, codes)

    def feed(piece: torch.Tensor, final: bool):
        for z in stream.steps(piece.transpose(1, 2), final):
            pending.append(z.transpose(1, 2))  # (B, n, D) -> (B, D, n)
            yield from quantize(final=False)

    chunk = None
    for chunk in chunks:
        received += chunk.shape[-1]
        if last_ends:
            chunk, held = held, chunk
        if chunk is not None:
            yield from feed(chunk, final=False)
    if not received:
        raise ValueError("The audio held no samples; it needs at least one.")
    last = chunk[..., :0] if held is None else held
    if last.shape[-1] > END_SAMPLES:
        yield from feed(last[..., :-END_SAMPLES], final=False)
        last = last[..., -END_SAMPLES:]
    # The end of the signal, padded to whole frames as the reference's preprocess does.
    yield from feed(torch.cat([last, last.new_zeros(*last.shape[:-1], -received % hop_length)], dim=-1), final=True)
    yield from quantize(final=True)


def stream_decode(
    decoder: nn.Module, chunks: Iterable[torch.Tensor], last_ends: bool = False
) -> Iterator[torch.Tensor]:
    """The audio (batch, 1, t) that each chunk of latent frames (batch, latent_dim, n) completes; together, that of
    all the frames. With `last_ends` (chunks known in advance, not a live stream), each chunk waits for the next,
    so that the last one ends the stream in its own step: one step fewer for every layer (1.04-1.06x at 1 s).

    Raises:
        ValueError: If the chunks hold no frame.
    """
    stream, received, chunk, held = decoder.stream(), 0, None, None
    for chunk in chunks:
        received += chunk.shape[-1]
        chunk = chunk.to(decoder.dtype).transpose(1, 2).contiguous()  # the quantizer's float32 latents, time-major
        if last_ends:
            chunk, held = held, chunk
            if chunk is None:
                continue
        for audio in stream.steps(chunk, final=False):
            yield audio.transpose(1, 2)  # (B, t, 1) -> (B, 1, t)
    if not received:
        raise ValueError("The codes held no frames; they need at least one.")
    end = held if held is not None else chunk[:, :0]
    for audio in stream.steps(end, final=True):
        yield audio.transpose(1, 2)


def encode_streamed(
    encoder: nn.Module, quantizer: nn.Module, audio: torch.Tensor, n_quantizers: int, chunk_frames: int,
    geometry: CodecGeometry,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q, codes) of model-rate audio (batch, 1, time), streamed in chunks of `chunk_frames` frames (0: one
    chunk)."""
    batch, n_frames = audio.shape[0], geometry.num_frames(audio.shape[-1])
    z_q, codes, done = None, None, 0
    chunks = audio.split(chunk_frames * geometry.hop_length or audio.shape[-1], dim=-1)
    for z_q_i, codes_i in stream_encode(encoder, quantizer, chunks, n_quantizers, geometry.hop_length,
                                        min_frames=QUANTIZE_FRAMES, last_ends=True):
        if z_q is None:
            z_q = z_q_i.new_empty(batch, z_q_i.shape[1], n_frames)
            codes = codes_i.new_empty(batch, n_quantizers, n_frames)
        z_q[..., done : done + codes_i.shape[-1]], codes[..., done : done + codes_i.shape[-1]] = z_q_i, codes_i
        done += codes_i.shape[-1]
    return z_q, codes


def decode_streamed(
    decoder: nn.Module, latents: Latents, chunk_frames: int, geometry: CodecGeometry
) -> torch.Tensor:
    """Audio (batch, 1, samples) of `latents`, streamed in chunks of `chunk_frames` frames (0: one chunk)."""
    audio, done = None, 0
    for piece in stream_decode(decoder, latents.chunks(chunk_frames), last_ends=True):
        if audio is None:
            audio = piece.new_empty(latents.batch, 1, geometry.num_samples(latents.frames))
        audio[..., done : done + piece.shape[-1]] = piece
        done += piece.shape[-1]
    return audio


def stack_padded(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_q, codes) of items encoded one by one, each of batch 1 -> (z_q, codes) of the batch, zero-padded to the
    longest item, and the frames of each item (batch,)."""
    n_frames = max(codes.shape[-1] for _, codes in items)
    z_q = items[0][0].new_zeros(len(items), items[0][0].shape[1], n_frames)
    codes = items[0][1].new_zeros(len(items), items[0][1].shape[1], n_frames)
    for i, (z_q_i, codes_i) in enumerate(items):
        z_q[i, :, : z_q_i.shape[-1]], codes[i, :, : codes_i.shape[-1]] = z_q_i[0], codes_i[0]
    return z_q, codes, torch.tensor([c.shape[-1] for _, c in items], device=codes.device)


def encode_blocks(
    encoder: nn.Module, quantizer: nn.Module, blocks: Iterable[torch.Tensor], n_quantizers: int, chunk_samples: int,
    hop_length: int,
) -> Iterator[torch.Tensor]:
    """`encode_stream`: codes (batch, n_quantizers, n) as soon as blocks of model-rate audio (batch, 1, t) determine
    them, each block cut into chunks of at most `chunk_samples` samples (0: whole blocks)."""
    chunks = (piece for block in blocks for piece in block.split(chunk_samples or block.shape[-1], dim=-1))
    for _, codes in stream_encode(encoder, quantizer, chunks, n_quantizers, hop_length):
        yield codes


def decode_blocks(
    decoder: nn.Module, quantizer: nn.Module, blocks: Iterable[torch.Tensor], chunk_frames: int
) -> Iterator[torch.Tensor]:
    """`decode_stream`: audio (batch, 1, t) as soon as blocks of codes (batch, n, frames) determine it, each block
    cut into chunks of at most `chunk_frames` frames (0: whole blocks)."""
    latents = (z for block in blocks if block.shape[-1]
               for z in Latents(quantizer, codes=block).chunks(chunk_frames))
    yield from stream_decode(decoder, latents)


# ----------------------------------------------------------------------------------------------------------------
# Batched windows
def encode_windows(
    encoder: nn.Module, quantizer: nn.Module, audio: torch.Tensor, n_quantizers: int, chunk_frames: Optional[int],
    geometry: CodecGeometry,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q, codes) of model-rate audio (batch, 1, time) as batches of windows (see the module's diagram);
    `chunk_frames` as in `plan_window_batches`."""
    hop, batch = geometry.hop_length, audio.shape[0]
    n_frames = geometry.num_frames(audio.shape[-1])
    audio = nn.functional.pad(audio, (0, n_frames * hop - audio.shape[-1]))  # as the reference's preprocess
    batches, length = plan_window_batches(
        n_frames, chunk_frames, geometry.encoder_context, geometry.encoder_width * batch
    )
    z = None
    for windows in batches:
        x = torch.cat([audio[..., start * hop : (start + length) * hop] for start, _, _ in windows])
        y = encoder(x).view(len(windows), batch, -1, length)  # (K * B, D, length) -> (K, B, D, length)
        z = y.new_empty(batch, y.shape[2], n_frames) if z is None else z
        for (start, keep, stop), y_k in zip(windows, y):
            z[..., keep:stop] = y_k[..., keep - start : stop - start]
    return quantize_frames(quantizer, z, n_quantizers)


def quantize_frames(quantizer: nn.Module, z: torch.Tensor, n_quantizers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q, codes) of latent frames (batch, latent_dim, frames), quantized in wide pieces (every frame is
    quantized on its own, so any split gives the same codes)."""
    z_q, codes = zip(*(quantizer(piece, n_quantizers)[:2] for piece in z.split(64 * QUANTIZE_FRAMES, -1)))
    return torch.cat(z_q, -1), torch.cat(codes, -1)


def decode_windows(
    decoder: nn.Module, latents: Latents, chunk_frames: Optional[int], geometry: CodecGeometry
) -> torch.Tensor:
    """Audio (batch, 1, samples) of `latents` as batches of windows (see the module's diagram); `chunk_frames` as in
    `plan_window_batches`."""
    hop, n_frames = geometry.hop_length, latents.frames
    batches, length = plan_window_batches(
        n_frames, chunk_frames, geometry.decoder_context, geometry.decoder_width * latents.batch
    )
    audio = None
    for windows in batches:
        z = torch.cat([latents[start : start + length] for start, _, _ in windows])
        y = decoder(z).view(len(windows), latents.batch, 1, -1)  # (K * B, 1, t) -> (K, B, 1, t)
        if audio is None:
            audio = y.new_empty(latents.batch, 1, geometry.num_samples(n_frames))
        for (start, keep, stop), y_k in zip(windows, y):
            end = min(stop * hop, audio.shape[-1])  # the last frames of 16 and 24 kHz are 8 samples short
            audio[..., keep * hop : end] = y_k[..., (keep - start) * hop : end - start * hop]
    return audio


# ----------------------------------------------------------------------------------------------------------------
# Packed windows: many signals of different lengths in full batches
PACK_CHUNKS = (512, 128)  # frames kept per window, longest first: a signal takes the longest windows that fit it


def plan_packed_windows(
    n_frames: list[int], chunk_tiers: tuple[int, ...], context: tuple[int, int]
) -> dict[int, list[tuple[int, int, int, int]]]:
    """Windows of many signals, grouped by length so that signals of different lengths fill batches together.

    Each signal takes the longest windows (keeping one of `chunk_tiers` frames each, with their `context`) that fit
    inside it, planned as `plan_context_windows`; a signal shorter than every window is one window of its own
    length. No window crosses a signal's end, so padding never enters a kept output.

    Returns:
        {window length: [(signal, window_start, keep_start, keep_stop), ...]}.
    """
    left, right = context
    chunk_tiers = tuple(max(chunk, MIN_CHUNK_OVER_CONTEXT * (left + right)) for chunk in chunk_tiers)
    groups: dict[int, list[tuple[int, int, int, int]]] = {}
    for signal, n in enumerate(n_frames):
        chunk = next((c for c in chunk_tiers if c + left + right <= n), n)
        for start, keep, stop in plan_context_windows(n, chunk, left, right):
            groups.setdefault(min(n, chunk + left + right), []).append((signal, start, keep, stop))
    return groups


def run_packed(
    net: nn.Module, signals: list[torch.Tensor], n_frames: list[int], context: tuple[int, int], width: int,
    step_in: int, step_out: int, out_lengths: list[int], chunk_tiers: tuple[int, ...] = PACK_CHUNKS,
) -> list[torch.Tensor]:
    """A fully convolutional `net` (the encoder or the decoder) on many signals at once, as batches of windows of
    one length that stay within BATCH_ELEMENTS (`width` elements a frame).

    Args:
        signals: Inputs (1, C, n_frames[i] * step_in), `step_in` steps a frame.
        out_lengths: Output steps of each signal (`step_out` a frame; the last frame may be shorter).

    Returns:
        Outputs (1, C', out_lengths[i]), each equal to `net` on that signal alone, up to float rounding.
    """
    outputs: list[Optional[torch.Tensor]] = [None] * len(signals)
    for length, windows in plan_packed_windows(n_frames, chunk_tiers, context).items():
        size = max(1, BATCH_ELEMENTS // (length * width))
        for i in range(0, len(windows), size):
            batch = windows[i : i + size]
            y = net(torch.cat([signals[s][..., start * step_in : (start + length) * step_in]
                               for s, start, _, _ in batch]))
            for (s, start, keep, stop), y_k in zip(batch, y):
                if outputs[s] is None:
                    outputs[s] = y.new_empty(y.shape[1], out_lengths[s])
                end = min(stop * step_out, out_lengths[s])
                outputs[s][:, keep * step_out : end] = y_k[:, (keep - start) * step_out : end - start * step_out]
    return [output[None] for output in outputs]


def encode_packed(
    encoder: nn.Module, quantizer: nn.Module, signals: list[torch.Tensor], n_quantizers: int,
    geometry: CodecGeometry, chunk_tiers: tuple[int, ...] = PACK_CHUNKS,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(z_q, codes) of each of many model-rate signals (1, 1, t_i) of any lengths, packed into full batches of
    windows; each equals the encoding of that signal alone (codes identical, as for `encode_windows`)."""
    hop = geometry.hop_length
    n_frames = [geometry.num_frames(x.shape[-1]) for x in signals]
    padded = [nn.functional.pad(x, (0, n * hop - x.shape[-1])) for x, n in zip(signals, n_frames)]
    z = run_packed(encoder, padded, n_frames, geometry.encoder_context, geometry.encoder_width, hop, 1, n_frames,
                   chunk_tiers)
    z_q, codes = quantize_frames(quantizer, torch.cat(z, -1), n_quantizers)
    return list(zip(z_q.split(n_frames, -1), codes.split(n_frames, -1)))


def decode_packed(
    decoder: nn.Module, quantizer: nn.Module, codes: list[torch.Tensor], geometry: CodecGeometry,
    chunk_tiers: tuple[int, ...] = PACK_CHUNKS,
) -> list[torch.Tensor]:
    """Audio (1, 1, samples_i) of each of many codes (1, n_i, frames_i), packed into full batches of windows; each
    equals the decoding of those codes alone, up to float rounding (about 1e-6)."""
    n_frames = [c.shape[-1] for c in codes]
    latents = [quantizer.from_codes(c) for c in codes]
    return run_packed(decoder, latents, n_frames, geometry.decoder_context, geometry.decoder_width, 1,
                      geometry.hop_length, [geometry.num_samples(n) for n in n_frames], chunk_tiers)


# ----------------------------------------------------------------------------------------------------------------
# The original's unpadded windows (its `.dac` files with padding=False)
def _unpadded(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`conv` without its zero padding, as the original runs its layers for windowed files."""
    if isinstance(conv, nn.ConvTranspose1d):
        return nn.functional.conv_transpose1d(x, conv.weight, conv.bias, conv.stride, 0, dilation=conv.dilation)
    return nn.functional.conv1d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation)


def decode_unpadded(decoder: nn.Module, z_q: torch.Tensor) -> torch.Tensor:
    """The original's decoder with every convolution's padding off (`model.padding = False`), on one window of
    latent frames (batch, latent_dim, n): residual units add the centre of their input to their shorter branch.
    Its windowed `.dac` files decode window by window this way, and the audio is the windows one after another."""
    x = _unpadded(decoder.conv1, z_q)
    for block in decoder.block:
        x = _unpadded(block.conv_t1, block.snake1(x))
        for unit in (block.res_unit1, block.res_unit2, block.res_unit3):
            y = _unpadded(unit.conv2, unit.snake2(_unpadded(unit.conv1, unit.snake1(x))))
            crop = (x.shape[-1] - y.shape[-1]) // 2
            x = y + (x[..., crop : x.shape[-1] - crop] if crop > 0 else x)
    return torch.tanh(_unpadded(decoder.conv2, decoder.snake1(x)))


# ----------------------------------------------------------------------------------------------------------------
# Overlap-averaged decoding (approximate)
def decode_overlap_average(
    decoder: nn.Module, latents: Latents, chunk_frames: int, overlap_rate: float, geometry: CodecGeometry
) -> torch.Tensor:
    """The earlier model card's decoding: chunks decoded without context, averaged where they overlap. Its seams
    are wrong by up to ~0.3; kept for compatibility."""
    hop = geometry.hop_length
    audio, weight = None, None
    for start, stop in plan_overlap_chunks(latents.frames, chunk_frames, overlap_rate):
        y = decoder(latents[start:stop])
        if audio is None:
            audio = y.new_zeros(latents.batch, 1, geometry.num_samples(latents.frames))
            weight = torch.zeros_like(audio)
        audio[..., start * hop : start * hop + y.shape[-1]] += y
        weight[..., start * hop : start * hop + y.shape[-1]] += 1
    return audio.div_(weight)
