"""Shared fixtures: tiny seeded models of the released geometries, one torch thread for the test process, and a
seeded generator. The reference package's model comes from `random_weights.reference_model`, with the same
perturbation as ours."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import dac_package  # noqa: E402
from random_weights import TINY_GAIN, random_model  # noqa: E402

modeling = dac_package.load()
DacConfig, DacModel = modeling.DacConfig, modeling.DacModel

# The strides of the released models (odd ones at 16 and 24 kHz), at a few thousand parameters.
GEOMETRIES = {"16khz": ([2, 4, 5, 8], 16000), "44khz": ([2, 4, 8, 8], 44100)}
TINY = dict(encoder_dim=4, decoder_dim=32, n_codebooks=4, codebook_size=16, codebook_dim=4)


def tiny_config(geometry: str = "16khz", **overrides) -> DacConfig:
    rates, sampling_rate = GEOMETRIES[geometry]
    return DacConfig(**{**TINY, "encoder_rates": rates, "decoder_rates": rates[::-1],
                        "sampling_rate": sampling_rate, **overrides})


def tiny_model(geometry: str = "16khz", seed: int = 0, **overrides) -> DacModel:
    """A tiny model with perturbed weights of a realistic scale (latents ~0.5, audio ~0.3 RMS, varied codes)."""
    return random_model(tiny_config(geometry, **overrides), seed, gain=TINY_GAIN)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine is spared the thread pool's spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model16() -> DacModel:
    return tiny_model("16khz")


@pytest.fixture(scope="session")
def model44() -> DacModel:
    return tiny_model("44khz", seed=1)


@pytest.fixture(params=list(GEOMETRIES))
def model(request, model16, model44) -> DacModel:
    """Each tiny model in turn. Tests must not change it: it is shared by the session."""
    return model16 if request.param == "16khz" else model44


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
