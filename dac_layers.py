"""The building blocks of DAC, bottom-up: Snake1d, ResidualUnit, EncoderBlock, Encoder, DecoderBlock, Decoder,
VectorQuantize, ResidualVectorQuantize.

The maths is that of the reference package (descript-audio-codec) operation for operation, so codes are identical and
audio equal to float rounding. Convolutions hold plain weights: the reference's weight norm (w = g * v / ||v||) is
folded at conversion time, which computes the same function without recomputing w on every call. For fine-tuning,
`apply_weight_norm` puts the reparametrisation back and `remove_weight_norm` folds it again before saving.

Module and parameter names equal those of transformers' `DacModel`, so its checkpoints load as they are; the
reference's `nn.Sequential` names are mapped by `scripts/convert_checkpoint.py`.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .chunking import PlainConv, StreamCache, conv_step, residual_step, run_stages

TILE_ELEMENTS = 1 << 22  # activations per streaming step and layer: 16 MB in fp32, in cache and off mmap

KERNEL_SIZE = 7  # every non-strided convolution of the encoder and decoder, except the encoder's last (3)
DILATIONS = (1, 3, 9)  # the three residual units of every block
SNAKE_EPS = 1e-9  # keeps 1 / alpha finite for alpha = 0, as in the reference


def snake(x: torch.Tensor, alpha: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Snake activation x + sin^2(alpha x) / alpha, for x (batch, channels, time) and alpha (1, channels, 1), or
    both transposed; into `out` if given.

    Same operations as the reference, done in place on one temporary: each Snake otherwise allocates four
    activation-sized tensors, and allocation dominates at these sizes. Not differentiable in place, so training
    (autograd on) takes the plain expression.
    """
    if torch.is_grad_enabled():
        y = x + (alpha + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).pow(2)
        return y if out is None else out.copy_(y)
    y = torch.mul(alpha, x, out=out).sin_().pow_(2)
    return y.mul_((alpha + SNAKE_EPS).reciprocal()).add_(x)


class Snake1d(nn.Module):
    """Periodic activation with a learned frequency per channel (Ziyin et al., 2020)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)

    def step(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Snake of time-major x (batch, time, channels), the layout of the streaming path; into `out` if given."""
        return snake(x, self.alpha.transpose(1, 2), out)


class ResidualUnit(nn.Module):
    """Snake, dilated conv (kernel 7), Snake, 1x1 conv, plus the input. Keeps (batch, dim, time)."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        pad = (KERNEL_SIZE - 1) * dilation // 2
        self.snake1 = Snake1d(dim)
        self.conv1 = nn.Conv1d(dim, dim, KERNEL_SIZE, dilation=dilation, padding=pad)
        self.snake2 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return y.add_(x) if not torch.is_grad_enabled() else y + x

    def step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        y = conv_step(self.conv1, x, cache, final, activation=self.snake1.step)
        y = conv_step(self.conv2, y, cache, final, activation=self.snake2.step)
        return residual_step(self, x, y, cache)


class EncoderBlock(nn.Module):
    """Three residual units at dim // 2 channels, then a strided conv: (B, dim // 2, T) -> (B, dim, T // stride)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.res_unit1 = ResidualUnit(dim // 2, DILATIONS[0])
        self.res_unit2 = ResidualUnit(dim // 2, DILATIONS[1])
        self.res_unit3 = ResidualUnit(dim // 2, DILATIONS[2])
        self.snake1 = Snake1d(dim // 2)
        self.conv1 = nn.Conv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))

    def step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit.step(x, cache, final)
        return conv_step(self.conv1, x, cache, final, activation=self.snake1.step)


class Encoder(nn.Module):
    """Waveform (batch, 1, samples) -> latent z (batch, latent_dim, samples // hop_length)."""

    def __init__(self, dim: int, rates: list[int], latent_dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(1, dim, KERNEL_SIZE, padding=KERNEL_SIZE // 2)
        self.block = nn.ModuleList(EncoderBlock(dim * 2 ** (i + 1), stride) for i, stride in enumerate(rates))
        out_dim = dim * 2 ** len(rates)
        self.snake1 = Snake1d(out_dim)
        self.conv2 = nn.Conv1d(out_dim, latent_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

    def step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> Iterator[torch.Tensor]:
        """`forward` over a signal (batch, 1, t) that arrives in pieces (see `conv_step`); `final` marks the last
        piece. Yields the latent frames (batch, latent_dim, n) that the piece completes, in tiles. Inside, the
        activations are time-major (batch, time, channels), as `conv_step` takes them."""
        first = (partial(conv_step, self.conv1), self.conv1.out_channels)
        stages = [first, *((block.step, 1) for block in self.block), (self._output_step, 1)]
        return run_stages(stages, x.transpose(1, 2), cache, final, TILE_ELEMENTS)

    def _output_step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        return conv_step(self.conv2, x, cache, final, activation=self.snake1.step).transpose(1, 2)


class DecoderBlock(nn.Module):
    """Snake, transposed conv, three residual units: (B, in_dim, T) -> (B, out_dim, T * stride).

    For odd strides the transposed conv (kernel 2s, padding ceil(s / 2)) returns one sample less: s * T - 1.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.snake1 = Snake1d(in_dim)
        self.conv_t1 = nn.ConvTranspose1d(
            in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2
        )
        self.res_unit1 = ResidualUnit(out_dim, DILATIONS[0])
        self.res_unit2 = ResidualUnit(out_dim, DILATIONS[1])
        self.res_unit3 = ResidualUnit(out_dim, DILATIONS[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))

    def step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        x = self._conv_t1_step(x, cache, final)
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit.step(x, cache, final)
        return x

    def _conv_t1_step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        """Snake, then the transposed conv as `stride` phases of one kernel-2 conv (polyphase), which runs 1.5-2x
        faster on CPU and streams like any conv. With kernel 2s, uncropped output m * s + r is
        W[:, :, r]^T x[m] + W[:, :, r + s]^T x[m - 1]; `padding` samples are then cropped at both ends.
        Time-major (B, n, C_in) -> (B, n * s - crops, C_out)."""
        conv, s = self.conv_t1, self.conv_t1.stride[0]
        c_in, c_out, _ = conv.weight.shape
        weight = conv.weight  # computed afresh on each access under weight norm: then nothing is cached
        key = None if nn.utils.parametrize.is_parametrized(conv) else (weight.data_ptr(), weight._version, weight.dtype)
        if key is None or getattr(self, "_polyphase_key", None) != key:
            # (C_in, C_out, [q, r]) -> (s * C_out, C_in, 2), phase-major, taps ordered x[m - 1], x[m]
            w = weight.view(c_in, c_out, 2, s).flip(2).permute(3, 1, 0, 2).reshape(s * c_out, c_in, 2)
            self._polyphase = PlainConv(w.contiguous(), conv.bias.repeat(s), padding=1)
            self._polyphase_key = key
        z = conv_step(self._polyphase, x, cache, final, self.snake1.step, key=self)  # (B, n, s * C_out)
        z = z.reshape(z.shape[0], -1, c_out)  # phase-major channels: interleaving the phases is a view

        crop = cache.setdefault(conv, {"start": conv.padding[0], "held": None})
        if crop["held"] is not None:
            z = torch.cat([crop["held"], z], dim=1)
        start = min(crop["start"], z.shape[1])
        crop["start"] -= start
        end = z.shape[1] - conv.padding[0]  # the last `padding` samples so far may be the stream's end
        if not final:
            crop["held"] = z[:, max(start, end) :].clone()
        return z[:, start : max(start, end)]


class Decoder(nn.Module):
    """Latent (batch, latent_dim, frames) -> waveform (batch, 1, samples) in [-1, 1].

    samples = hop_length * frames, less 8 for the 16 and 24 kHz models (their stride-5 block drops a sample).
    """

    def __init__(self, latent_dim: int, dim: int, rates: list[int]):
        super().__init__()
        self.conv1 = nn.Conv1d(latent_dim, dim, KERNEL_SIZE, padding=KERNEL_SIZE // 2)
        self.block = nn.ModuleList(
            DecoderBlock(dim // 2**i, dim // 2 ** (i + 1), stride) for i, stride in enumerate(rates)
        )
        out_dim = dim // 2 ** len(rates)
        self.snake1 = Snake1d(out_dim)
        self.conv2 = nn.Conv1d(out_dim, 1, KERNEL_SIZE, padding=KERNEL_SIZE // 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.block:
            x = block(x)
        return torch.tanh(self.conv2(self.snake1(x)))

    def step(self, z: torch.Tensor, cache: StreamCache, final: bool) -> Iterator[torch.Tensor]:
        """`forward` over latent frames (batch, latent_dim, n) that arrive in pieces (see `conv_step`); `final`
        marks the last piece. Yields the audio (batch, 1, t) that the piece completes, in tiles. Inside, the
        activations are time-major (batch, time, channels), as `conv_step` takes them."""
        first = (partial(conv_step, self.conv1), self.conv1.out_channels / self.conv1.in_channels)
        blocks = ((block.step, block.conv_t1.stride[0] / 2) for block in self.block)  # T * stride, C / 2
        stages = [first, *blocks, (self._output_step, 1)]
        return run_stages(stages, z.transpose(1, 2).contiguous(), cache, final, TILE_ELEMENTS)

    def _output_step(self, x: torch.Tensor, cache: StreamCache, final: bool) -> torch.Tensor:
        return torch.tanh_(conv_step(self.conv2, x, cache, final, activation=self.snake1.step)).transpose(1, 2)


class VectorQuantize(nn.Module):
    """One codebook with factorized, L2-normalized lookup (Yu et al., 2021): project the latent to codebook_dim,
    pick the nearest normalized entry by cosine similarity, project the raw entry back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = nn.Conv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantizes z (batch, input_dim, frames); returns z_q (batch, input_dim, frames), codes (batch, frames)."""
        z_e = self.in_proj(z)
        codes = self.nearest(z_e)
        z_p = self.decode_code(codes)
        # The reference's straight-through estimator, z_e + (z_p - z_e), kept for bit-identical values.
        return self.out_proj(z_e + (z_p - z_e)), codes

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each frame of z_e (batch, codebook_dim, frames)."""
        # In float32 whatever the model's dtype: an 8-dim lookup costs nothing, and bf16 would blur near-ties.
        encodings = F.normalize(z_e.float().transpose(1, 2).reshape(-1, z_e.shape[1]))  # (B, D, T) -> (B * T, D)
        codebook = F.normalize(self.codebook.weight.float())
        dist = (
            encodings.pow(2).sum(1, keepdim=True)
            - 2 * encodings @ codebook.t()
            + codebook.pow(2).sum(1, keepdim=True).t()
        )
        return (-dist).max(1)[1].view(z_e.shape[0], -1)

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors (batch, codebook_dim, frames) of codes (batch, frames)."""
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)


class ResidualVectorQuantize(nn.Module):
    """Residual VQ (Zeghidour et al., 2021): each codebook quantizes what the previous ones left over."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)
        )

    def forward(self, z: torch.Tensor, n_quantizers: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantizes z (batch, input_dim, frames) with the first `n_quantizers` codebooks (all by default).

        Returns:
            z_q: (batch, input_dim, frames), the sum of the codebooks' contributions.
            codes: (batch, n_quantizers, frames), int64.
        """
        z_q, residual, codes = 0, z, []
        for quantizer in self.quantizers[:n_quantizers]:
            z_q_i, codes_i = quantizer(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
        return z_q, torch.stack(codes, dim=1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """z_q (batch, input_dim, frames) of codes (batch, n, frames), n <= n_codebooks."""
        z_q = 0
        for i, quantizer in enumerate(self.quantizers[: codes.shape[1]]):
            z_q = z_q + quantizer.out_proj(quantizer.decode_code(codes[:, i]))
        return z_q


def weight_normed_convs(module: nn.Module):
    """The convolutions that the reference trains with weight norm: all of them."""
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def apply_weight_norm(module: nn.Module) -> None:
    """Re-parametrizes every convolution as w = g * v / ||v|| (dim 0), as the reference trains. The function
    computed is unchanged; call `remove_weight_norm` before saving so the checkpoint keeps plain weights."""
    for conv in weight_normed_convs(module):
        nn.utils.parametrizations.weight_norm(conv, dim=0)


def remove_weight_norm(module: nn.Module) -> None:
    """Folds weight norm back into plain weights."""
    for conv in weight_normed_convs(module):
        if nn.utils.parametrize.is_parametrized(conv, "weight"):
            nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
