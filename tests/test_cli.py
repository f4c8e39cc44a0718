"""The `dac-codec` command line on a folder tree of real audio in several formats, rates and channel counts, with
corrupt and empty files among them; `.dac` files both ways with the original package; the installed package."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from dac_codec import DacModel
from dac_codec.tools import cli
from dac_codec.tools.convert import convert, write_model_folder
from dac_codec.tools.dac_file import DacFile

from conftest import ROOT, tiny_model, tone


def run(*args):
    return cli.main([str(a) for a in args])


def test_encode_and_decode_a_folder_tree(tree, tmp_path, capsys):
    model = tree / "model"
    assert run("encode", tree / "data", "--output", tmp_path / "codes", "--model", model) == 1  # two bad files
    err = capsys.readouterr().err
    assert "empty.wav" in err and "corrupt.flac" in err and "2 failed" in err
    good = sorted(p.relative_to(tree / "data") for p in (tree / "data").rglob("*")
                  if p.suffix in (".wav", ".flac", ".ogg") and p.name not in ("empty.wav", "corrupt.flac"))
    dac_files = sorted(p.relative_to(tmp_path / "codes") for p in (tmp_path / "codes").rglob("*.dac"))
    assert dac_files == [p.with_suffix(".dac") for p in good]  # the tree mirrored, nothing else written
    assert not list((tmp_path / "codes").rglob("*.partial"))

    assert run("encode", tree / "data", "--output", tmp_path / "codes", "--model", model) == 1
    assert f"0 done, {len(good)} skipped" in capsys.readouterr().err  # existing outputs are kept

    assert run("decode", tmp_path / "codes", "--output", tmp_path / "audio") == 0  # the model the files name
    for relative in good:
        original = soundfile.info(tree / "data" / relative)
        decoded = soundfile.info(tmp_path / "audio" / relative.with_suffix(".wav"))
        assert (decoded.samplerate, decoded.channels, decoded.frames) == (
            original.samplerate, original.channels, original.frames), relative

    other = tmp_path / "model44"
    write_model_folder(tiny_model("44khz"), other)
    assert run("decode", tmp_path / "codes" / "tone.dac", "--output", tmp_path / "x", "--model", other) == 1
    assert "was made by the model" in capsys.readouterr().err

    assert run("info", tmp_path / "codes" / "music" / "stereo.dac") == 0
    out = capsys.readouterr().out
    assert "channels: 2" in out and "sample rate: 22050 Hz" in out and "codebooks: 4" in out and "kbps" in out


def test_codes_are_those_of_encode_on_each_normalised_channel(tree, tmp_path):
    """With --no-normalize a mono file at the model's rate gives exactly `model.encode(file)`'s codes."""
    run("encode", tree / "data" / "tone.wav", "--output", tmp_path, "--model", tree / "model", "--no-normalize")
    model = DacModel.from_pretrained(tree / "model")
    assert torch.equal(DacFile.load(tmp_path / "tone.dac").codes, model.encode(tree / "data" / "tone.wav").codes)


def test_missing_model_is_one_line(tree, tmp_path, capsys):
    env_offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert run("encode", tree / "data" / "tone.wav", "--output", tmp_path, "--model", "no-org/no-model") == 1
    finally:
        os.environ.pop("HF_HUB_OFFLINE") if env_offline is None else os.environ.update(HF_HUB_OFFLINE=env_offline)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Hugging Face Hub" in err[0] and "local folder" in err[0]


# ----------------------------------------------------------------------------------------------------------------
# With the original package
@pytest.fixture(scope="module", params=["16khz", "44khz"])
def reference_pair(tmp_path_factory, request):
    """The original's tiny model of a released geometry with perturbed weights, the same model as our folder, and
    its rate."""
    dac = pytest.importorskip("dac", reason="the reference package is a test dependency")
    from dac_codec.tools.random_weights import perturb

    from conftest import GEOMETRIES

    rates, rate = GEOMETRIES[request.param]
    root = tmp_path_factory.mktemp("original")
    torch.manual_seed(0)
    reference = perturb(dac.model.DAC(encoder_dim=4, encoder_rates=rates, decoder_dim=32, decoder_rates=rates[::-1],
                                      n_codebooks=4, codebook_size=16, codebook_dim=4, sample_rate=rate), gain=1.2)
    reference.save(str(root / "weights.pth"), package=False)
    convert(str(root / "weights.pth"), str(root / "model"))
    return reference, root / "model", rate


def test_the_original_decompresses_our_files_as_we_decode_them(reference_pair, tmp_path):
    from dac.model.base import DACFile

    reference, model, rate = reference_pair
    # 1.31 s: the original's decompress fails where the 16 kHz decoder's last 8 samples fall short of the input
    soundfile.write(tmp_path / "in.wav", tone(1.31, rate, 2, 5), rate)
    assert run("encode", tmp_path / "in.wav", "--output", tmp_path, "--model", model) == 0
    assert run("decode", tmp_path / "in.dac", "--output", tmp_path / "ours") == 0
    ours, _ = soundfile.read(tmp_path / "ours" / "in.wav", dtype="float32", always_2d=True)
    theirs = reference.decompress(DACFile.load(tmp_path / "in.dac")).audio_data[0].numpy().T
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-3


def decodes_as_the_original(reference, model, compressed, tmp_path):
    """`dac-codec decode` of the original's file gives its `decompress` within 1e-3 of full scale."""
    path = compressed.save(tmp_path / "theirs")
    expected = reference.decompress(compressed).audio_data[0].numpy().T
    assert run("decode", path, "--output", tmp_path / "ours", "--model", model) == 0
    ours, _ = soundfile.read(tmp_path / "ours" / "theirs.wav", dtype="float32", always_2d=True)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-3


def test_we_decode_the_originals_padded_files_as_it_does(reference_pair, tmp_path):
    from audiotools import AudioSignal

    reference, model, rate = reference_pair
    audio = torch.from_numpy(tone(1.31, rate, 2, 6).T)[None]  # (1, channels, time)
    compressed = reference.compress(AudioSignal(audio, rate), win_duration=5.0)  # one padded pass
    decodes_as_the_original(reference, model, compressed, tmp_path)

    # and our encoding of the same audio gives the original's codes
    soundfile.write(tmp_path / "in.wav", audio[0].numpy().T, rate, subtype="FLOAT")
    run("encode", tmp_path / "in.wav", "--output", tmp_path / "codes", "--model", model)
    ours_codes = DacFile.load(tmp_path / "codes" / "in.dac").codes
    assert (ours_codes == compressed.codes).float().mean() >= 0.99  # near-ties may flip with the gain's last bits


def test_we_decode_the_originals_windowed_files_as_it_does(reference_pair, tmp_path):
    """Audio longer than the original's window is compressed in unpadded windows (padding=False)."""
    from audiotools import AudioSignal

    reference, model, rate = reference_pair
    compressed = reference.compress(AudioSignal(torch.from_numpy(tone(2.5, rate, 2, 7).T)[None], rate),
                                    win_duration=1.0)
    assert not compressed.padding and compressed.codes.shape[-1] > compressed.chunk_length  # several windows
    decodes_as_the_original(reference, model, compressed, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The installed package
def declared_closure(requirements: list[str]) -> dict:
    """The installed distributions that `requirements` (Requires-Dist lines) pull in, transitively, without extras."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, todo = {}, list(requirements)
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's, or another platform's
        name = canonicalize_name(requirement.name)
        if name not in found:
            found[name] = distribution(requirement.name)
            todo += found[name].requires or []
    return found


def test_pip_install_alone_gives_a_working_command(tree, tmp_path):
    """`pip install .` into a fresh venv that sees exactly the distributions the package declares (and theirs),
    linked from this environment so nothing is downloaded: encode, decode, info and tokenize work, and `--help` and
    `info` import neither torch nor transformers."""
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)  # pip and setuptools come from this environment
    python = target / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    ours = next(p for p in map(Path, sys.path) if (p / "torch").is_dir() and p.name == "site-packages")
    tools = tmp_path / "tools"  # pip and setuptools, to install with, and nothing else
    tools.mkdir()
    for name in ("pip", "setuptools"):
        for entry in {Path(f).parts[0] for f in declared_closure([name])[name].files if not str(f).startswith("..")}:
            (tools / entry).symlink_to(ours / entry)
    (site / "tools.pth").write_text(f"{tools}\n")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                              str(ROOT)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    (site / "tools.pth").unlink()
    declared = subprocess.run([python, "-c", "import importlib.metadata as m; print(chr(10).join(m.requires("
                               "'dac-codec')))"], capture_output=True, text=True, check=True).stdout.splitlines()
    for dist in declared_closure(declared).values():
        for entry in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / entry).exists():
                (site / entry).symlink_to(ours / entry)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    assert subprocess.run([python, "-c", "import ray"], env=env, capture_output=True).returncode != 0  # an extra

    command = target / "bin" / "dac-codec"
    for args in (["encode", tree / "data" / "tone.wav", "--output", tmp_path / "c", "--model", tree / "model"],
                 ["decode", tmp_path / "c", "--output", tmp_path / "a"],
                 ["info", tmp_path / "c" / "tone.dac"],
                 ["tokenize", tree / "data" / "tone.wav", "--output", tmp_path / "t", "--model", tree / "model"]):
        done = subprocess.run([command, *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    assert soundfile.info(tmp_path / "a" / "tone.wav").frames == soundfile.info(tree / "data" / "tone.wav").frames
    light = ("import sys; from dac_codec.tools import cli\n"
             "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    for args in (["--help"], ["encode", "--help"], ["info", str(tmp_path / "c" / "tone.dac")]):
        done = subprocess.run([python, "-c", light, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr


def test_compress_and_decompress_are_the_commands_in_python(tree, other_weights, tmp_path):
    """The library API the command line stands on: `compress` gives the file `encode` writes, `decompress` the
    audio `decode` writes (in memory, or to a file)."""
    from dac_codec import compress, decompress, load_model

    source = tree / "data" / "music" / "stereo.flac"
    assert cli.main(["encode", str(source), "--output", str(tmp_path / "cli"), "--model", str(tree / "model")]) == 0
    assert cli.main(["decode", str(tmp_path / "cli" / "stereo.dac"), "--output", str(tmp_path / "cli")]) == 0
    model = load_model(tree / "model")
    dac = compress(model, source)
    written = DacFile.load(tmp_path / "cli" / "stereo.dac")
    assert torch.equal(dac.codes, written.codes) and dac.model == written.model
    assert (dac.original_length, dac.sample_rate, dac.channels) == (written.original_length, 22050, 2)
    audio = decompress(model, dac)
    expected, rate = soundfile.read(tmp_path / "cli" / "stereo.wav", dtype="float32", always_2d=True)
    assert audio.shape == expected.T.shape and np.array_equal(audio, expected.T)  # float WAV: the same bits
    path = decompress(model, tmp_path / "cli" / "stereo.dac", tmp_path / "py" / "stereo.wav")
    assert np.array_equal(soundfile.read(path, dtype="float32", always_2d=True)[0], expected)
    with pytest.raises(ValueError, match="another set of weights"):
        decompress(load_model(other_weights), dac)
