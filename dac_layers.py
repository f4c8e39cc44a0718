"""The building blocks of DAC, bottom-up: Snake1d, ResidualUnit, EncoderBlock, Encoder, DecoderBlock, Decoder,
VectorQuantize, ResidualVectorQuantize.

The maths is that of the reference package (descript-audio-codec) operation for operation, so codes are identical and
audio equal to float rounding. Convolutions hold plain weights: the reference's weight norm (w = g * v / ||v||) is
folded at conversion time, which computes the same function without recomputing w on every call. For fine-tuning,
`apply_weight_norm` puts the reparametrisation back and `remove_weight_norm` folds it again before saving.

Each layer's `forward` runs a whole signal; beside it, `stream` builds the same layer from the stream engine's parts
(streaming.py), with fresh state, for a signal that arrives in pieces.

Module and parameter names equal those of transformers' `DacModel`, so its checkpoints load as they are; the
reference's `nn.Sequential` names are mapped by `scripts/convert_checkpoint.py`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .streaming import (
    Chain,
    ChainStep,
    ConvStep,
    ConvStream,
    ConvTransposeStep,
    ConvTransposeStream,
    Map,
    Pipeline,
    Residual,
    ResidualStep,
    Scratch,
    bf16_products,
    float32_conv,
    matmul_precision,
)

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

    def time_major(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Snake of time-major x (batch, time, channels), the streams' layout; into `out` if given."""
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

    def stream(self, scratch: Scratch, decides_codes: bool = True) -> Residual:
        """Its stream. The dilated conv may take bf16 products (`bf16_products`; 73% of the arithmetic), and the 1x1
        conv may where the unit `decides_codes` not (the decoder's): with the encoder's 12 dilated convs in bf16,
        0-0.7% of the codes change, with its 1x1 convs as well 0.3-1.2% (44.1 and 16 kHz, speech and music-like
        audio, random weights)."""
        return Residual(Chain(ConvStream.of(self.conv1, scratch, self.snake1.time_major, bf16=True),
                              ConvStream.of(self.conv2, scratch, self.snake2.time_major, bf16=not decides_codes)))

    def steps(self) -> ResidualStep:
        return ResidualStep(ConvStep(self.conv1, self.snake1), ConvStep(self.conv2, self.snake2))


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

    def stream(self, scratch: Scratch) -> Chain:
        units = (unit.stream(scratch) for unit in (self.res_unit1, self.res_unit2, self.res_unit3))
        return Chain(*units, ConvStream.of(self.conv1, scratch, self.snake1.time_major))

    def steps(self) -> ChainStep:
        units = (unit.steps() for unit in (self.res_unit1, self.res_unit2, self.res_unit3))
        return ChainStep(*units, ConvStep(self.conv1, self.snake1))


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

    def stream(self) -> Pipeline:
        """A fresh stream of `forward`: time-major audio (batch, t, 1) -> latent frames (batch, n, latent_dim)."""
        scratch = Scratch.of_thread()
        return Pipeline([
            (ConvStream.of(self.conv1, scratch), self.conv1.out_channels),  # 1 -> dim channels a sample
            *((block.stream(scratch), 1) for block in self.block),  # C * 2, T / stride
            (ConvStream.of(self.conv2, scratch, self.snake1.time_major), 1),
        ])

    def steps(self) -> ChainStep:
        """`forward` as a fixed-block stream (streaming.py): audio (batch, 1, rows) -> latent (batch, latent_dim,
        rows / hop_length) a step."""
        return ChainStep(ConvStep(self.conv1), *(block.steps() for block in self.block),
                         ConvStep(self.conv2, self.snake1))


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

    def stream(self, scratch: Scratch) -> Chain:
        """Its stream, every conv of which may take bf16 products: the decoder decides no codes."""
        units = (unit.stream(scratch, decides_codes=False) for unit in (self.res_unit1, self.res_unit2, self.res_unit3))
        return Chain(ConvTransposeStream(self.conv_t1, scratch, self.snake1.time_major, bf16=True), *units)

    def steps(self) -> ChainStep:
        units = (unit.steps() for unit in (self.res_unit1, self.res_unit2, self.res_unit3))
        return ChainStep(ConvTransposeStep(self.conv_t1, self.snake1), *units)


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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in, which its input is cast to (the quantizer's float32 latents)."""
        return self.snake1.alpha.dtype  # a plain parameter, also under weight norm

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z.to(self.dtype))
        for block in self.block:
            x = block(x)
        return torch.tanh(self.conv2(self.snake1(x)))

    def stream(self) -> Pipeline:
        """A fresh stream of `forward`: time-major latent frames (batch, n, latent_dim) -> audio (batch, t, 1)."""
        scratch = Scratch.of_thread()
        return Pipeline([
            (ConvStream.of(self.conv1, scratch, bf16=True), self.conv1.out_channels / self.conv1.in_channels),
            *((block.stream(scratch), block.conv_t1.stride[0] / 2) for block in self.block),  # T * stride, C / 2
            (Chain(ConvStream.of(self.conv2, scratch, self.snake1.time_major, bf16=True), Map(torch.tanh_)), 1),
        ])

    def steps(self) -> ChainStep:
        """`forward` before its tanh as a fixed-block stream (streaming.py): latent (batch, latent_dim, rows) ->
        (batch, 1, rows * hop_length) a step."""
        return ChainStep(ConvStep(self.conv1), *(block.steps() for block in self.block),
                         ConvStep(self.conv2, self.snake1))


class VectorQuantize(nn.Module):
    """One codebook with factorized, L2-normalized lookup (Yu et al., 2021): project the latent to codebook_dim,
    pick the nearest normalized entry by cosine similarity, project the raw entry back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = nn.Conv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantizes z (batch, input_dim, frames).

        Returns:
            z_q: (batch, input_dim, frames), the projected codebook entries. The straight-through estimator passes
                its gradient to z_e unchanged, as in the reference.
            codes: (batch, frames) int64.
            z_e: (batch, codebook_dim, frames), the projected latent before quantization.
        """
        z_e = self.project(self.in_proj, z)
        codes = self.nearest(z_e)
        z_p = self.decode_code(codes)
        return self.project(self.out_proj, z_e + (z_p - z_e).detach()), codes, z_e

    @staticmethod
    def project(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """conv(x), with float32 products also where torch's matmuls take bf16 ones (`bf16_products`)."""
        if not torch.is_grad_enabled() and bf16_products(x.device):
            return float32_conv(x, conv.weight, conv.bias)
        return conv(x)

    def losses(self, z_e: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(commitment, codebook) losses per item (batch,): the mean squared distance between z_e and its codebook
        entries, which trains the encoder towards the entries and the entries towards the encoder respectively."""
        z_p = self.decode_code(codes)
        commitment = F.mse_loss(z_e, z_p.detach(), reduction="none").mean([1, 2])
        codebook = F.mse_loss(z_p, z_e.detach(), reduction="none").mean([1, 2])
        return commitment, codebook

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each frame of z_e (batch, codebook_dim, frames)."""
        encodings = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))  # (B, D, T) -> (B * T, D)
        codebook = F.normalize(self.codebook.weight)
        if matmul_precision(z_e.device) == "ieee":
            products = encodings @ codebook.t()
        else:  # TF32 or bf16 matmuls would change 1-2% of the codes; float64 ones follow no such setting
            products = (encodings.double() @ codebook.double().t()).float()
        dist = encodings.pow(2).sum(1, keepdim=True) - 2 * products + codebook.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1)[1].view(z_e.shape[0], -1)

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors (batch, codebook_dim, frames) of codes (batch, frames)."""
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)


class Quantized(NamedTuple):
    """What `ResidualVectorQuantize` returns; its first two fields unpack as `z_q, codes`."""

    z_q: torch.Tensor  # (batch, input_dim, frames): the sum of the codebooks' contributions
    codes: torch.Tensor  # (batch, n_quantizers, frames) int64
    latents: Optional[torch.Tensor] = None  # (batch, n_quantizers * codebook_dim, frames): each z_e
    commitment_loss: Optional[torch.Tensor] = None  # scalar: over codebooks, the batch mean of each one's loss
    codebook_loss: Optional[torch.Tensor] = None  # scalar, likewise


class ResidualVectorQuantize(nn.Module):
    """Residual VQ (Zeghidour et al., 2021): each codebook quantizes what the previous ones left over.

    Quantizer dropout (training only): the first int(batch * dropout) items of a batch use a random number of
    codebooks, 1 to n_codebooks, so that the model learns every bitrate; the draw is the reference's, from torch's
    global generator.

    It decides the codes, so it computes in float32 whatever the model's dtype: its weights stay float32 when the
    model moves to bf16 or fp16 (`_apply`; 0.23M of a 44.1 kHz model's 77M), autocast is off inside it, and only its
    z_q takes the activations' dtype. In bf16 here, 2-4% more of the codes would change (44.1 kHz, random weights).
    """

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)
        )
        self.dropout = dropout

    def _apply(self, fn, recurse=True):
        """Every move and conversion as asked, except float32 weights to 16-bit floats: those only move device."""

        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t.dtype == torch.float32 and moved.dtype in (torch.bfloat16, torch.float16):
                return t.to(moved.device)
            return moved

        return super()._apply(keep_float32, recurse)

    def forward(self, z: torch.Tensor, n_quantizers: Optional[int] = None) -> Quantized:
        """Quantizes z (batch, input_dim, frames) with the first `n_quantizers` codebooks (all by default).

        In training mode every item also uses at most its dropout draw of codebooks (codebooks past it add nothing
        to z_q and count for no loss), and codes and latents cover all `n_quantizers`. Under `torch.inference_mode`
        only z_q and codes are computed. z_q has z's dtype; the rest is float32.
        """
        with torch.autocast(z.device.type, enabled=False):
            quantized = self._quantize(z.float(), n_quantizers)
        return quantized._replace(z_q=quantized.z_q.to(z.dtype))

    def _quantize(self, z: torch.Tensor, n_quantizers: Optional[int]) -> Quantized:
        quantizers = self.quantizers[:n_quantizers]
        if torch.is_inference_mode_enabled():
            z_q, residual, codes = 0, z, []
            for quantizer in quantizers:
                z_q_i, codes_i, _ = quantizer(residual)
                z_q = z_q + z_q_i
                residual = residual - z_q_i
                codes.append(codes_i)
            return Quantized(z_q, torch.stack(codes, dim=1))

        used = torch.full((z.shape[0],), float(len(quantizers)))  # codebooks each item uses
        if self.training:  # the reference's draw, made whatever the dropout rate, so random streams stay aligned
            drawn = torch.randint(1, len(self.quantizers) + 1, (z.shape[0],))
            n_dropout = int(z.shape[0] * self.dropout)
            used[:n_dropout] = torch.minimum(drawn[:n_dropout].float(), used[:n_dropout])
        used = used.to(z.device)
        z_q, residual, codes, latents, commitment_loss, codebook_loss = 0, z, [], [], 0, 0
        for i, quantizer in enumerate(quantizers):
            z_q_i, codes_i, z_e_i = quantizer(residual)
            mask = (i < used).to(z_q_i.dtype)
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commitment_i, codebook_i = quantizer.losses(z_e_i, codes_i)
            commitment_loss = commitment_loss + (commitment_i * mask).mean()
            codebook_loss = codebook_loss + (codebook_i * mask).mean()
            codes.append(codes_i)
            latents.append(z_e_i)
        return Quantized(z_q, torch.stack(codes, dim=1), torch.cat(latents, dim=1), commitment_loss, codebook_loss)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """z_q (batch, input_dim, frames) float32 of codes (batch, n, frames), n <= n_codebooks."""
        z_q = 0
        with torch.autocast(codes.device.type, enabled=False):
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
