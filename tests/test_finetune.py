"""`dac-codec finetune` on a tiny model and a folder of short files, on CPU: the loss goes down on a fixed batch, an
interrupted run resumes to the weights of an uninterrupted one, unreadable files are reported and left out, and the
saved folder loads through the remote-code path and encodes."""

import os

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from dac_codec.tools import cli
from dac_codec.tools.convert import write_model_folder
from dac_codec.training.finetune import Trainer

from conftest import tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model folder, and a data folder: two readable files at other rates and channel counts, one corrupt."""
    root = tmp_path_factory.mktemp("finetune")
    write_model_folder(tiny_model(), root / "model")
    rng = np.random.default_rng(0)
    (root / "data" / "sub").mkdir(parents=True)
    t = np.arange(22050) / 22050
    soundfile.write(root / "data" / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 22050)
    soundfile.write(root / "data" / "sub" / "noise.flac", 0.1 * rng.standard_normal((8000, 2)), 8000)
    (root / "data" / "broken.wav").write_bytes(rng.bytes(1000))
    return root


def run(files, output, steps, *extra):
    assert cli.main(["finetune", "--model", str(files / "model"), "--data", str(files / "data"), "--output",
                     str(output), "--steps", str(steps), "--batch-size", "2", "--duration", "0.2", "--save-every",
                     "1", *extra]) == 0


def test_loss_goes_down_on_a_fixed_batch(generator):
    trainer = Trainer(tiny_model(), lr=1e-3)
    batch = 0.3 * torch.randn(2, 1, 3000, generator=generator)
    losses = [trainer.train_step(batch) for _ in range(6)]
    assert losses[-1]["loss"] < 0.7 * losses[0]["loss"]
    assert losses[-1]["mel"] < losses[0]["mel"]


def test_interrupted_run_resumes_to_the_same_weights(files, tmp_path, capsys):
    run(files, tmp_path / "whole", 2)
    assert "broken.wav" in capsys.readouterr().err  # reported, and the run went on without it
    run(files, tmp_path / "parts", 1)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["checkpoint.pt", "model"]  # nothing half written
    run(files, tmp_path / "parts", 2)
    assert "resumed from" in capsys.readouterr().err
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "model" / "model.safetensors")
    original = load_file(files / "model" / "model.safetensors")
    assert whole.keys() == parts.keys() == original.keys()  # weight norm folded: the model's own keys
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert any(not torch.equal(whole[k], original[k]) for k in whole)  # it trained

    from transformers import AutoModel

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = AutoModel.from_pretrained(tmp_path / "whole" / "model", trust_remote_code=True)
    finally:
        os.environ.pop("HF_HUB_OFFLINE")
    assert not model.training
    assert model.encode(torch.zeros(16000), sample_rate=16000).codes.shape == (1, 4, 50)


def test_a_checkpoint_of_another_model_is_refused(files, tmp_path, capsys):
    run(files, tmp_path, 2)
    other = tmp_path / "other"
    write_model_folder(tiny_model("44khz"), other)
    capsys.readouterr()
    assert cli.main(["finetune", "--model", str(other), "--data", str(files / "data"), "--output", str(tmp_path),
                     "--steps", "3", "--batch-size", "1", "--duration", "0.2"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: {tmp_path / 'checkpoint.pt'} was made with another "
                                                         "model; give another --output.")


def test_a_folder_without_audio_is_a_clear_error(files, tmp_path, capsys):
    assert cli.main(["finetune", "--model", str(files / "model"), "--data", str(tmp_path), "--output",
                     str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith("error: No readable audio file")


def test_validation_logs_keeps_the_best_and_writes_the_report(files, tmp_path, capsys):
    """Two steps, validated after each: log.csv has a row a validation with the losses and the scores, TensorBoard
    holds the scalars and the reconstructions, OUTPUT/best is the model of the lowest validation mel distance, and
    OUTPUT/evaluation holds the report of the fine-tuned model against the starting one on the held-out files."""
    import csv
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val = tmp_path / "val"
    val.mkdir()
    soundfile.write(val / "held.wav", 0.3 * np.sin(2 * np.pi * 330 * np.arange(24000) / 16000), 16000)
    run(files, tmp_path / "run", 2, "--val", str(val), "--val-every", "1", "--val-count", "2", "--val-duration", "1")
    with open(tmp_path / "run" / "log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert all(float(r["val/mel-44k"]) > 0 and float(r["train/mel"]) > 0 for r in rows)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"audio": 0}).Reload()
    assert [e.step for e in events.Scalars("val/mel-44k")] == [1, 2]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert {"val/reconstruction-0", "val/input-0"} <= set(events.Tags()["audio"])

    best_step = min(rows, key=lambda r: float(r["val/mel-44k"]))["step"]
    best = load_file(tmp_path / "run" / "best" / "model.safetensors")
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    same = all(torch.equal(best[k], final[k]) for k in final)
    assert same == (best_step == "2")  # the best is the last step's model only if the last step scored best

    summary = json.loads((tmp_path / "run" / "evaluation" / "summary.json").read_text())
    assert [g["model"] for g in summary["groups"]] == [str(files / "model"), str(tmp_path / "run" / "model")]
    assert summary["paired"] and (tmp_path / "run" / "evaluation" / "report.html").is_file()
