"""Shared fixtures: tiny seeded models of the released geometries, one torch thread for the test process, and a
seeded generator. The reference package's model comes from `random_weights.reference_model`, with the same
perturbation as ours. Everything is imported from the installed package `dac_codec` (the editable install of this
checkout that scripts/setup_env.sh makes), as users import it."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# transformers copies remote code into one modules folder per user; the test workers (pytest-xdist) would write it at
# once, so each process of the suite has its own, set before transformers is imported.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="dac-codec-hf-modules-")
# The test workers and the commands they start share the cores: one torch thread each, or their thread pools spin
# against each other and every process slows down many times over. A test that wants torch's default removes it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import soundfile
import torch

from dac_codec import DacConfig, DacModel
from dac_codec.tools.convert import write_model_folder
from dac_codec.tools.random_weights import TINY_GAIN, random_model

atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
ALSA = Path("/usr/share/sounds/alsa/Front_Center.wav")  # a human voice, 48 kHz mono, where alsa-utils is installed

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


def assert_codes_match(ours: torch.Tensor, expected: torch.Tensor, context=None) -> None:
    """Codes of the same sums taken in another order (streams and tiles against one pass): equal, but for
    near-ties of the nearest-code search that float rounding may flip on some CPUs (seen on one of the machines
    here, never on another): at most one code in a thousand, one in a short clip."""
    assert ours.shape == expected.shape, context
    differing = int((ours != expected).sum())
    assert differing <= max(1, expected.numel() // 1000), (context, differing, expected.numel())


def stream_steps(step, spec: dict, x, rng, max_piece: int):
    """Feeds (B, C, t) numpy x to a `StepStream` of the step function `step` (a step graph's, in torch or ONNX
    Runtime) in random pieces of 0 to `max_piece` rows; returns the concatenated outputs."""
    import numpy as np

    from dac_codec.export.onnx import StepStream

    stream, outputs, start = StepStream(step, spec, x.shape[0]), [], 0
    while start < x.shape[-1]:
        n = rng.randrange(max_piece + 1)
        outputs.append(stream.feed(x[..., start : start + n]))
        start += n
    return np.concatenate([*outputs, stream.finish()], axis=-1)


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


def tone(seconds, rate, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.02 * rng.standard_normal(t.shape)
                  for c in range(channels)], axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """A model folder and an audio tree: good files of several formats, rates and channel counts, and bad ones."""
    root = tmp_path_factory.mktemp("tree")
    write_model_folder(tiny_model(), root / "model")
    data = root / "data"
    (data / "music" / "live").mkdir(parents=True)
    soundfile.write(data / "tone.wav", tone(0.7, 16000, 1, 0), 16000)
    soundfile.write(data / "music" / "stereo.flac", tone(1.1, 22050, 2, 1), 22050)
    soundfile.write(data / "music" / "live" / "take.ogg", tone(0.5, 8000, 1, 2), 8000)
    data.joinpath("speech.flac").write_bytes((ROOT / "samples" / "speech.flac").read_bytes())  # 22.05 kHz speech
    if ALSA.is_file():
        data.joinpath("voice.wav").write_bytes(ALSA.read_bytes())
    soundfile.write(data / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    (data / "corrupt.flac").write_bytes(np.random.default_rng(3).bytes(3000))
    (data / "notes.txt").write_text("not audio, not an audio suffix: left alone")
    return root


@pytest.fixture(scope="session")
def other_weights(tree):
    """A model folder of the tree's model's geometry with other weights: the wrong model that must be refused."""
    return write_model_folder(tiny_model(seed=5), tree / "other-weights")


def one_line(captured: str) -> str:
    """The one line a refused or stopped command printed on stderr, asserting that it printed nothing else but
    progress bars (tqdm's lines, drawn with carriage returns)."""
    lines = [line for line in captured.strip().split("\n") if "\r" not in line]
    assert len(lines) == 1 and lines[0].startswith(("error:", "interrupted:")), captured
    return lines[0]
