"""The tools under real mistakes, a table per class: no two inputs share an output; the right model or a refusal;
files from elsewhere are data; resumes that can be trusted; a user error is one line. (Processes that die with
their parent, the Ray engine and the installed package have their own files: test_processes.py, test_corpus.py,
test_cli.py.) Each case asserts the exact behaviour: the status, the one line and what it names, and the outputs that
exist or must not."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from dac_codec import DacModel
from dac_codec.tools import cli, corpus, files, loading
from dac_codec.tools.convert import convert
from dac_codec.tools.dac_file import DacFile

from conftest import one_line, tone


def run(capsys, *args):
    """(status, stderr) of `dac-codec ARGS`."""
    capsys.readouterr()
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    return status, capsys.readouterr().err


def wav(path: Path, seconds: float = 0.3, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, channels, seed), rate)
    return path


def written(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones too, relative."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# 1. No two inputs share an output
def _dac(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    DacFile(codes=torch.zeros(1, 4, 3, dtype=torch.long), chunk_length=3, original_length=900, input_db=torch.zeros(1),
            channels=1, sample_rate=16000, padding=True).save(path)
    return path


COLLISIONS = {  # name: (inputs to make, command and inputs, the two inputs and the output the line names)
    "same stem, other suffixes": (["d/a.wav", "d/a.flac"], ["encode", "d"], ("d/a.flac", "d/a.wav", "a.dac")),
    "same path under two folders": (["d1/x/a.wav", "d2/x/a.wav"], ["encode", "d1", "d2"],
                                    ("d1/x/a.wav", "d2/x/a.wav", "x/a.dac")),
    "names equal up to case": (["d/Take.wav", "d/take.wav"], ["encode", "d"], ("d/Take.wav", "d/take.wav", "Take.dac")),
    "two files, one name": (["d1/a.wav", "d2/a.wav"], ["encode", "d1/a.wav", "d2/a.wav"],
                            ("d1/a.wav", "d2/a.wav", "a.dac")),
    "decode: one name in two folders": (["c1/s.dac", "c2/s.dac"], ["decode", "c1", "c2"],
                                        ("c1/s.dac", "c2/s.dac", "s.wav")),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_two_inputs_for_one_output_are_refused_before_any_work(case, tree, tmp_path, capsys, monkeypatch):
    made, command, (first, second, output) = COLLISIONS[case]
    monkeypatch.chdir(tmp_path)
    for name in made:
        (_dac if name.endswith(".dac") else wav)(tmp_path / name)
    status, err = run(capsys, *command, "--output", "out", "--model", tree / "model")
    line = one_line(err)
    assert status == 1 and first in line and second in line and f"out/{output}" in line, line
    assert not (tmp_path / "out").exists()  # nothing was done


def test_two_folders_of_distinct_names_are_both_done(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "d1" / "a.wav"), wav(tmp_path / "d2" / "b.wav")
    assert run(capsys, "encode", "d1", "d2", "--output", "out", "--model", tree / "model")[0] == 0
    assert written(tmp_path / "out") == ["a.dac", "b.dac"]


def test_temporary_files_are_never_read_back_as_inputs(tree, tmp_path, capsys):
    """What an interrupted encode or decode leaves beside its outputs is hidden and has no audio suffix."""
    folder = tmp_path / "audio"
    wav(folder / "a.wav")
    for leftover in (files.partial_path(folder / "b.wav"), files.partial_path(folder / "c.wav.decoding")):
        leftover.write_bytes((folder / "a.wav").read_bytes())  # even a whole WAV under such a name is left alone
    assert [p.name for p, _ in files.find_inputs([str(folder)], files.AUDIO_SUFFIXES)] == ["a.wav"]
    assert run(capsys, "encode", folder, "--output", tmp_path / "out", "--model", tree / "model")[0] == 0
    assert written(tmp_path / "out") == ["a.dac"]


def _codes_table(ids, frames=3, n_samples=None):
    codes = [(np.arange(4 * frames).reshape(4, frames) % 16).tolist() for _ in ids]
    columns = {"id": ids, "codes": codes}
    if n_samples is not None:
        columns["n_samples"] = n_samples
    return pa.table(columns)


DETOKENIZE_IDS = {  # ids of the rows: (the error line names these, or None), the files written, rows failed
    "same stem, other suffixes": (["a.wav", "a.flac"], ("a.wav", "a.flac"), [], []),
    "equal up to case": (["Voice", "voice"], ("Voice", "voice"), [], []),
    "unsafe ids fail alone": (["ok", "../up", "a\0b", "", "/abs/x.flac"], None,
                              ["abs/x.wav", "ok.wav"], ["../up", "a\0b", ""]),
}


@pytest.mark.parametrize("case", list(DETOKENIZE_IDS))
def test_detokenize_plans_every_output_before_any_work(case, tree, tmp_path, capsys):
    ids, clash, outputs, failed = DETOKENIZE_IDS[case]
    pq.write_table(_codes_table(ids), tmp_path / "rows.parquet")
    status, err = run(capsys, "detokenize", tmp_path / "rows.parquet", "--output", tmp_path / "out", "--model",
                      tree / "model")
    if clash:
        line = one_line(err)
        assert status == 1 and all(repr(id) in line for id in clash), line
    else:
        assert status == 1 and all(f"failed: {id}: its id {id!r} names no file" in err for id in failed), err
    assert written(tmp_path / "out") == outputs


TOKENIZE_TWICE = {
    "a list naming one file twice": lambda root: _listing(root, "a.wav\n./a.wav\n"),
    "a list with one line twice": lambda root: _listing(root, "a.wav\nb.wav\na.wav\n"),
    "a dataset with one id twice": lambda root: _dataset(root, ["x", "y", "x"]),
}


def _listing(root: Path, text: str) -> Path:
    wav(root / "a.wav"), wav(root / "b.wav", seed=1)
    (root / "inputs.txt").write_text(text)
    return root / "inputs.txt"


def _dataset(root: Path, ids: list[str]) -> Path:
    datasets = pytest.importorskip("datasets")
    audio = [{"bytes": wav(root / f"{i}.wav", seed=i).read_bytes(), "path": None} for i in range(len(ids))]
    datasets.Dataset.from_dict({"audio": audio, "name": ids}).save_to_disk(root / "dataset")
    return root / "dataset"


@pytest.mark.parametrize("case", list(TOKENIZE_TWICE))
def test_tokenize_refuses_an_input_twice(case, tree, tmp_path, capsys):
    source = TOKENIZE_TWICE[case](tmp_path)
    extra = ["--id-column", "name"] if case.startswith("a dataset") else []
    status, err = run(capsys, "tokenize", source, "--output", tmp_path / "out", "--model", tree / "model", *extra)
    line = one_line(err)
    assert status == 1 and ("twice" in line or "more than once" in line), line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# 2. The right model or a refusal
def _broken_folder(tree: Path, root: Path, how: str) -> Path:
    from safetensors.torch import load_file, save_file

    folder = root / how
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tree / "model" / name).read_bytes())
    weights = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if how == "missing":
        del weights["decoder.conv2.weight"]
    elif how == "unexpected":
        weights["decoder.extra.weight"] = torch.zeros(3)
    elif how == "misshaped":
        weights["decoder.conv2.weight"] = torch.zeros(1, 2, 3)
    elif how == "config of another model":
        config["n_codebooks"] = 5
    elif how == "config of the wrong type":
        config["encoder_dim"] = "four"
    if how == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "not json":
        (folder / "config.json").write_text("{ not json")
    else:
        save_file(weights, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


BAD_MODELS = {  # how the folder is broken: what the one line says
    "missing": "1 missing (decoder.conv2.weight)",
    "unexpected": "1 unexpected (decoder.extra.weight)",
    "misshaped": "1 mis-shaped (decoder.conv2.weight)",
    "truncated": "damaged or truncated",
    "config of another model": "missing (quantizer.quantizers.4",
    "config of the wrong type": "encoder_dim",
    "not json": "not valid JSON",
}


@pytest.mark.parametrize("how", list(BAD_MODELS))
def test_a_model_that_does_not_fit_its_weights_is_one_line(how, tree, tmp_path, capsys):
    folder = _broken_folder(tree, tmp_path, how)
    status, err = run(capsys, "encode", tree / "data" / "tone.wav", "--output", tmp_path / "out", "--model", folder)
    line = one_line(err)
    assert status == 1 and str(folder) in line and BAD_MODELS[how] in line, line
    assert not (tmp_path / "out").exists()


BAD_CHECKPOINTS = {  # an original-format .pth: what is in it, what the one line says
    "truncated": (None, "is not a readable checkpoint"),
    "a list": ([1, 2, 3], "not an original DAC checkpoint"),
    "no kwargs": ({"state_dict": {}, "metadata": {}}, "not the model's constructor arguments"),
    "kwargs of the wrong type": ({"state_dict": {}, "metadata": {"kwargs": {
        "encoder_dim": "64", "encoder_rates": [2, 4, 5, 8], "decoder_dim": 32, "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 4, "codebook_size": 16, "codebook_dim": 4, "sample_rate": 16000}}}, "does not describe"),
    "no weights": ({"state_dict": {}, "metadata": {"kwargs": {
        "encoder_dim": 4, "encoder_rates": [2, 4, 5, 8], "decoder_dim": 32, "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 4, "codebook_size": 16, "codebook_dim": 4, "sample_rate": 16000}}}, "missing"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_original_checkpoint_is_one_line(case, tree, tmp_path, capsys):
    content, says = BAD_CHECKPOINTS[case]
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save({"state_dict": {"x": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        torch.save(content, path)
    status, err = run(capsys, "encode", tree / "data" / "tone.wav", "--output", tmp_path / "out", "--model", path)
    line = one_line(err)
    assert status == 1 and str(path) in line and says in line, line


def test_an_original_checkpoint_encodes_as_its_converted_folder(tmp_path, capsys):
    dac = pytest.importorskip("dac", reason="the reference package is a test dependency")
    from dac_codec.tools.random_weights import perturb

    torch.manual_seed(0)
    original = perturb(dac.model.DAC(encoder_dim=4, encoder_rates=[2, 4, 5, 8], decoder_dim=32,
                                     decoder_rates=[8, 5, 4, 2], n_codebooks=4, codebook_size=16, codebook_dim=4,
                                     sample_rate=16000), gain=1.2)
    original.save(str(tmp_path / "weights.pth"), package=False)
    wav(tmp_path / "a.wav", 0.7)
    assert run(capsys, "encode", tmp_path / "a.wav", "--output", tmp_path / "pth", "--model",
               tmp_path / "weights.pth")[0] == 0
    folder = convert(str(tmp_path / "weights.pth"), str(tmp_path / "folder"))
    assert run(capsys, "encode", tmp_path / "a.wav", "--output", tmp_path / "dir", "--model", folder)[0] == 0
    ours, theirs = (DacFile.load(tmp_path / d / "a.dac") for d in ("pth", "dir"))
    assert torch.equal(ours.codes, theirs.codes) and ours.model["weights_sha256"] == theirs.model["weights_sha256"]


def test_decoding_with_other_weights_is_refused_naming_both(tree, other_weights, tmp_path, capsys):
    assert run(capsys, "encode", tree / "data" / "tone.wav", "--output", tmp_path, "--model", tree / "model")[0] == 0
    status, err = run(capsys, "decode", tmp_path / "tone.dac", "--output", tmp_path / "out", "--model",
                      other_weights)
    assert status == 1 and "another set of weights" in err
    assert str((tree / "model").resolve()) in err and str(Path(other_weights).resolve()) in err
    assert written(tmp_path / "out") == []


def test_detokenize_with_other_weights_is_refused_naming_both(tree, other_weights, tmp_path, capsys):
    wav(tmp_path / "in" / "a.wav")
    assert run(capsys, "tokenize", tmp_path / "in", "--output", tmp_path / "t", "--model", tree / "model",
               "--readers", "0")[0] == 0
    status, err = run(capsys, "detokenize", tmp_path / "t", "--output", tmp_path / "out", "--model", other_weights)
    line = one_line(err)
    assert status == 1 and "another set of weights" in line and str(Path(other_weights).resolve()) in line, line
    assert not (tmp_path / "out").exists()


def test_a_relative_model_path_means_the_same_from_any_folder(tree, tmp_path, capsys, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "model").symlink_to(tree / "model")
    wav(tmp_path / "work" / "a.wav")
    monkeypatch.chdir(tmp_path / "work")
    assert run(capsys, "encode", "a.wav", "--output", "codes", "--model", "model")[0] == 0
    assert DacFile.load("codes/a.dac").model["name"] == str((tree / "model").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "model").mkdir()  # a folder of the same name here is not the model the file names
    assert run(capsys, "decode", tmp_path / "work" / "codes" / "a.dac", "--output", "audio")[0] == 0
    assert soundfile.info("audio/a.wav").frames == soundfile.info(tmp_path / "work" / "a.wav").frames


# ----------------------------------------------------------------------------------------------------------------
# 3. Files from elsewhere are data, never trusted
def _crafted_dac(path: Path, **changes) -> Path:
    """A valid one-channel .dac file of 4 codebooks and 5 frames (16 kHz), with fields replaced by `changes`."""
    artifacts = {"codes": np.ones((1, 4, 5), np.uint16),
                 "metadata": {"input_db": np.array([-20.0], np.float32), "original_length": 1500,
                              "sample_rate": 16000, "chunk_length": 5, "channels": 1, "padding": True,
                              "dac_version": "1.0.0"}}
    for key, value in changes.items():
        (artifacts if key in ("codes", "model") else artifacts["metadata"])[key] = value
    with open(path, "wb") as file:
        np.save(file, artifacts)
    return path


CRAFTED_DAC = {  # field: (value, what the line says)
    "original_length": (10**9, "metadata.original_length 1000000000 is more than its 5 frames"),
    "sample_rate": (2**53, "metadata.sample_rate"),
    "chunk_length": (0, "metadata.chunk_length must be a positive int, got 0"),
    "channels": (3, "metadata.channels must be a divisor of the codes' 1 rows"),
    "input_db": (np.array([np.nan], np.float32), "metadata.input_db must be 1 finite loudness"),
    "padding": ("yes", "metadata.padding must be True or False"),
    "codes": (np.full((1, 4, 5), -1, np.int64), "codes must be in [0, 65535]"),
    "model": ({"name": "x", "weights_sha256": "abc"}, "model.weights_sha256 must be 64 hexadecimal digits"),
}


@pytest.mark.parametrize("field", list(CRAFTED_DAC))
def test_every_field_of_a_dac_file_is_checked_before_use(field, tree, tmp_path, capsys):
    value, says = CRAFTED_DAC[field]
    path = _crafted_dac(tmp_path / "x.dac", **{field: value})
    status, err = run(capsys, "decode", path, "--output", tmp_path / "out", "--model", tree / "model")
    assert status == 1 and f"failed: {path}: " in err and says in err, err
    assert written(tmp_path / "out") == []  # not a byte written: no 4 GB WAV from a 1 KB file


def test_decode_takes_the_integer_dtypes_files_store(model16):
    codes = np.arange(4 * 6, dtype=np.uint16).reshape(1, 4, 6) % 16
    expected = model16.decode(s=torch.from_numpy(codes.astype(np.int64)))
    for dtype in (np.uint16, np.int16, np.int32, np.uint32):
        assert torch.equal(model16.decode(s=torch.from_numpy(codes.astype(dtype))), expected), dtype


def _shards(tree: Path, root: Path) -> Path:
    wav(root / "in" / "a.wav")
    corpus.tokenize(corpus.Corpus.open(str(root / "in")), root / "t", str(tree / "model"), readers=0, progress=False)
    return root / "t"


BAD_MANIFESTS = {  # what the manifest holds: what the line says
    "a list": ([1, 2], "holds a JSON list"),
    "no model": ({"drop": "model"}, "field 'model' must be a str"),
    "a short hash": ({"weights_sha256": "ab12"}, "field 'weights_sha256' must be 64 hexadecimal digits"),
    "codebooks as text": ({"n_codebooks": "4"}, "field 'n_codebooks' must be a positive int"),
    "another format": ({"format": "dac-codec tokens 99"}, "is of the format 'dac-codec tokens 99'; this package "
                                                          "reads ('dac-codec tokens 1', 'dac-codec tokens 2')"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_one_line(case, tree, tmp_path, capsys):
    folder = _shards(tree, tmp_path)
    change, says = BAD_MANIFESTS[case]
    manifest = json.loads((folder / "manifest.json").read_text())
    if isinstance(change, list):
        manifest = change
    elif "drop" in change:
        del manifest[change["drop"]]
    else:
        manifest.update(change)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    status, err = run(capsys, "detokenize", folder, "--output", tmp_path / "out")
    line = one_line(err)
    assert status == 1 and str(folder / "manifest.json") in line and says in line, line
    assert not (tmp_path / "out").exists()


BAD_ROWS = {  # a Parquet file's columns: (the line that refuses the file, or the row that fails and why)
    "float codes": ({"codes": [[[0.5, 1.0]]]}, "its `codes` column is list<element: list<element: double>>"),
    "text codes": ({"codes": ["0 1 2"]}, "its `codes` column is string"),
    "n_samples past its frames": ({"codes": [[[1, 2, 3]] * 4], "n_samples": [5000]},
                                  "its n_samples 5000 is not a length its 3 frames make"),
    "n_samples below its frames": ({"codes": [[[1, 2, 3]] * 4], "n_samples": [100]},
                                   "its n_samples 100 is not a length its 3 frames make"),
    "codebooks of two lengths": ({"codes": [[[1, 2, 3], [1, 2]]]}, "its codebooks have [2, 3] frames"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_rows_from_elsewhere_are_checked_before_use(case, tree, tmp_path, capsys):
    columns, says = BAD_ROWS[case]
    pq.write_table(pa.table({"id": ["r"] * len(columns["codes"]), **columns}), tmp_path / "rows.parquet")
    status, err = run(capsys, "detokenize", tmp_path / "rows.parquet", "--output", tmp_path / "out", "--model",
                      tree / "model")
    assert status == 1 and says in err, err
    assert written(tmp_path / "out") == []


def test_a_row_the_file_system_cannot_name_fails_alone(tree, tmp_path, capsys):
    pq.write_table(_codes_table(["ok", "x" * 300]), tmp_path / "rows.parquet")
    status, err = run(capsys, "detokenize", tmp_path / "rows.parquet", "--output", tmp_path / "out", "--model",
                      tree / "model")
    assert status == 1 and f"failed: {'x' * 300}: " in err and "File name too long" in err, err
    assert written(tmp_path / "out") == ["ok.wav"]


def test_detokenize_gives_exactly_n_samples(tree, tmp_path, capsys):
    """At 16 kHz the decoder returns 8 samples less than the frames' span: they are zeros."""
    model = DacModel.from_pretrained(tree / "model")
    table = _codes_table(["short", "whole"], frames=3, n_samples=[641, 960])
    pq.write_table(table, tmp_path / "rows.parquet")
    assert run(capsys, "detokenize", tmp_path / "rows.parquet", "--output", tmp_path / "out", "--model",
               tree / "model")[0] == 0
    decoded = model.decode(s=torch.tensor(table.column("codes")[0].as_py())[None])[0, 0]
    assert decoded.shape[-1] == 952
    short, _ = soundfile.read(tmp_path / "out" / "short.wav", dtype="float32")
    whole, _ = soundfile.read(tmp_path / "out" / "whole.wav", dtype="float32")
    assert short.shape == (641,) and torch.equal(torch.from_numpy(short), decoded[:641])
    assert whole.shape == (960,) and torch.equal(torch.from_numpy(whole[:952]), decoded) and not whole[952:].any()


# ----------------------------------------------------------------------------------------------------------------
# 4. Resumes you can trust
@pytest.fixture
def inputs(tmp_path):
    """Four short clips and a broken file, two a shard."""
    for i in range(4):
        wav(tmp_path / "in" / f"c{i}.wav", 0.2 + 0.1 * i, seed=i)
    (tmp_path / "in" / "c4.wav").write_bytes(b"RIFF, and nothing after")
    return tmp_path / "in"


def _tokenize(tree, source, output):
    return corpus.tokenize(corpus.Corpus.open(str(source)), output, str(tree / "model"), shard_size=2, readers=0,
                           progress=False)


def _rows(folder):
    return [pq.read_table(p).to_pylist() for p in sorted(folder.glob("part-*.parquet"))]


RESUMES = {  # what happens between the runs: (the shard it touches, what the second run says about it)
    "a truncated shard": (lambda out, src: _truncate(out / "part-00000.parquet"), "part-00000.parquet does not read"),
    "another table at a shard's name": (lambda out, src: pq.write_table(pa.table({"id": ["x"]}),
                                                                        out / "part-00001.parquet"),
                                        "part-00001.parquet has the columns ['id']"),
    "a shard of other rows": (lambda out, src: _swap_rows(out), "part-00000.parquet holds 2 rows, not those"),
    "an input rewritten": (lambda out, src: wav(src / "c2.wav", 0.5, seed=9), "c2.wav changed since part-00001"),
    "an input touched": (lambda out, src: os.utime(src / "c0.wav", ns=(1, 1)), "c0.wav changed since part-00000"),
    "a broken input mended": (lambda out, src: wav(src / "c4.wav", 0.3, seed=4), "c4.wav changed since part-00002"),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _swap_rows(output: Path) -> None:
    table = pq.read_table(output / "part-00001.parquet")
    pq.write_table(table, output / "part-00000.parquet")


@pytest.mark.parametrize("case", list(RESUMES))
def test_a_rerun_redoes_what_is_not_done(case, tree, inputs, tmp_path):
    change, says = RESUMES[case]
    _tokenize(tree, inputs, tmp_path / "out")
    change(tmp_path / "out", inputs)
    summary = _tokenize(tree, inputs, tmp_path / "out")
    assert summary.shards_done == 1 and summary.shards_skipped == 2 and len(summary.redone) == 1, summary
    assert says in summary.redone[0], summary.redone
    _tokenize(tree, inputs, tmp_path / "fresh")
    assert _rows(tmp_path / "out") == _rows(tmp_path / "fresh")


def test_a_rerun_counts_the_failures_of_earlier_runs(tree, inputs, tmp_path, capsys):
    command = ["tokenize", inputs, "--output", tmp_path / "out", "--model", tree / "model", "--shard-size", "2",
               "--readers", "0"]
    first, err = run(capsys, *command)
    assert first == 1 and "failed: c4.wav:" in err
    again, err = run(capsys, *command)
    assert again == 1 and "failed: c4.wav:" in err and "4 inputs tokenized, 1 failed (0 shards done now, 3 already "\
        "done)" in err


# ----------------------------------------------------------------------------------------------------------------
# 5. One line for every user error
def _wav_claiming(path: Path, rate: int) -> Path:
    wav(path)
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    return path


ONE_LINE = {  # name: (arguments, with {model} {tone} {tmp}; the status; what the one line says)
    "a device that is not one": (["encode", "{tone}", "--output", "{tmp}/o", "--device", "tpu"], 1,
                                 "device 'tpu' is not a device"),
    "a GPU this machine lacks": (["encode", "{tone}", "--output", "{tmp}/o", "--device", "cuda:7"], 1,
                                 "device 'cuda:7'"),
    "float16 on the CPU": (["encode", "{tone}", "--output", "{tmp}/o", "--device", "cpu", "--dtype", "float16"], 1,
                           "float16 does not run on the CPU"),
    "a missing input": (["encode", "{tmp}/nothing.wav", "--output", "{tmp}/o"], 1,
                        "No such file or folder: '{tmp}/nothing.wav'"),
    "a missing model": (["encode", "{tone}", "--output", "{tmp}/o", "--model", "{tmp}/no-model"], 1,
                        "No model folder or checkpoint at '{tmp}/no-model'"),
    "a missing .pth": (["encode", "{tone}", "--output", "{tmp}/o", "--model", "{tmp}/w.pth"], 1,
                       "No checkpoint file at '{tmp}/w.pth'"),
    "too many codebooks": (["encode", "{tone}", "--output", "{tmp}/o", "--n-quantizers", "99"], 1,
                           "`n_quantizers` must be an int in [1, 4], got 99."),
    "an unknown option": (["encode", "{tone}", "--output", "{tmp}/o", "--bogus"], 2,
                          "dac-codec: error: unrecognized arguments: --bogus (see --help)"),
    "info of a missing file": (["info", "{tmp}/x.dac"], 1, "No .dac file at '{tmp}/x.dac'"),
    "info of a text file": (["info", "{tmp}/notes.dac"], 1, "is not a .dac file"),
    "tokenize with no workers": (["tokenize", "{tone}", "--output", "{tmp}/o", "--workers", "0"], 1,
                                 "`workers` must be an int >= 1, got 0."),
    "tokenize a binary list": (["tokenize", "{tmp}/blob.bin", "--output", "{tmp}/o"], 1,
                               "is neither audio nor a text file of paths"),
    "tokenize, ray at a closed port": (["tokenize", "{tone}", "--output", "{tmp}/o", "--engine", "ray",
                                        "--ray-address", "127.0.0.1:9"], 1, "Nothing answers at the Ray address"),
    "detokenize nothing": (["detokenize", "{tmp}/none", "--output", "{tmp}/o"], 1, "No Parquet files at"),
    "encode into a file": (["encode", "{tone}", "--output", "{tmp}/notes.dac"], 1,
                           "--output '{tmp}/notes.dac' is a file; give a folder"),
    "tokenize into a file": (["tokenize", "{tone}", "--output", "{tmp}/notes.dac"], 1,
                             "--output '{tmp}/notes.dac' is a file; give a folder"),
    "a required option left out": (["decode", "{tmp}/x.dac"], 2,
                                   "dac-codec decode: error: the following arguments are required: --output "
                                   "(see --help)"),
}


@pytest.mark.parametrize("case", list(ONE_LINE))
def test_a_user_error_is_one_line(case, tree, tmp_path, capsys):
    arguments, status, says = ONE_LINE[case]
    (tmp_path / "notes.dac").write_text("not a .dac file")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    fill = {"model": tree / "model", "tone": tree / "data" / "tone.wav", "tmp": tmp_path}
    arguments = [a.format(**fill) for a in arguments]
    if "--model" not in arguments and arguments[0] in ("encode", "tokenize"):
        arguments += ["--model", str(tree / "model")]
    got, err = run(capsys, *arguments)
    if status == 2:
        assert got == 2 and err.strip() == says, err
    else:
        line = one_line(err)
        assert got == status and says.format(**fill) in line, line
    assert not (tmp_path / "o").exists()


def test_bfloat16_on_a_cpu_without_its_kernels_is_one_line(tree, tmp_path, capsys, monkeypatch):
    """Without oneDNN's bfloat16 kernels (no AVX-512), bfloat16 falls back to torch's generic loops (4x slower than
    float32 on a Zen 4 with AVX2 alone): refused before any work. With them, it is what runs."""
    monkeypatch.setattr(loading, "cpu_has_bfloat16", lambda: True)
    assert loading.resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(loading, "cpu_has_bfloat16", lambda: False)
    got, err = run(capsys, "encode", str(tree / "data" / "tone.wav"), "--output", str(tmp_path / "o"), "--model",
                   str(tree / "model"), "--device", "cpu", "--dtype", "bfloat16")
    assert got == 1 and "this CPU has no bfloat16 kernels" in one_line(err)
    assert not (tmp_path / "o").exists()


FINETUNE = {  # arguments beyond the model and data: what the one line says
    "no steps": (["--steps", "0"], "`steps` must be an int >= 1, got 0."),
    "a tiny excerpt": (["--duration", "0.001"], "`duration` must be in [0.128, 60] seconds for this model, got "
                                                "0.001."),
    "an absurd excerpt": (["--duration", "1e9"], "`duration` must be in [0.128, 60] seconds for this model, got "
                                                 "1000000000.0."),
    "a GPU this machine lacks": (["--device", "cuda:3"], "device 'cuda:3'"),
    "mixed precision on the CPU": (["--device", "cpu", "--precision", "bf16"],
                                   "precision 'bf16' needs a CUDA device; on cpu use fp32."),
    "a data folder that is not there": (["--data", "{tmp}/none"], "No such folder: '{tmp}/none'"),
    "a damaged checkpoint to resume": (["--output", "{tmp}/damaged"], "does not read back as a checkpoint"),
}


@pytest.mark.parametrize("case", list(FINETUNE))
def test_a_finetune_user_error_is_one_line(case, tree, tmp_path, capsys):
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    arguments, says = FINETUNE[case]
    defaults = {"--model": str(tree / "model"), "--data": str(tree / "data"), "--output": str(tmp_path / "run"),
                "--steps": "1", "--batch-size": "1", "--duration": "0.2"}
    given = dict(zip(arguments[::2], [a.format(tmp=tmp_path) for a in arguments[1::2]]))
    status, err = run(capsys, "finetune", *[x for key, value in {**defaults, **given}.items() for x in (key, value)])
    line = one_line("\n".join(line for line in err.split("\n") if not line.startswith("skipped ")))  # data's
    assert status == 1 and says.format(tmp=tmp_path) in line, line


def test_a_wav_header_claiming_an_absurd_rate_is_refused_at_once(tree, tmp_path, capsys):
    path = _wav_claiming(tmp_path / "fast.wav", 2**31 - 1)
    status, err = run(capsys, "encode", path, "--output", tmp_path / "o", "--model", tree / "model")
    assert status == 1 and f"failed: {path}: " in err and "768000 Hz" in err, err


def test_waveform_to_audiofile_refuses_nan_and_inf(model16, tmp_path):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            model16.waveform_to_audiofile(torch.tensor([0.0, bad, 0.1]), tmp_path / "x.wav")
        assert not (tmp_path / "x.wav").exists()


def test_one_audio_file_is_a_corpus_of_one(tree, tmp_path):
    model = DacModel.from_pretrained(tree / "model")
    source = corpus.Corpus.open(str(tree / "data" / "tone.wav"))
    assert source.kind == "file" and source.items() == [("tone.wav", str(tree / "data" / "tone.wav"))]
    corpus.tokenize(source, tmp_path / "t", str(tree / "model"), readers=0, progress=False)
    (row,) = _rows(tmp_path / "t")[0]
    assert torch.equal(torch.tensor(row["codes"]), model.encode(tree / "data" / "tone.wav").codes[0])


def test_an_old_file_naming_its_model_by_a_relative_path_is_not_trusted(tree, tmp_path, capsys, monkeypatch):
    """Files of earlier versions recorded `--model` as given and no weights hash: from another folder, the same
    relative path may be another model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    path = _crafted_dac(tmp_path / "old.dac", model={"name": "model", "sampling_rate": 16000, "hop_length": 320,
                                                      "codebook_size": 16})
    status, err = run(capsys, "decode", path, "--output", "out")
    line = one_line(err)
    assert status == 1 and "names its model by the relative path 'model'" in line and "--model" in line, line
    assert run(capsys, "decode", path, "--output", "out", "--model", tree / "model")[0] == 0
