"""The README's main job, `scripts/codec.py`, on folders this package makes and on a transformers DacModel folder
(the format of descript/dac_44khz), run as a user runs it: a fresh process, offline."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

from dac_codec import DacModel
from dac_codec.tools.convert import write_model_folder

from conftest import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "codec.py"


def run(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_codec_script_on_our_folder_with_a_file(tmp_path):
    folder = write_model_folder(tiny_model(), tmp_path / "model")
    t = np.arange(22050) / 22050  # another rate and two channels: resampled and mixed down
    soundfile.write(tmp_path / "in.wav", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], 1) * 0.3,
                    22050)
    out = run(["--model", str(folder), "--input", "in.wav", "--output-dir", "out"], tmp_path)
    assert "codes: (1, 4, 50)" in out
    decoded, rate = soundfile.read(tmp_path / "out" / "in.decoded.wav")
    assert rate == 16000 and decoded.shape == (16000 - 8,)
    codes = DacModel.load_tensor(tmp_path / "out" / "in.codes.safetensors")
    assert codes.shape == (1, 4, 50) and codes.dtype == torch.int64


def test_codec_script_on_a_transformers_folder_with_the_test_signal(tmp_path):
    from transformers import DacConfig as HFDacConfig
    from transformers import DacModel as HFDacModel

    torch.manual_seed(0)
    HFDacModel(HFDacConfig(n_codebooks=4, sampling_rate=16000, downsampling_ratios=[2, 4, 5, 8],
                           upsampling_ratios=[8, 5, 4, 2], encoder_hidden_size=4, decoder_hidden_size=32,
                           hidden_size=64)).save_pretrained(tmp_path / "hf")
    out = run(["--model", str(tmp_path / "hf"), "--output-dir", "out"], tmp_path)
    assert "codes: (1, 4, 250)" in out and "reconstruction SNR" in out
    assert (tmp_path / "out" / "test_signal.decoded.wav").is_file()
