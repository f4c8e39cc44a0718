"""Chunk planning for exact chunked encoding and decoding, as plain functions of the layers' geometry.

Every output frame (encoder) or sample (decoder) depends on a finite window of the input: its receptive field,
found by walking the convolutions. A chunk that carries that much context on both sides computes its kept part
exactly as whole-signal processing does; the context is then cropped, never averaged:

    input     ...|---------------------------------- whole signal ----------------------------------|...
    chunk k           |<- left context ->|============ kept ============|<- right context ->|
    output                               |============ kept ============|
    chunk k+1                                         |<- left context ->|============ kept ...

Chunks start on frame boundaries, so every strided layer sees the same phase as in the whole signal, and the
signal's own edges are zero-padded exactly as the whole signal is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class ConvGeometry:
    """The index arithmetic of one convolution (or transposed convolution) along time."""

    kernel: int
    stride: int
    dilation: int
    padding: int
    transposed: bool

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
        ConvGeometry(m.kernel_size[0], m.stride[0], m.dilation[0], m.padding[0], isinstance(m, nn.ConvTranspose1d))
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


def encoder_context(layers: list[ConvGeometry], hop_length: int) -> tuple[int, int]:
    """Frames of audio context (left, right) that an encoder chunk needs so that its kept frames are exact.

    Frame 0 reads samples [lo, hi]; a chunk of frames [a, b) fed samples [(a - left) * hop, (b + right) * hop)
    contains what frames a .. b - 1 read.
    """
    lo, hi = input_span(layers, 0, 0)
    return max(0, math.ceil(-lo / hop_length)), max(0, math.ceil((hi + 1) / hop_length) - 1)


def decoder_context(layers: list[ConvGeometry], hop_length: int) -> tuple[int, int]:
    """Frames of latent context (left, right) that a decoder chunk needs so that its kept samples are exact.

    At least one frame on the right: the last frame of a chunk may be short of samples (odd strides), and the
    right context covers them.
    """
    lo, hi = input_span(layers, 0, hop_length - 1)
    return max(0, -lo), max(1, hi)


@dataclass(frozen=True)
class Chunk:
    """Frames [start, stop) are kept; frames [context_start, context_stop) are computed."""

    start: int
    stop: int
    context_start: int
    context_stop: int

    @property
    def offset(self) -> int:
        """Where the kept frames begin inside the computed ones."""
        return self.start - self.context_start

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_chunks(n_frames: int, chunk_frames: int, left: int, right: int) -> Iterator[Chunk]:
    """Splits frames [0, n_frames) into chunks of `chunk_frames` kept frames with the given context.

    A `chunk_frames` of 0 (or at least `n_frames`) yields one chunk: the whole signal.
    """
    if chunk_frames <= 0 or chunk_frames >= n_frames:
        yield Chunk(0, n_frames, 0, n_frames)
        return
    for start in range(0, n_frames, chunk_frames):
        stop = min(start + chunk_frames, n_frames)
        yield Chunk(start, stop, max(0, start - left), min(n_frames, stop + right))


def plan_overlap_chunks(n_frames: int, chunk_frames: int, overlap_rate: float) -> Iterator[tuple[int, int]]:
    """Frame ranges [start, stop) of the seed model card's overlap-averaged decoding: chunks of `chunk_frames`
    frames whose neighbours overlap by `overlap_rate` of a chunk (at least one frame when the rate is > 0)."""
    if chunk_frames <= 0 or chunk_frames >= n_frames:
        yield 0, n_frames
        return
    overlap = min(chunk_frames - 1, math.ceil(overlap_rate * chunk_frames))
    step = chunk_frames - overlap
    start = 0
    while True:
        stop = min(start + chunk_frames, n_frames)
        yield start, stop
        if stop == n_frames:
            return
        start += step


def stream_windows(
    blocks: Iterable[torch.Tensor], units_per_frame: int, left: int, right: int, max_frames: int
) -> Iterator[tuple[torch.Tensor, int, int]]:
    """Turns blocks that arrive along time into windows whose kept frames are determined, as soon as they are.

    Frame f is determined once the input reaches frame f + right. Each window holds `left` frames of context
    before the kept frames and `right` after (fewer at the signal's start), as `plan_chunks` does offline; at the
    end of the stream the last partial frame is zero-padded, as whole-signal encoding pads to the hop.

    Args:
        blocks: (batch, channels, units) tensors, `units_per_frame` units per frame (samples, or 1 for frames).
        max_frames: At most this many kept frames per window (0: no limit), which bounds memory.

    Yields:
        (window, offset, size): the kept frames are [offset, offset + size) of the window's frames.
    """
    buffer, buffer_start, next_frame, received = None, 0, 0, 0  # buffer_start and next_frame count frames

    def windows(ready: int, stop: int):
        nonlocal buffer, buffer_start, next_frame
        while next_frame < ready:
            size = ready - next_frame if max_frames <= 0 else min(max_frames, ready - next_frame)
            start = max(0, next_frame - left)
            end = min(stop, next_frame + size + right)
            window = buffer[..., (start - buffer_start) * units_per_frame : (end - buffer_start) * units_per_frame]
            yield window, next_frame - start, size
            next_frame += size
        keep = max(0, next_frame - left)  # drop what no later window reads
        buffer = buffer[..., (keep - buffer_start) * units_per_frame :]
        buffer_start = keep

    for block in blocks:
        buffer = block if buffer is None else torch.cat([buffer, block], dim=-1)
        received += block.shape[-1]
        yield from windows(received // units_per_frame - right, received // units_per_frame)
    if buffer is None:
        return
    n_frames = -(-received // units_per_frame)
    buffer = torch.nn.functional.pad(buffer, (0, (n_frames - buffer_start) * units_per_frame - buffer.shape[-1]))
    yield from windows(n_frames, n_frames)
