"""scripts/build_hub_repos.py (`dac_codec.tools.hub`): the folder of a Hub repo holds exactly what it needs, loads
offline elsewhere in a fresh interpreter, and carries a card for its own variant; uploading fails cleanly without a
token or network.

The checkpoint is a full-size 16khz model with random, perturbed weights saved as the released files are (the card's
numbers and the figures must match the real architecture), so this needs the reference package like
test_reference.py.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from dac_codec import DacConfig
from dac_codec.tools import hub as build_hub_repos
from dac_codec.tools.convert import MODEL_FILES
from dac_codec.tools.random_weights import reference_model, sample_audio

pytest.importorskip("dac", reason="the reference package is a test dependency: scripts/setup_env.sh --test")

SCRIPT = str(build_hub_repos.ROOT / "scripts" / "build_hub_repos.py")
PREFIX = "test-org/dac-"


def run_script(*args, env=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], check=False, env=env,
                          capture_output=True, text=True)


def offline_env(tmp_path, **extra):
    """No network, no cached token: a fresh HF_HOME, and HF_TOKEN unset unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The reference 16khz model, saved under its release name, and the folder the script builds from it, with the
    ONNX graphs (--onnx)."""
    tmp = tmp_path_factory.mktemp("hub")
    (tmp / "weights").mkdir()
    reference = reference_model("16khz")
    reference.save(str(tmp / "weights" / build_hub_repos.RELEASE_FILES["16khz"]), package=False)
    result = run_script("--checkpoint-dir", tmp / "weights", "--variants", "16khz", "--output-dir", tmp / "out",
                        "--repo-prefix", PREFIX, "--onnx", env=offline_env(tmp))
    assert result.returncode == 0, result.stderr
    return reference, tmp / "out" / "16khz"


def test_folder_holds_exactly_the_repo_files(built):
    _, folder = built
    assert sorted(p.name for p in folder.parent.iterdir()) == ["16khz"]  # --variants
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    figures = sorted(f".fig/{p.name}" for p in (build_hub_repos.ROOT / ".fig").glob("*.png"))
    assert ".fig/chunking_error.png" in figures
    assert files == sorted(["config.json", "model.safetensors", "README.md", "requirements.txt",
                            *MODEL_FILES, *figures, *build_hub_repos.ONNX_FILES])
    for name in (*MODEL_FILES, "requirements.txt"):
        assert (folder / name).read_bytes() == (build_hub_repos.ROOT / name).read_bytes()
    assert '"auto_map"' in (folder / "config.json").read_text()


def test_copy_loads_offline_in_fresh_process(built, tmp_path):
    reference, folder = built
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "model", ignore=shutil.ignore_patterns("onnx"))
    audio = sample_audio(16000, 0.25)
    torch.save(audio, tmp_path / "audio.pt")
    code = (
        "import torch; from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(copy)!r}, trust_remote_code=True)\n"
        f"zq, s = m.encode(torch.load({str(tmp_path / 'audio.pt')!r})[0, 0], sample_rate=16000)\n"
        f"torch.save((s, m.decode(s=s)), {str(tmp_path / 'result.pt')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env=offline_env(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    codes, waveform = torch.load(tmp_path / "result.pt")
    with torch.no_grad():
        _, expected, *_ = reference.encode(reference.preprocess(audio, 16000))
    assert torch.equal(codes, expected)  # the release's weights, not a fresh initialisation
    assert waveform.shape == (1, 1, expected.shape[-1] * 320 - 8) and waveform.abs().max() > 0


def release_codes(built, tmp_path):
    """(the folder, a 0.5 s WAV, the release's codes of it)."""
    import soundfile

    reference, folder = built
    soundfile.write(tmp_path / "in.wav", sample_audio(16000, 0.5)[0, 0].numpy(), 16000, subtype="PCM_16")
    audio = torch.from_numpy(soundfile.read(tmp_path / "in.wav", dtype="float32")[0])[None, None]
    with torch.no_grad():
        _, expected, *_ = reference.encode(reference.preprocess(audio, 16000))
    return folder, tmp_path / "in.wav", audio, expected.numpy()


def test_onnx_graphs_give_the_release_codes(built, tmp_path):
    """The repo's onnx/ in ONNX Runtime gives the release's codes."""
    import json

    import onnxruntime

    folder, _, audio, expected = release_codes(built, tmp_path)
    session = onnxruntime.InferenceSession(str(folder / "onnx" / "encoder_model.onnx"))
    codes = session.run(None, {"input_values": audio.numpy()})[0]
    assert codes.shape == expected.shape
    assert (codes != expected).sum() <= max(1, 0.001 * codes.size)  # near-ties may flip between runtimes
    assert "streaming" in json.loads((folder / "config.json").read_text())


def test_transformers_js_reads_the_repo(built, tmp_path):
    """transformers.js' DacModel loads the repo (export/web/dac.mjs, which also reads the repo's config.json and
    its streaming section) and gives the release's codes."""
    import json

    import numpy as np

    if shutil.which("node") is None:
        pytest.skip("node is not installed: the transformers.js client cannot run")
    folder, wav, _, expected = release_codes(built, tmp_path)
    web = build_hub_repos.ROOT / "export" / "web"
    subprocess.run(["node", str(web / "dac.mjs"), str(folder), str(wav), str(tmp_path / "out")],
                   check=True, timeout=300, capture_output=True)
    result = json.loads((tmp_path / "out.json").read_text())
    ours = np.array(result["codes"]).reshape(result["dims"])
    assert (ours != expected).sum() <= max(1, 0.001 * ours.size)
    assert np.array_equal(np.array(result["stream_codes"]), ours[0])


def test_card_is_the_variants_own(built):
    from huggingface_hub import ModelCard

    _, folder = built
    text = (folder / "README.md").read_text()
    card = ModelCard(text)
    readme = ModelCard((build_hub_repos.ROOT / "README.md").read_text())
    assert card.data.license == "mit"
    assert card.data.library_name == readme.data.library_name and card.data.pipeline_tag == readme.data.pipeline_tag
    assert card.data.tags == [*readme.data.tags, "16khz"]
    assert f'AutoModel.from_pretrained("{PREFIX}16khz", trust_remote_code=True)' in text
    assert "path/or/hub-id" not in text and "scripts/" not in text
    header = next(line for line in card.text.splitlines() if line.startswith(f"**`{PREFIX}16khz`"))
    for number in ("16 kHz", "hop 320 samples", "frame rate of 50 Hz", "12 codebooks of 1024 entries", "6 kbps",
                   "weights_16khz_8kbps_0.0.5.pth"):
        assert number in header
    public = re.sub(r"<!-- repo-only -->.*?<!-- /repo-only -->", "", readme.text, flags=re.S)
    tables = [line for line in public.splitlines() if line.startswith("|")]
    assert tables and all(line in card.text.splitlines() for line in tables)  # variants, runtime, chunking tables
    for path in build_hub_repos.image_paths(card.text):
        assert (folder / path).is_file(), path


def test_card_rules():
    config = DacConfig.from_preset("44khz")
    readme = (build_hub_repos.ROOT / "README.md").read_text()
    card = build_hub_repos.render_card(readme, config, "44khz", "org/dac-44khz", "w")
    assert "44.1 kHz mono audio; hop 512 samples, so a frame rate of 86.13 Hz; 9 codebooks" in card
    assert "7.75 kbps" in card
    extra = "\n<!-- repo-only -->\nRun `scripts/codec.py`.\n<!-- /repo-only -->\n"
    assert "codec.py" not in build_hub_repos.render_card(readme + extra, config, "44khz", "o/r", "w")
    with pytest.raises(ValueError, match="does not hold"):
        build_hub_repos.render_card(readme + "\nSee scripts/codec.py.\n", config, "44khz", "o/r", "w")
    with pytest.raises(ValueError, match="not one of this repo's .fig"):
        build_hub_repos.render_card(readme + "\n![x](.fig/missing.png)\n", config, "44khz", "o/r", "w")
    with pytest.raises(ValueError, match="path/or/hub-id"):
        build_hub_repos.render_card(readme.replace("path/or/hub-id", "x"), config, "44khz", "o/r", "w")


def test_push_without_token_fails_cleanly(tmp_path):
    result = run_script("--source", "16khz=nowhere.pth", "--variants", "16khz", "--output-dir", tmp_path / "out",
                        "--push-to-hub", env=offline_env(tmp_path))
    assert result.returncode != 0
    assert "token" in result.stderr and "hf auth login" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

    result = run_script("--source", "16khz=nowhere.pth", "--variants", "16khz", "--output-dir", tmp_path / "out",
                        "--push-to-hub", env=offline_env(tmp_path, HF_TOKEN="hf_not_a_real_token"))
    assert result.returncode != 0
    assert "offline" in result.stderr and "Traceback" not in result.stderr


def test_bad_sources_fail_cleanly(tmp_path):
    result = run_script("--checkpoint-dir", tmp_path, "--output-dir", tmp_path / "out")
    assert result.returncode != 0 and "weights_24khz_8kbps_0.0.4.pth" in result.stderr
    assert "Traceback" not in result.stderr

    from transformers import DacConfig as HFDacConfig
    from transformers import DacModel as HFDacModel

    small = HFDacModel(HFDacConfig(n_codebooks=4, sampling_rate=16000, encoder_hidden_size=16,
                                   decoder_hidden_size=128, hidden_size=64))
    small.save_pretrained(tmp_path / "hf")
    result = run_script("--source", f"16khz={tmp_path / 'hf'}", "--variants", "16khz", "--output-dir",
                        tmp_path / "out", env=offline_env(tmp_path))
    assert result.returncode != 0 and "is not that model" in result.stderr and "n_codebooks 4" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "16khz").exists()
