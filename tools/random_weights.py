"""Random weights and test audio of a realistic scale, for tests, benchmarks and figures (no released weights can
be downloaded here).

A freshly initialised DAC has unit Snake frequencies, zero biases and equal weight-norm gains, which would leave parts
of a checkpoint mapping untested, and a narrow one (a test's tiny config) returns near-silence against which every
tolerance passes. `perturb` is the one recipe for both: it varies all three, and `gain` scales narrow models'
convolutions up to activations and audio of a realistic scale.
"""

import math

import torch

from ..configuration_dac import PRESETS
from ..modeling_dac import DacModel

TINY_GAIN = 6.5  # the tests' tiny models (encoder_dim 4, decoder_dim 32): latents ~0.5, audio ~0.3 RMS, varied codes


@torch.no_grad()
def perturb(model: torch.nn.Module, gain: float = 1.0) -> torch.nn.Module:
    """Snake alphas in [0.3, 3], biases ~ N(0, 0.02), and each output channel's gain scaled by [0.5, 1.5] * `gain`:
    the `weight_g` of weight-normed convolutions (the reference's), or the plain weights of folded ones (ours).
    Returns the model in eval mode."""
    names = {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.uniform_(0.3, 3.0)
        elif name.endswith("bias"):
            p.normal_(0, 0.02)
        elif name.endswith("weight_g"):
            p.mul_(torch.empty_like(p).uniform_(0.5, 1.5) * gain)
        elif name.endswith(".weight") and p.dim() == 3 and name[: -len("weight")] + "weight_g" not in names:
            p.mul_(torch.empty(p.shape[0], 1, 1).uniform_(0.5, 1.5) * gain)
    return model.eval()


def random_model(config, seed: int = 0, gain: float = 1.0):
    """Our `DacModel` of `config` with seeded, perturbed random weights."""
    torch.manual_seed(seed)
    return perturb(DacModel(config), gain)


def reference_model(preset: str, seed: int = 0):
    """The reference package's `dac.model.DAC` of a released preset with seeded, perturbed random weights."""
    import dac  # the reference package: a test dependency

    torch.manual_seed(seed)
    kwargs = dict(PRESETS[preset])
    kwargs["sample_rate"] = kwargs.pop("sampling_rate")
    return perturb(dac.model.DAC(**kwargs))


def sample_audio(sample_rate: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """A chirp with an envelope, a chord and some noise: (1, 1, samples), not a multiple of any hop."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate) + 123, dtype=torch.float64) / sample_rate
    chirp = torch.sin(2 * math.pi * (200 * t + 900 * t**2)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 1.7 * t))
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (0.4 * chirp + 0.3 * chord + 0.05 * noise).float()[None, None]
