"""The stream engine: convolutions over a signal that arrives in pieces, exact for any split.

A *stream* runs a stack of layers over one signal, piece by piece, and gives what the stack gives for the whole
signal. Every convolution keeps the tail of its input that its next outputs read and emits each output as soon as
all of the inputs it reads have arrived; the zero padding goes in only at the signal's two ends. A residual branch
lags its input by the branch's lookahead, so the skip path waits too. Every sample is computed once, with no
recomputed context and no averaging:

    conv input   ... |==== tail ====|=============== new piece ===============|
                     '------- window of the next outputs -------'             |
    conv output  ... |=================== emitted now ===================|   (the last outputs wait for more)
                                                                          '--- next tail ---'

Two words belong to this module (chunking.py defines block, chunk and window):
- *state*: what a stream remembers between pieces: each convolution's input tail (`ConvStream`), each residual
  unit's pending skip inputs (`Residual`) and each transposed convolution's start crop (`ConvTransposeStream`).
  The layers build it once per stream (`Encoder.stream()`, `Decoder.stream()`); it lives in the stream's objects
  and is discarded with them, and the modules hold none of it. Not state: the weights derived from the modules'
  (the transposed convolutions' polyphase kernels), which `DerivedWeights` keeps once per model and weights, and
  the buffer that a thread's convolutions write their input windows into (`Scratch`), which no step leaves data in.
- *tile*: the slice of a piece that one layer processes at a time (`Pipeline`), at most `TILE_ELEMENTS`
  activations, so that they stay in cache whatever the piece's size.

Streams hold activations time-major, (batch, time, channels): a piece then appends to a tail as whole rows, and
the convolutions run in oneDNN's native channels-last layout without reorders (`time_major_conv`).
"""

from __future__ import annotations

import functools
import math
import platform
import threading
import weakref
from typing import Callable, Iterator, NamedTuple, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

TILE_ELEMENTS = 1 << 22  # activations per tile and layer: 16 MB in fp32, in cache and off mmap
GEMM_STEPS = 1024  # unpacked convs with fewer output steps per call run as one GEMM (see `time_major_conv`)
PACK_ELEMENTS = 1 << 18  # weights at least this large (1 MB in fp32) are packed once (`pack_weight`)
# Packing pays where torch's kernels are AVX-512: oneDNN then blocks fp32 weights the same way for every input
# length. With AVX2 its block size follows the length, so a weight packed for a tile is reordered again, by a slow
# generic reorder, on every shorter call (0.1 s for 1024 x 1024 x 3 on a Zen 4): 1.8x slower encoding at 44.1 kHz.
PACK_WEIGHTS = torch.backends.cpu.get_cpu_capability() == "AVX512"
# Packed weights serve inputs of at least this many steps. oneDNN may choose another layout for a shorter input
# (384 channels on a Xeon with AMX: under ~80 steps), and then reorders the packed weight again by its slow generic
# reorder, 27 ms a call of a 384 x 384 x 7 conv: 18% of a 1 s decode at 16 kHz. Shorter inputs run as one GEMM.
PACKED_STEPS = 128


def cpu_vendor() -> str:
    """The vendor that the CPU reports (GenuineIntel, AuthenticAMD, ...): /proc/cpuinfo's vendor_id on Linux,
    the processor string elsewhere (Windows names it there); '' where neither says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# MKL, which runs torch's float32 GEMMs (F.linear), takes its AVX-512 kernels on Intel CPUs alone: on an AMD Zen 4 it
# reaches 85-115 GFLOP/s on the wide layers' short GEMMs, where oneDNN's matmul on the same operands reaches 160-190
# (the conv peak: 210). There, the GEMMs of wide weights (`PACK_ELEMENTS` or more, as for packing) run on oneDNN;
# MKL keeps the small ones, which it runs as fast or faster (64 channels, 256 steps: 120 against 71).
ONEDNN_GEMMS = torch.backends.mkldnn.is_available() and any(v in cpu_vendor() for v in ("AuthenticAMD", "HygonGenuine"))
Activation = Callable[..., torch.Tensor]  # activation(x, out=None): elementwise, time-major, into `out` if given


class Stream(Protocol):
    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """Time-major x (batch, t, C_in), the next piece of the input (empty allowed), -> the outputs
        (batch, t', C_out) that it completes. `final` marks the last piece."""


class Scratch:
    """The buffer, one per dtype and device, that convolutions write their input windows into: a window is dead
    once its conv has run, and fresh memory costs the allocator a page fault per 4 KB.

    Each thread has one (`Scratch.of_thread()`), which its streams share and which outlives them, so that a call
    reuses the last call's memory: with a scratch per stream, a 1 s encode at 44.1 kHz took 10k page faults a
    call. Streams of one thread can share it, even interleaved, because no window outlives its conv's step."""

    _threads = threading.local()

    def __init__(self):
        self.memory: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @classmethod
    def of_thread(cls) -> "Scratch":
        """This thread's scratch: at most a tile's input window (`TILE_ELEMENTS`) per dtype and device."""
        scratch = getattr(cls._threads, "scratch", None)
        if scratch is None:
            scratch = cls._threads.scratch = cls()
        return scratch

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape`, with the dtype and device of `like`."""
        size, key = math.prod(shape), (like.dtype, like.device)
        memory = self.memory.get(key)
        if memory is None or memory.numel() < size:
            memory = self.memory[key] = like.new_empty(size)
        return memory[:size].view(shape)


def matmul_precision(device: torch.device) -> str:
    """The internal precision, "ieee", "tf32" or "bf16", of torch's float32 matmuls on `device`: what
    `torch.set_float32_matmul_precision` or the backend's `fp32_precision` set ("medium" is "bf16" on CPU).

    Matmuls follow it; oneDNN's convolutions do not, but torch runs small convolutions as GEMMs, which do."""
    backend = {"cpu": torch.backends.mkldnn, "cuda": torch.backends.cuda}.get(device.type)
    matmul = getattr(getattr(backend, "matmul", None), "fp32_precision", None)
    inherited = getattr(backend, "fp32_precision", None), getattr(torch.backends, "fp32_precision", None)
    for precision in (matmul, *inherited):
        if precision not in (None, "none"):
            return precision
    if matmul is None:  # torch < 2.9 has only the global setting
        return {"high": "tf32", "medium": "bf16"}.get(torch.get_float32_matmul_precision(), "ieee")
    return "ieee"


def bf16_products(device: torch.device) -> bool:
    """Whether float32 matmuls on `device` run as bf16 products summed in float32 now: oneDNN's on CPU, under
    `torch.set_float32_matmul_precision("medium")`, where the CPU takes them (`cpu_takes_bf16_products`); 2.5-3.5x
    faster than float32 there. torch also runs small convolutions as such GEMMs (`float32_conv` does not)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available() and matmul_precision(device) == "bf16"
            and cpu_takes_bf16_products())


@functools.cache
def cpu_takes_bf16_products() -> bool:
    """Whether this CPU's float32 matmuls, under a bf16 matmul precision (the caller's), do take bf16 products.
    oneDNN takes them with AMX (a Xeon); with AVX512-BF16 alone (an AMD Zen 4 or 5) it keeps float32 products, and
    per-tap GEMMs in float32 are slower than the float32 routes. Probed once, by a product that bf16 operands
    change: 1 + 2^-12 rounds to 1."""
    ones = torch.ones(256, 256)
    return torch.mm(ones + 2**-12, ones)[0, 0].item() != 256 + 2**-4


def float32_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int = 1,
                 dilation: int = 1) -> torch.Tensor:
    """Unpadded conv of channels-first x (B, C_in, [1,] t) with float32 products whatever torch's matmul
    precision: oneDNN's convolution, where torch would run a small input as a GEMM that follows it."""
    n = x.dim() - 2
    return torch.mkldnn_convolution(x, weight, bias, [0] * n, [1] * (n - 1) + [stride], [1] * (n - 1) + [dilation], 1)


def tap_gemms(x: torch.Tensor, taps: torch.Tensor, bias: Optional[torch.Tensor], stride: int = 1,
              dilation: int = 1) -> torch.Tensor:
    """Unpadded conv1d of time-major x (B, t, C_in) with taps (k, C_in, C_out) (`tap_weights`) -> (B, t', C_out),
    as one GEMM per tap over rows of x, summed in place.

    Unlike oneDNN's convolutions, GEMMs follow torch's float32 matmul precision: under `bf16_products` this is the
    conv with bf16 products and float32 sums and outputs."""
    batch, t, _ = x.shape
    k = taps.shape[0]
    t_out = (t - dilation * (k - 1) - 1) // stride + 1
    span = (t_out - 1) * stride + 1
    y = x.new_empty(batch, t_out, taps.shape[2])
    for item, out in zip(x, y):  # 2-D GEMMs: oneDNN takes no batch of one weight (stride 0), which runs in float32
        if bias is None:
            torch.mm(item[:span:stride], taps[0], out=out)
        else:
            torch.addmm(bias, item[:span:stride], taps[0], out=out)
        for j in range(1, k):
            out.addmm_(item[j * dilation : j * dilation + span : stride], taps[j])
    return y


def gemm_conv(windows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """windows (B, t, K) @ weight (C_out, K)^T + bias -> (B, t, C_out): a conv as one GEMM over its gathered input
    windows; on oneDNN for wide float32 weights where MKL's GEMMs are slow (`ONEDNN_GEMMS`), which autograd does not
    carry, else F.linear."""
    wide = weight.numel() >= PACK_ELEMENTS and weight.dtype == torch.float32 and weight.device.type == "cpu"
    if ONEDNN_GEMMS and wide and not torch.is_grad_enabled():
        return torch.ops.mkldnn._linear_pointwise(windows, weight, bias, "none", [], "")
    return F.linear(windows, weight, bias)


def time_major_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: int = 1,
    dilation: int = 1,
    packed: Optional[torch.Tensor] = None,
    gemm: bool = True,
) -> torch.Tensor:
    """Unpadded conv1d of time-major x (B, t, C_in) with weight (C_out, C_in, k) -> (B, t', C_out), time-major.

    Runs as conv2d over the (B, C_in, 1, t) channels-last view of x, oneDNN's native layout, where (B, C, t) input
    would cost a reorder each way. oneDNN also reorders the weight into its blocked layout on every call, which
    costs more than the arithmetic when t' is short and the layer wide (the decoder's first layers, a stream's last
    steps). `packed` (`pack_weight`) is that reorder done once: the same kernel, the same sums, the output the same
    to the bit. Unpacked, short outputs run as one GEMM over the gathered input windows, which reads the weight
    in place; so do inputs shorter than `PACKED_STEPS`, packed or not. `gemm=False` keeps to oneDNN's convolution,
    whose products stay float32 whatever torch's matmul precision (`float32_conv`).
    """
    batch, t, c_in = x.shape
    c_out, k = weight.shape[0], weight.shape[-1]
    t_out = (t - dilation * (k - 1) - 1) // stride + 1
    if gemm and (packed is None or t < PACKED_STEPS) and t_out < GEMM_STEPS and weight.is_contiguous():
        step, channel = x.stride(1), x.stride(2)
        windows = x.as_strided((batch, t_out, c_in, k), (x.stride(0), stride * step, channel, dilation * step))
        return gemm_conv(windows.reshape(batch, t_out, c_in * k), weight.view(c_out, c_in * k), bias)
    x = x.transpose(1, 2).unsqueeze(2)
    if packed is not None and not torch.is_grad_enabled():
        y = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [0, 0], [1, stride], [1, dilation], 1, "none",
                                                    [], "")
    elif not gemm and not torch.is_grad_enabled():
        y = float32_conv(x, weight.unsqueeze(2), bias, stride, dilation)
    else:
        y = F.conv2d(x, weight.unsqueeze(2), bias, (1, stride), 0, (1, dilation))
    return y.squeeze(2).transpose(1, 2)  # (B, C_out, 1, t') -> (B, t', C_out)


def pack_weight(weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> Optional[torch.Tensor]:
    """`weight` (C_out, C_in, k) reordered once into the blocked layout that oneDNN's kernels for this CPU read (the
    CPU's vector width and ISA decide it), for `time_major_conv`; None where the reorder costs little (pointwise
    or small weights, whose layout oneDNN may choose otherwise for short inputs), where the layout follows the
    input's length (`PACK_WEIGHTS`; bfloat16 weights everywhere: a bf16 weight packed for a tile is reordered again
    on every shorter call, 4x slower decoding of 1 s at 44.1 kHz on a Zen 5) or oneDNN does not run it (another
    device, no oneDNN), and the conv then runs unpacked."""
    if not PACK_WEIGHTS or weight.dtype != torch.float32 or weight.shape[-1] == 1 or weight.numel() < PACK_ELEMENTS:
        return None
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    c_in = weight.shape[1]
    with torch.no_grad():  # the layout is chosen for a tile's length of input (`Pipeline`)
        return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.detach().unsqueeze(2).to_mkldnn(), [0, 0],
                                                         [1, stride], [1, dilation], 1,
                                                         [1, c_in, 1, max(1, TILE_ELEMENTS // c_in)])


class ConvStream:
    """A convolution (zero padding at both ends, any stride and dilation) of `activation(x)`, over time-major
    input that arrives in pieces. Its state is the input tail that later outputs read.

    `activation(x, out=...)` writes straight after the tail, into the window that the conv reads, which saves
    concatenating them. The conv runs as `time_major_conv` (`gemm`: whether short outputs may run as a GEMM), or
    as `tap_gemms` where `taps` are given.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        scratch: Scratch,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        activation: Optional[Activation] = None,
        packed: Optional[torch.Tensor] = None,
        taps: Optional[torch.Tensor] = None,
        gemm: bool = True,
    ):
        self.weight, self.bias, self.scratch, self.activation = weight, bias, scratch, activation
        self.packed = packed  # `pack_weight(weight, stride, dilation)`, or None
        self.taps, self.gemm = taps, gemm  # `tap_weights(conv)`, or None
        self.stride, self.dilation, self.padding = stride, dilation, padding
        self.reach = dilation * (weight.shape[-1] - 1)
        self.tail: Optional[torch.Tensor] = None  # None until the first step, whose tail is the left padding
        self.skip = 0  # inputs that the next output starts past (only for kernels shorter than the stride)

    @classmethod
    def of(cls, conv: nn.Conv1d, scratch: Scratch, activation: Optional[Activation] = None,
           bf16: bool = False) -> "ConvStream":
        """The stream of `conv`, with its weight packed once per model (`packed_weights`); its weight is read once
        (a weight-normed conv computes it on each access).

        Where torch's float32 matmuls take bf16 products (`bf16_products`), a conv that may (`bf16`) runs as
        `tap_gemms`, 2-3x faster, and the others keep to float32 convolutions, whose products stay float32."""
        return cls(conv.weight, conv.bias, scratch, conv.stride[0], conv.dilation[0], conv.padding[0], activation,
                   *conv_routes(conv, bf16))

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """The unpadded conv of a window x (B, t, C_in) -> (B, t', C_out)."""
        if self.taps is not None:
            return tap_gemms(x, self.taps, self.bias, self.stride, self.dilation)
        return time_major_conv(x, self.weight, self.bias, self.stride, self.dilation, self.packed, self.gemm)

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        stride, padding, reach = self.stride, self.padding, self.reach
        if reach == 0 and padding == 0 and stride == 1 and x.shape[1]:  # pointwise: nothing to carry over
            if self.activation is not None:
                x = self.activation(x, out=self.scratch.take(x.shape, x))
            return self.conv(x)
        if self.skip:  # a kernel shorter than its stride jumped past the inputs so far: drop what it skips
            dropped = min(self.skip, x.shape[1])
            x, self.skip = x[:, dropped:], self.skip - dropped
        tail, t = self.tail, x.shape[1]
        head, end = padding if tail is None else tail.shape[1], max(0, padding - self.skip) if final else 0
        window = self.scratch.take((x.shape[0], head + t + end, x.shape[2]), x)
        window[:, :head].zero_() if tail is None else window[:, :head].copy_(tail)
        if self.activation is None:
            window[:, head : head + t].copy_(x)
        else:
            self.activation(x, out=window[:, head : head + t])
        window[:, head + t :].zero_()
        n_out = max(0, (window.shape[1] - reach - 1) // stride + 1)
        self.tail = window[:, n_out * stride :].clone()  # clone: the window is scratch
        self.skip += max(0, n_out * stride - window.shape[1])
        if n_out == 0:
            return x.new_empty(x.shape[0], 0, self.weight.shape[0])
        return self.conv(window[:, : (n_out - 1) * stride + reach + 1])


class DerivedWeights:
    """Tensors derived from a module's parameters (`derive(module)`), computed once per module and version of its
    parameters and held here, outside the module: a derivation that costs more than a short call's arithmetic (the
    polyphase weights of a 44.1 kHz decoder take ~70 ms) is paid once per model, dtype and device, not per call.

    An entry is used only while the module's parameters are the same tensors at the same storage and version:
    in-place updates (an optimizer step, `load_state_dict`) and moves (`.to(dtype)`) recompute it. Modules whose
    weights are recomputed on every access (weight norm's parametrization) or carry no version (inference tensors)
    are never cached. Safe under concurrent calls: one lock guards the table, and entries die with their modules."""

    def __init__(self, derive: Callable[[nn.Module], tuple[torch.Tensor, ...]]):
        self.derive = derive
        self.table: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()

    def __call__(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        params = list(module.parameters(recurse=False))
        if parametrize.is_parametrized(module) or any(p.is_inference() for p in params):
            return self.derive(module)  # inference tensors (a model made under inference_mode) have no version
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        with self.lock:
            entry = self.table.get(module)
            if entry is not None and entry[0] == key and all(r() is p for r, p in zip(entry[1], params)):
                return entry[2]
            value = self.derive(module)
            self.table[module] = (key, [weakref.ref(p) for p in params], value)
            return value


def _polyphase_weights(conv: nn.ConvTranspose1d) -> tuple[torch.Tensor, torch.Tensor]:
    weight, s = conv.weight, conv.stride[0]
    c_in, c_out, kernel = weight.shape
    assert kernel == 2 * s and conv.dilation[0] == 1 and conv.output_padding[0] == 0, "not a DAC upsampler"
    # (C_in, C_out, [q, r]) -> (s * C_out, C_in, 2), phase-major, taps ordered x[m - 1], x[m]; copied in
    # slices of C_in, which keeps the strided reads in cache (1.5x faster than one copy of the whole)
    with torch.no_grad():
        source = weight.view(c_in, c_out, 2, s).flip(2).permute(3, 1, 0, 2)
        phases = weight.new_empty(s, c_out, c_in, 2)
        for start in range(0, c_in, 64):
            phases[:, :, start : start + 64].copy_(source[:, :, start : start + 64])
        return phases.view(s * c_out, c_in, 2), conv.bias.repeat(s)


# polyphase_weights(conv) -> (weight (s * C_out, C_in, 2), bias (s * C_out,)): the kernel-2 convolution (padding 1)
# whose output m holds, phase-major, the uncropped outputs m * s + r (r < s) of `conv`, a transposed conv of kernel
# 2s; derived once per model and weights (`DerivedWeights`).
polyphase_weights = DerivedWeights(_polyphase_weights)


def _packed(conv: nn.Module) -> tuple[Optional[torch.Tensor]]:
    if parametrize.is_parametrized(conv):  # weight norm (fine-tuning): the weight changes every step
        return (None,)
    if isinstance(conv, nn.ConvTranspose1d):
        return (pack_weight(polyphase_weights(conv)[0]),)
    return (pack_weight(conv.weight, conv.stride[0], conv.dilation[0]),)


# packed_weights(conv) -> (the weight `time_major_conv` runs `conv` with, packed by `pack_weight`, or None): for a
# transposed conv, its polyphase weight; derived once per model and weights (`DerivedWeights`).
packed_weights = DerivedWeights(_packed)


def _taps(conv: nn.Module) -> tuple[torch.Tensor]:
    weight = polyphase_weights(conv)[0] if isinstance(conv, nn.ConvTranspose1d) else conv.weight
    return (weight.detach().permute(2, 1, 0).contiguous(),)


# tap_weights(conv) -> (the weight `time_major_conv` runs `conv` with, as taps (k, C_in, C_out) for `tap_gemms`,):
# for a transposed conv, its polyphase weight's; derived once per model and weights (`DerivedWeights`).
tap_weights = DerivedWeights(_taps)


def packed_for(conv: nn.Module) -> Optional[torch.Tensor]:
    """`conv`'s packed weight for a stream built now: none under autograd, which the packed conv does not carry."""
    return None if torch.is_grad_enabled() else packed_weights(conv)[0]


def conv_routes(conv: nn.Module, bf16: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], bool]:
    """How a stream built now runs `conv`: (packed, taps, gemm) of `ConvStream`. Where torch's float32 matmuls
    take bf16 products (`bf16_products`), a conv that may (`bf16`) runs as `tap_gemms`, and one that may not keeps
    off GEMMs."""
    if not bf16_products(conv.weight.device):
        return packed_for(conv), None, True
    if bf16 and not torch.is_grad_enabled():
        return None, tap_weights(conv)[0], True
    return packed_for(conv), None, bf16


class ConvTransposeStream:
    """A transposed convolution of kernel 2 * stride, run as `stride` phases of one kernel-2 convolution
    (polyphase), which streams like any conv and runs 1.5-2x faster on CPU. Its state: the phases' input tail and
    the output samples still to crop at the start; the polyphase weights are derived once per model (`DerivedWeights`).

    With kernel 2s, uncropped output m * s + r is W[:, :, r]^T x[m] + W[:, :, r + s]^T x[m - 1]; `padding` samples
    are then cropped at both ends. The end's crop needs no holding back: the final step always emits the s samples
    that read the right padding, and padding <= s.
    """

    def __init__(self, conv: nn.ConvTranspose1d, scratch: Scratch, activation: Optional[Activation] = None,
                 bf16: bool = False):
        assert conv.padding[0] <= conv.stride[0], "the end's crop must lie within the final step's output"
        packed, taps, gemm = conv_routes(conv, bf16)  # `bf16` as for `ConvStream.of`
        self.phases = ConvStream(*polyphase_weights(conv), scratch, padding=1, activation=activation,
                                 packed=packed, taps=taps, gemm=gemm)
        self.c_out, self.crop = conv.out_channels, conv.padding[0]
        self.to_drop = self.crop  # samples still to crop at the start

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        z = self.phases.step(x, final)  # (B, n, s * C_out)
        z = z.reshape(z.shape[0], -1, self.c_out)  # phase-major channels: interleaving the phases is a view
        start = min(self.to_drop, z.shape[1])
        self.to_drop -= start
        return z[:, start : z.shape[1] - self.crop if final else z.shape[1]]


class Residual:
    """x + branch(x), time-major, for a branch that lags its input: the skip inputs that the branch has not
    reached yet wait in `pending`."""

    def __init__(self, branch: Stream):
        self.branch = branch
        self.pending: Optional[torch.Tensor] = None

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        y = self.branch.step(x, final)
        pending = x[:, :0] if self.pending is None else self.pending
        n, p = y.shape[1], min(pending.shape[1], y.shape[1])
        y[:, :p].add_(pending[:, :p])
        y[:, p:].add_(x[:, : n - p])
        self.pending = torch.cat([pending[:, p:], x[:, max(0, n - p) :]], dim=1)
        return y


class Chain:
    """Streams one after the other."""

    def __init__(self, *streams: Stream):
        self.streams = streams

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        for stream in self.streams:
            x = stream.step(x, final)
        return x


class Map:
    """An elementwise function as a stream."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]):
        self.function = function

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        return self.function(x)


class Pipeline:
    """Stages that each split their input into tiles, so that no activation exceeds `budget` elements whatever
    the piece's size. Each stage is (stream, growth), growth being the size of the stage's largest activation
    over its input's."""

    def __init__(self, stages: list[tuple[Stream, float]], budget: int = TILE_ELEMENTS):
        self.stages, self.budget = stages, budget

    def steps(self, x: torch.Tensor, final: bool) -> Iterator[torch.Tensor]:
        """Time-major x (B, t, C) -> the last stage's outputs that it completes, tile by tile, none empty."""
        return self._run(0, x, final)

    def _run(self, index: int, x: torch.Tensor, final: bool) -> Iterator[torch.Tensor]:
        if index == len(self.stages):
            if x.shape[1]:
                yield x
            return
        if not (x.shape[1] or final):
            return
        stream, growth = self.stages[index]
        tiles = x.split(max(1, int(self.budget / (x.shape[0] * x.shape[2] * growth))), dim=1) if x.shape[1] else (x,)
        for i, tile in enumerate(tiles):
            # The end comes with the last tile, so that its outputs and the stream's tail go on as one step: a
            # separate end step would add a short step to every later stage per earlier stage (1.1x at 1 s of 16 kHz)
            last = final and i == len(tiles) - 1
            y = stream.step(tile, last)
            if y.shape[1] or last:
                yield from self._run(index + 1, y, last)


# ----------------------------------------------------------------------------------------------------------------
# Fixed-block streams: the same streams as functions of explicit state, for graphs (ONNX) that take a block of a
# fixed size and the stream state as tensors and return the block's outputs and the next state.
#
# Every layer emits the same number of rows on every step, each a fixed `delay` of rows behind its input's
# positions, and keeps the fixed-size tail of its input that its next outputs read. The first steps' first rows
# lie before the signal and those after its end are past it: each convolution zeroes the inputs it reads outside
# its input's valid positions [0, length), which is exactly the zero padding of the whole-signal convolution.
# Rows outside the signal are thus garbage that no valid row reads; the caller drops the stream's first `delay`
# output rows and keeps its valid length. Layouts are channels-first, (batch, channels, rows), as ONNX's.


class Signal(NamedTuple):
    """A signal of a fixed-block stream: `rows` per step, row i of step k at position k * rows - delay + i, and
    `length(n)` valid positions (an int64 tensor) for a stream input of n valid positions."""

    rows: int
    delay: int
    length: Callable[[torch.Tensor], torch.Tensor]


class Clock:
    """One step's position and state: `step` (int64 scalar tensor k), `length` (the stream input's valid length,
    an int64 scalar tensor, larger than any position until the end is known), and the layers' state slots, read
    from one flat (batch, size) tensor and collected for the next one."""

    def __init__(self, step: torch.Tensor, length: torch.Tensor, state: torch.Tensor, slots: list[tuple[int, int]]):
        self.step, self.length, self.state, self.slots = step, length, state, slots
        self.offsets = [0]
        for channels, rows in slots:
            self.offsets.append(self.offsets[-1] + channels * rows)
        self.next: list[Optional[torch.Tensor]] = [None] * len(slots)

    def read(self, slot: int) -> torch.Tensor:
        """A slot's state (batch, channels, rows)."""
        channels, rows = self.slots[slot]
        return self.state[:, self.offsets[slot] : self.offsets[slot + 1]].view(-1, channels, rows)

    def write(self, slot: int, value: torch.Tensor) -> None:
        self.next[slot] = value.reshape(value.shape[0], -1)

    def next_state(self) -> torch.Tensor:
        assert all(value is not None for value in self.next), "a layer did not write its state"
        return torch.cat(self.next, dim=1)

    def valid(self, signal: Signal, before: int = 0) -> torch.Tensor:
        """Which of this step's rows of `signal`, with `before` rows ahead of them, lie in [0, length): (rows,)."""
        start = self.step * signal.rows - signal.delay - before
        positions = start + torch.arange(before + signal.rows, device=self.step.device)
        return (positions >= 0) & (positions < signal.length(self.length))


class StepLayer(nn.Module):
    """A layer of a fixed-block stream. `plan` fixes its rows, delay and state for its input signal (once, before
    any step) and returns its output signal; `forward(x, clock)` maps one step's input rows to its output rows."""

    def plan(self, signal: Signal, slots: list[tuple[int, int]]) -> Signal:
        raise NotImplementedError


class ConvStep(StepLayer):
    """`conv(activation(x))` with the conv's zero padding, over a fixed-block stream. State: the (masked) input tail
    that the next outputs read."""

    def __init__(self, conv: nn.Conv1d, activation: Optional[nn.Module] = None):
        super().__init__()
        self.conv, self.activation = conv, activation
        self.stride, self.dilation, self.padding = conv.stride[0], conv.dilation[0], conv.padding[0]
        self.reach = self.dilation * (conv.kernel_size[0] - 1)

    def plan(self, signal: Signal, slots: list[tuple[int, int]]) -> Signal:
        s, p, reach = self.stride, self.padding, self.reach
        if signal.rows % s:
            raise ValueError(f"a block of {signal.rows} rows does not divide into steps of stride {s}")
        # the last output of a step must read no input past the step's last: delay * s >= input delay + reach - p
        # + 1 - s; the tail then holds the inputs from the next step's first output's window on
        delay = max(0, -(-(signal.delay + reach - p + 1 - s) // s))
        self.input, self.rows = signal, signal.rows // s
        self.tail = delay * s + p - signal.delay
        self.pointwise = reach == 0 and p == 0 and s == 1
        if not self.pointwise:
            self.slot = len(slots)
            slots.append((self.conv.in_channels, self.tail))
        length = signal.length
        return Signal(self.rows, delay, lambda n: (length(n) + 2 * p - reach - 1) // s + 1)

    def forward(self, x: torch.Tensor, clock: Clock) -> torch.Tensor:
        if self.activation is not None:
            x = self.activation(x)
        if self.pointwise:  # reads its own row alone: rows outside the signal stay outside
            return F.conv1d(x, self.conv.weight, self.conv.bias)
        window = torch.cat([clock.read(self.slot), x], dim=2)
        window = torch.where(clock.valid(self.input, self.tail), window, window.new_zeros(()))
        clock.write(self.slot, window[:, :, window.shape[2] - self.tail :])
        used = (self.rows - 1) * self.stride + self.reach + 1
        return F.conv1d(window[:, :, :used], self.conv.weight, self.conv.bias, self.stride, 0, self.dilation)


class ConvTransposeStep(StepLayer):
    """A DAC upsampler (transposed conv of kernel 2s) of `activation(x)` over a fixed-block stream, run as its
    polyphase kernel-2 convolution (`polyphase_weights`) whose phases interleave into s outputs per input row."""

    def __init__(self, conv: nn.ConvTranspose1d, activation: Optional[nn.Module] = None):
        super().__init__()
        weight, bias = polyphase_weights(conv)
        phases = nn.Conv1d(weight.shape[1], weight.shape[0], 2, padding=1).to(weight)
        phases.weight.data, phases.bias.data = weight, bias
        self.phases = ConvStep(phases, activation)
        self.stride, self.crop, self.out_channels = conv.stride[0], conv.padding[0], conv.out_channels

    def plan(self, signal: Signal, slots: list[tuple[int, int]]) -> Signal:
        s, crop, length = self.stride, self.crop, signal.length
        phases = self.phases.plan(signal, slots)
        return Signal(phases.rows * s, phases.delay * s + crop, lambda n: length(n) * s + s - 2 * crop)

    def forward(self, x: torch.Tensor, clock: Clock) -> torch.Tensor:
        z = self.phases(x, clock)  # (B, s * C_out, n), channel r * C_out + c holding output m * s + r
        batch, _, n = z.shape
        return z.view(batch, self.stride, self.out_channels, n).permute(0, 2, 3, 1).reshape(batch, -1, n * self.stride)


class ResidualStep(StepLayer):
    """x + branch(x) over a fixed-block stream. State: the skip inputs that the branch's delay holds back."""

    def __init__(self, *branch: StepLayer):
        super().__init__()
        self.branch = ChainStep(*branch)

    def plan(self, signal: Signal, slots: list[tuple[int, int]]) -> Signal:
        out = self.branch.plan(signal, slots)
        assert out.rows == signal.rows, "a residual branch keeps the rate"
        self.lag, self.slot = out.delay - signal.delay, len(slots)
        slots.append((self.branch.layers[0].conv.in_channels, self.lag))
        return Signal(signal.rows, out.delay, signal.length)

    def forward(self, x: torch.Tensor, clock: Clock) -> torch.Tensor:
        y = self.branch(x, clock)
        skip = torch.cat([clock.read(self.slot), x], dim=2)
        clock.write(self.slot, skip[:, :, x.shape[2] :])
        return y + skip[:, :, : x.shape[2]]


class ChainStep(StepLayer):
    """Fixed-block stream layers one after the other."""

    def __init__(self, *layers: StepLayer):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def plan(self, signal: Signal, slots: list[tuple[int, int]]) -> Signal:
        for layer in self.layers:
            signal = layer.plan(signal, slots)
        return signal

    def forward(self, x: torch.Tensor, clock: Clock) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, clock)
        return x
