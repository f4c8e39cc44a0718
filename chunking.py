"""Exact chunked and streaming processing: a signal that arrives in pieces gives what the whole signal gives.

Every convolution runs as a stream (`conv_step`). It keeps the tail of its input that its next outputs read, and
emits each output as soon as all of the inputs it reads have arrived; the zero padding goes in only at the
stream's two ends. A residual branch lags its input by the branch's lookahead, so the skip path waits in the
cache too (`residual_step`). Composed layer by layer, every sample is computed once, with no recomputed context
and no averaging, and memory is bounded by the piece:

    conv input   ... |==== tail ====|=============== new piece ===============|
                     '------- window of the next outputs -------'             |
    conv output  ... |=================== emitted now ===================|   (the last outputs wait for more)
                                                                          '--- next tail ---'

The streams hold activations time-major, (batch, time, channels): a piece then appends to a tail as whole rows,
and the convolutions run in oneDNN's native channels-last layout without reorders (`time_major_conv`).

A chunk's result therefore equals whole-signal processing for any chunk size and any split of a stream, up to
float rounding in the convolutions. The geometry functions below walk the convolutions to give the receptive field
(the streams' lookahead) and output lengths. On CUDA, where one wide batch beats many small steps, chunks run
instead as a batch of windows that carry their receptive field as context (`plan_context_windows`), computing
the context twice but every kept output as the whole signal has it. `plan_overlap_chunks` serves the earlier
model card's approximate, overlap-averaged decoding, kept for compatibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
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


def plan_context_windows(n_frames: int, chunk: int, left: int, right: int) -> list[tuple[int, int, int]]:
    """Windows of frames for batched chunking: every window has the same length, so that all of them run as one
    batch, and each carries the receptive-field context (`left`, `right` frames) of the chunk it keeps.

        frames  |0 ............................................................. n_frames|
        window k        |-- left --|======= keep [k * chunk, (k + 1) * chunk) =======|-- right --|
        first   |======= keep =======|-- right + left --|   (the signal's ends need no context: windows are
        last                                     |-- left + right --|======= keep =======|   moved inside)

    Outputs kept from a window read only inputs inside it, and a window moved against an end of the signal sees
    that end where the whole signal has it, so the kept outputs equal whole-signal processing. Returns
    (window_start, keep_start, keep_stop) per chunk; the window is [window_start, window_start + length), length
    = min(n_frames, chunk + left + right).
    """
    length = min(n_frames, chunk + left + right)
    return [
        (min(max(0, start - left), n_frames - length), start, min(start + chunk, n_frames))
        for start in range(0, n_frames, chunk)
    ]


GEMM_STEPS = 1024  # convs with fewer output steps per call run as one GEMM (see `time_major_conv`)
StreamCache = dict  # per-stream state of every layer, keyed by module: what later pieces of the signal read


class PlainConv:
    """Weights and geometry of a stride-1 convolution that is no module (the polyphase form of a transposed conv)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, padding: int):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.padding = (1,), (1,), (padding,)


def time_major_conv(x: torch.Tensor, weight: torch.Tensor, bias, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Unpadded conv1d of time-major x (B, t, C_in) with weight (C_out, C_in, k) -> (B, t', C_out), time-major.

    Long inputs run as conv2d over the (B, C_in, 1, t) channels-last view of x, oneDNN's native layout, where
    (B, C, t) input would cost a reorder each way. oneDNN also reorders the whole weight on every call, which
    costs more than the arithmetic when t' is short and the layer wide (the decoder's first layers, fed one chunk
    of frames at a time): there one GEMM over the gathered input windows does the same sums in place.
    """
    batch, t, c_in = x.shape
    c_out, k = weight.shape[0], weight.shape[-1]
    t_out = (t - dilation * (k - 1) - 1) // stride + 1
    if t_out < GEMM_STEPS and weight.is_contiguous():
        step, channel = x.stride(1), x.stride(2)
        windows = x.as_strided((batch, t_out, c_in, k), (x.stride(0), stride * step, channel, dilation * step))
        return F.linear(windows.reshape(batch, t_out, c_in * k), weight.view(c_out, c_in * k), bias)
    y = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), 0, (1, dilation))
    return y.squeeze(2).transpose(1, 2)


def scratch(cache: StreamCache, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` on memory that all the convolutions of a stream share for their input
    windows: a window is dead once its conv has run, and fresh memory costs the allocator a page fault per 4 KB."""
    size = math.prod(shape)
    memory = cache.get("scratch")
    if memory is None or memory.numel() < size or memory.dtype != like.dtype or memory.device != like.device:
        memory = cache["scratch"] = like.new_empty(size)
    return memory[:size].view(shape)


def conv_step(
    conv: nn.Conv1d, x: torch.Tensor, cache: StreamCache, final: bool, activation=None, key=None
) -> torch.Tensor:
    """One step of `conv`, applied to `activation(x)`, over a signal that arrives in pieces: time-major
    (B, t, C_in) -> (B, t', C_out) for the outputs whose inputs have all arrived. Over all steps the outputs equal
    `conv(activation(signal))` of the whole signal.

    The cache keeps, under `key` (`conv` by default), the input tail that later outputs read; the zero padding
    goes in at the stream's two ends. `activation(x, out=...)` writes straight after the tail, into the window
    that the conv reads, which saves concatenating them.
    """
    key = conv if key is None else key
    weight, bias = conv.weight, conv.bias
    stride, dilation, padding = conv.stride[0], conv.dilation[0], conv.padding[0]
    reach = dilation * (weight.shape[-1] - 1)
    if reach == 0 and padding == 0 and stride == 1 and x.shape[1]:  # pointwise: nothing to carry over
        x = x if activation is None else activation(x, out=scratch(cache, x.shape, x))
        return time_major_conv(x, weight, bias)
    tail = cache.get(key)
    head, t, end = padding if tail is None else tail.shape[1], x.shape[1], padding if final else 0
    window = scratch(cache, (x.shape[0], head + t + end, x.shape[2]), x)
    window[:, :head].zero_() if tail is None else window[:, :head].copy_(tail)
    window[:, head : head + t].copy_(x) if activation is None else activation(x, out=window[:, head : head + t])
    window[:, head + t :].zero_()
    n_out = max(0, (window.shape[1] - reach - 1) // stride + 1)
    cache[key] = window[:, n_out * stride :].clone()  # clone: don't keep the whole window alive
    if n_out == 0:
        return x.new_empty(x.shape[0], 0, weight.shape[0])
    return time_major_conv(window[:, : (n_out - 1) * stride + reach + 1], weight, bias, stride, dilation)


def residual_step(skip_owner: nn.Module, x: torch.Tensor, y: torch.Tensor, cache: StreamCache) -> torch.Tensor:
    """x + y, time-major, for a residual branch y that lags its input x: the inputs y has not reached yet wait in
    the cache."""
    pending = cache.get(skip_owner, x[:, :0])
    n, p = y.shape[1], min(pending.shape[1], y.shape[1])
    y[:, :p].add_(pending[:, :p])
    y[:, p:].add_(x[:, : n - p])
    cache[skip_owner] = torch.cat([pending[:, p:], x[:, max(0, n - p) :]], dim=1)
    return y


def run_stages(stages: list, x: torch.Tensor, cache: StreamCache, final: bool, budget: int) -> Iterator[torch.Tensor]:
    """Feeds time-major x (B, t, C) through a chain of streaming stages, given as (stage, growth) with
    `stage(x, cache, final) -> y` and growth the size of the stage's largest activation over its input's,
    splitting every stage's input into tiles whose activations hold at most `budget` elements, so that they stay
    in cache whatever the piece's size. Yields the last stage's output tile by tile."""
    if not stages:
        yield x
        return
    (stage, growth), rest = stages[0], stages[1:]
    if x.shape[1]:
        for tile in x.split(max(1, int(budget / (x.shape[0] * x.shape[2] * growth))), dim=1):
            y = stage(tile, cache, False)
            if y.shape[-1]:
                yield from run_stages(rest, y, cache, False, budget)
    if final:
        yield from run_stages(rest, stage(x[:, :0], cache, True), cache, True, budget)
