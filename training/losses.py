"""The original's training objective, self-contained: the discriminator (MPD, MSD, MRD) and the losses (multi-scale
mel and STFT, L1, GAN and feature matching), with the defaults of descript-audio-codec's `conf/base.yml`.

Each part computes what the original computes, operation for operation (its spectrograms come from audiotools: the
same periodic Hann window, reflect padding, `match_stride` cropping and slaney mel filters are used here), so that a
model fine-tuned here is trained as the released ones were. Training code only: nothing here ships to the Hub.

    discriminator = Discriminator(sample_rate=44100)
    d_loss = discriminator_loss(discriminator(fake.detach()), discriminator(real))
    gen_loss, feat_loss = generator_losses(discriminator(fake), discriminator(real))
    loss = objective(mel=MelSpectrogramLoss(44100)(fake, real), gen=gen_loss, feat=feat_loss, commitment=...)
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# conf/base.yml: the weights of the generator's losses ("lambdas"); stft and waveform losses are logged, weight 0
LAMBDAS = {"mel": 15.0, "feat": 2.0, "gen": 1.0, "commitment": 0.25, "codebook": 1.0}
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))  # MRD's bands, fractions of the bins
MIN_SAMPLES = 2048  # the shortest excerpt the losses take: their widest STFT window reflect-pads half of it


# ----------------------------------------------------------------------------------------------------------------
# Spectrograms, as audiotools computes them
@functools.lru_cache(None)
def hann_window(length: int) -> torch.Tensor:
    """scipy's periodic Hann window, computed in float64 and stored as float32, as audiotools has it."""
    return torch.hann_window(length, periodic=True, dtype=torch.float64).float()


def stft(x: torch.Tensor, window_length: int, hop_length: int, match_stride: bool = False) -> torch.Tensor:
    """Complex STFT (batch, channels, window_length // 2 + 1, frames) of x (batch, channels, time).

    With `match_stride` (hop = window / 4) the signal is reflect-padded so that frames * hop = samples, as strided
    convolutions align, and the two frames at each end that the padding adds are dropped."""
    batch, channels, length = x.shape
    right, pad = 0, 0
    if match_stride:
        assert hop_length == window_length // 4, "match_stride needs hop = window / 4"
        right, pad = -length % hop_length, (window_length - hop_length) // 2
    x = F.pad(x, (pad, pad + right), mode="reflect")
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft=window_length, hop_length=hop_length,
                      window=hann_window(window_length).to(x.device), return_complex=True, center=True)
    spec = spec.reshape(batch, channels, *spec.shape[-2:])
    return spec[..., 2:-2] if match_stride else spec


@functools.lru_cache(None)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: Optional[float]) -> torch.Tensor:
    """Slaney-scale, slaney-normalised mel filters (n_mels, n_fft // 2 + 1), as librosa (and so audiotools) makes
    them."""
    import warnings

    from transformers.audio_utils import mel_filter_bank

    with warnings.catch_warnings():  # narrow windows leave some mel bands empty, in the original too
        warnings.simplefilter("ignore")
        filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
                                  max_frequency=sample_rate / 2 if fmax is None else fmax, sampling_rate=sample_rate,
                                  norm="slaney", mel_scale="slaney")
    return torch.from_numpy(filters.T).float()


def mel_spectrogram(x: torch.Tensor, sample_rate: int, n_mels: int, window_length: int, hop_length: int,
                    fmin: float = 0.0, fmax: Optional[float] = None) -> torch.Tensor:
    """Mel magnitudes (batch, channels, n_mels, frames) of x (batch, channels, time)."""
    magnitude = stft(x, window_length, hop_length).abs()
    filters = mel_filters(sample_rate, window_length, n_mels, fmin, fmax).to(x.device)
    return (magnitude.transpose(2, -1) @ filters.T).transpose(-1, 2)


# ----------------------------------------------------------------------------------------------------------------
# Reconstruction losses
class MelSpectrogramLoss(nn.Module):
    """Multi-scale mel loss: over each (window, mels) pair, log_weight * L1 of log10(clamp(mel) ** pow) plus
    mag_weight * L1 of the mels. Defaults: conf/base.yml (7 scales, pow 1, magnitude weight 0)."""

    def __init__(self, sample_rate: int, n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
                 window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048), clamp_eps: float = 1e-5,
                 mag_weight: float = 0.0, log_weight: float = 1.0, pow: float = 1.0,
                 mel_fmin: Optional[Sequence[float]] = None, mel_fmax: Optional[Sequence[Optional[float]]] = None):
        super().__init__()
        self.sample_rate, self.n_mels, self.window_lengths = sample_rate, tuple(n_mels), tuple(window_lengths)
        self.clamp_eps, self.mag_weight, self.log_weight, self.pow = clamp_eps, mag_weight, log_weight, pow
        self.mel_fmin = tuple(mel_fmin or [0.0] * len(self.n_mels))
        self.mel_fmax = tuple(mel_fmax or [None] * len(self.n_mels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of estimate x against reference y, both (batch, channels, time)."""
        loss = 0.0
        for n_mels, window, fmin, fmax in zip(self.n_mels, self.window_lengths, self.mel_fmin, self.mel_fmax):
            x_mels, y_mels = (mel_spectrogram(s, self.sample_rate, n_mels, window, window // 4, fmin, fmax)
                              for s in (x, y))
            loss += self.log_weight * F.l1_loss(x_mels.clamp(self.clamp_eps).pow(self.pow).log10(),
                                                y_mels.clamp(self.clamp_eps).pow(self.pow).log10())
            loss += self.mag_weight * F.l1_loss(x_mels, y_mels)
        return loss


class MultiScaleSTFTLoss(nn.Module):
    """Multi-scale STFT loss: as the mel loss, on STFT magnitudes (windows 2048 and 512, pow 2, both terms)."""

    def __init__(self, window_lengths: Sequence[int] = (2048, 512), clamp_eps: float = 1e-5,
                 mag_weight: float = 1.0, log_weight: float = 1.0, pow: float = 2.0):
        super().__init__()
        self.window_lengths = tuple(window_lengths)
        self.clamp_eps, self.mag_weight, self.log_weight, self.pow = clamp_eps, mag_weight, log_weight, pow

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = 0.0
        for window in self.window_lengths:
            x_mag, y_mag = (stft(s, window, window // 4).abs() for s in (x, y))
            loss += self.log_weight * F.l1_loss(x_mag.clamp(self.clamp_eps).pow(self.pow).log10(),
                                                y_mag.clamp(self.clamp_eps).pow(self.pow).log10())
            loss += self.mag_weight * F.l1_loss(x_mag, y_mag)
        return loss


# ----------------------------------------------------------------------------------------------------------------
# Discriminator
def _conv(conv: nn.Module, act: bool = True) -> nn.Module:
    """A weight-normed conv, followed by LeakyReLU(0.1) unless `act` is False (the original's WNConv)."""
    conv = weight_norm(conv)
    return nn.Sequential(conv, nn.LeakyReLU(0.1)) if act else conv


def _feature_maps(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every conv's output in turn, then the logits of `post`."""
    fmap = []
    for layer in convs:
        x = layer(x)
        fmap.append(x)
    fmap.append(post(x))
    return fmap


class MPD(nn.Module):
    """Multi-period discriminator: the waveform folded into columns of `period` samples, 2-D convolutions along
    them."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period
        channels = (1, 32, 128, 512, 1024)
        self.convs = nn.ModuleList(
            [_conv(nn.Conv2d(c_in, c_out, (5, 1), (3, 1), padding=(2, 0))) for c_in, c_out in
             zip(channels, channels[1:])] + [_conv(nn.Conv2d(1024, 1024, (5, 1), 1, padding=(2, 0)))]
        )
        self.conv_post = _conv(nn.Conv2d(1024, 1, kernel_size=(3, 1), padding=(1, 0)), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Always pads, a whole period when the length is a multiple of it, as the original does.
        x = F.pad(x, (0, self.period - x.shape[-1] % self.period), mode="reflect")
        x = x.view(x.shape[0], x.shape[1], -1, self.period)  # (B, C, T) -> (B, C, T / p, p)
        return _feature_maps(self.convs, self.conv_post, x)


class MSD(nn.Module):
    """Multi-scale discriminator: strided grouped 1-D convolutions on the waveform. The original resamples the
    input to sample_rate / rate first; only rate 1 (no resampling) is supported here, and base.yml uses no MSD."""

    def __init__(self, rate: int = 1, sample_rate: int = 44100):
        super().__init__()
        if rate != 1:
            raise ValueError(f"MSD supports rate 1 only (no resampling), got {rate}.")
        specs = ((1, 16, 15, 1, 1, 7), (16, 64, 41, 4, 4, 20), (64, 256, 41, 4, 16, 20), (256, 1024, 41, 4, 64, 20),
                 (1024, 1024, 41, 4, 256, 20), (1024, 1024, 5, 1, 1, 2))
        self.convs = nn.ModuleList(
            _conv(nn.Conv1d(c_in, c_out, k, s, groups=g, padding=p)) for c_in, c_out, k, s, g, p in specs
        )
        self.conv_post = _conv(nn.Conv1d(1024, 1, 3, 1, padding=1), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _feature_maps(self.convs, self.conv_post, x)


class MRD(nn.Module):
    """Multi-band multi-resolution discriminator: the complex STFT (real and imaginary parts as channels) split
    into frequency bands, each through its own 2-D convolutions, then one convolution over all bands."""

    def __init__(self, window_length: int, hop_factor: float = 0.25, bands: Sequence[tuple[float, float]] = BANDS):
        super().__init__()
        self.window_length, self.hop_length = window_length, int(window_length * hop_factor)
        n_bins = window_length // 2 + 1
        self.bands = [(int(low * n_bins), int(high * n_bins)) for low, high in bands]
        ch = 32

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                _conv(nn.Conv2d(2, ch, (3, 9), (1, 1), padding=(1, 4))),
                _conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                _conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                _conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                _conv(nn.Conv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1))),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = _conv(nn.Conv2d(ch, 1, (3, 3), (1, 1), padding=(1, 1)), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = torch.view_as_real(stft(x, self.window_length, self.hop_length, match_stride=True))
        spec = spec[:, 0].permute(0, 3, 2, 1)  # (B, 1, F, T, 2) -> (B, 2, T, F)
        fmap, outputs = [], []
        for (low, high), stack in zip(self.bands, self.band_convs):
            band = spec[..., low:high]
            for layer in stack:
                band = layer(band)
                fmap.append(band)
            outputs.append(band)
        fmap.append(self.conv_post(torch.cat(outputs, dim=-1)))
        return fmap


class Discriminator(nn.Module):
    """MPDs, MSDs and MRDs on the DC-free, peak-normalised waveform. Defaults: conf/base.yml."""

    def __init__(self, rates: Sequence[int] = (), periods: Sequence[int] = (2, 3, 5, 7, 11),
                 fft_sizes: Sequence[int] = (2048, 1024, 512), sample_rate: int = 44100,
                 bands: Sequence[tuple[float, float]] = BANDS):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [MPD(p) for p in periods] + [MSD(r, sample_rate) for r in rates]
            + [MRD(f, bands=bands) for f in fft_sizes]
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Feature maps of each discriminator for audio (batch, 1, time); each list ends with the logits."""
        x = x - x.mean(dim=-1, keepdim=True)
        x = 0.8 * x / (x.abs().max(dim=-1, keepdim=True)[0] + 1e-9)
        return [d(x) for d in self.discriminators]


# ----------------------------------------------------------------------------------------------------------------
# Adversarial losses and the generator's objective
def discriminator_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least-squares GAN loss of the discriminator: fakes towards 0, reals towards 1 (compute d_fake on
    `fake.detach()`)."""
    return sum(torch.mean(fake[-1] ** 2) + torch.mean((1 - real[-1]) ** 2) for fake, real in zip(d_fake, d_real))


def generator_losses(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]]):
    """(adversarial, feature matching) losses of the generator: fakes towards 1, and the L1 distance of every
    feature map but the logits to the real one's."""
    gen = sum(torch.mean((1 - fake[-1]) ** 2) for fake in d_fake)
    feat = sum(F.l1_loss(f, r.detach()) for fake, real in zip(d_fake, d_real) for f, r in zip(fake[:-1], real[:-1]))
    return gen, feat


def objective(**losses: torch.Tensor) -> torch.Tensor:
    """The generator's loss: each named loss (mel, gen, feat, commitment, codebook) times its `LAMBDAS` weight."""
    unknown = set(losses) - set(LAMBDAS)
    if unknown:
        raise ValueError(f"No weight for {sorted(unknown)}; the losses are {sorted(LAMBDAS)}.")
    return sum(LAMBDAS[name] * value for name, value in losses.items())
