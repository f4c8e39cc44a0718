"""`dac-codec tokenize` and `detokenize` on a folder tree of real and broken files, a list of paths and a Hugging
Face dataset: every input once, codes identical to `encode` (both run the same CPU path, so equality is exact),
errors recorded, a killed run resumed to the same rows, and the rows back to the audio `decode` gives."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from dac_codec.tools import cli, corpus
from dac_codec.tools.convert import write_model_folder
from dac_codec.tools.corpus import ray_engine
from dac_codec.tools.corpus.local import Readers
from dac_codec.tools.corpus.sources import InputReader
from dac_codec.tools.corpus.tokenizer import Tokenizer

from conftest import DacModel, tiny_model, tone


@pytest.fixture(scope="module")
def data(tree, tmp_path_factory):
    """The shared audio tree plus an MP3, a truncated WAV and a text file named .wav."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    shutil.copytree(tree / "data", root)
    soundfile.write(root / "music" / "song.mp3", tone(1.3, 48000, 2, 4), 48000)
    wav = (root / "tone.wav").read_bytes()
    (root / "music" / "truncated.wav").write_bytes(wav[:44])  # a header that promises samples, and none
    (root / "music" / "text.wav").write_text("not a wav")
    return root


@pytest.fixture(scope="module")
def model(tree):
    return DacModel.from_pretrained(tree / "model")


@pytest.fixture(scope="module")
def tokenized(tree, data, tmp_path_factory):
    """The tree tokenized once, shards of 3 inputs, with a reader process."""
    output = tmp_path_factory.mktemp("tokens")
    summary = corpus.tokenize(corpus.Corpus.open(str(data)), output, str(tree / "model"), shard_size=3, readers=1,
                              progress=False)
    return output, summary


def rows_of(output):
    return [row for path in sorted(output.glob("part-*.parquet")) for row in pq.read_table(path).to_pylist()]


def audio_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".wav", ".flac", ".ogg",
                                                                                          ".mp3"))


BROKEN = {"empty.wav", "corrupt.flac", "music/truncated.wav", "music/text.wav"}


def test_every_input_once_with_the_codes_of_encode(tokenized, data, model):
    output, summary = tokenized
    rows = rows_of(output)
    assert [row["id"] for row in rows] == audio_files(data)  # each input once, in order; notes.txt left out
    assert {row["id"] for row in rows if row["error"]} == BROKEN
    assert summary.tokenized == len(rows) - len(BROKEN) and {i for i, _ in summary.failed} == BROKEN
    for row in rows:
        if row["id"] in BROKEN:
            assert row["codes"] is None and row["n_frames"] is None, row
            continue
        expected = model.encode(str(data / row["id"])).codes[0]  # mono mix-down and resampling as `encode` does
        assert torch.equal(torch.tensor(row["codes"]), expected), row["id"]
        info = soundfile.info(data / row["id"])
        assert row["n_frames"] == expected.shape[-1] == model.num_frames(row["n_samples"])
        assert row["source_sample_rate"] == info.samplerate
        assert row["duration_s"] == pytest.approx(info.frames / info.samplerate)
        assert row["error"] is None
    assert "Format not recognised" in dict(summary.failed)["corrupt.flac"]


def test_shards_and_manifest_are_plain_files_other_tools_read(tokenized, data, model):
    output, _ = tokenized
    n = len(audio_files(data))
    assert sorted(p.name for p in output.iterdir()) == ["manifest.json"] + [f"part-{k:05d}.parquet"
                                                                             for k in range(-(-n // 3))]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["n_codebooks"] == model.config.n_codebooks and manifest["hop_length"] == model.hop_length
    assert manifest["frame_rate"] == model.config.frame_rate and manifest["sample_rate"] == model.sampling_rate
    assert manifest["inputs"]["count"] == n and len(manifest["weights_sha256"]) == 64
    schema = pq.read_schema(output / "part-00000.parquet")
    assert schema.field("codes").type == pa.list_(pa.list_(pa.int16()))
    assert not schema.metadata or b"ray" not in b"".join(schema.metadata.values())  # no engine-specific types
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(sorted(output.glob("part-*.parquet")))
    assert len(frame) == n and frame["error"].notna().sum() == len(BROKEN)
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=str(output / "part-*.parquet"), split="train",
                                   cache_dir=str(output.parent / "hf-cache"))
    first = next(row for row in loaded if row["codes"] is not None)
    assert torch.equal(torch.tensor(first["codes"]), model.encode(str(data / first["id"])).codes[0])


def test_list_of_paths_and_missing_files(tree, data, model, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# a comment\n{data / 'tone.wav'}\n\nmissing.wav\n{data / 'music' / 'song.mp3'}\n")
    summary = corpus.tokenize(corpus.Corpus.open(str(listing)), tmp_path / "out", str(tree / "model"),
                              n_quantizers=2, readers=0, progress=False)
    rows = rows_of(tmp_path / "out")
    assert [r["id"] for r in rows] == [str(data / "tone.wav"), "missing.wav", str(data / "music" / "song.mp3")]
    assert rows[1]["codes"] is None and "No audio file" in rows[1]["error"]
    assert torch.equal(torch.tensor(rows[2]["codes"]), model.encode(str(data / "music" / "song.mp3"),
                                                                     n_quantizers=2).codes[0])
    assert summary.failed == [("missing.wav", rows[1]["error"])]
    listing.write_text(f"{data / 'tone.wav'}\n{data / 'tone.wav'}\n")
    with pytest.raises(ValueError, match="more than once"):
        corpus.Corpus.open(str(listing)).items()


def test_hugging_face_dataset_is_read_without_decoding(tree, data, model, tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["tone.wav", "speech.flac", "music/song.mp3", "music/stereo.flac"]
    audio = [{"bytes": (data / n).read_bytes(), "path": n} for n in names] + [{"bytes": b"broken", "path": "x.wav"}]
    table = datasets.Dataset.from_dict({"audio": audio, "name": names + ["broken"], "text": ["t"] * 5})
    splits = datasets.DatasetDict({"train": table.cast_column("audio", datasets.Audio()), "test": table})
    splits.save_to_disk(tmp_path / "dataset")
    with pytest.raises(ValueError, match="--split"):
        corpus.tokenize(corpus.Corpus.open(str(tmp_path / "dataset")), tmp_path / "x", str(tree / "model"))
    with pytest.raises(ValueError, match="no column 'voice'"):
        corpus.tokenize(corpus.Corpus.open(str(tmp_path / "dataset"), audio_column="voice", split="train"),
                        tmp_path / "x", str(tree / "model"))
    given = corpus.Corpus.open(str(tmp_path / "dataset"), id_column="name", split="train")
    assert given.kind == "dataset"
    corpus.tokenize(given, tmp_path / "out", str(tree / "model"), readers=1, progress=False)
    rows = rows_of(tmp_path / "out")
    assert [r["id"] for r in rows] == names + ["broken"]
    for row in rows[:-1]:
        assert torch.equal(torch.tensor(row["codes"]), model.encode(str(data / row["id"])).codes[0]), row["id"]
    assert rows[-1]["codes"] is None and "row 4" in rows[-1]["error"]
    by_index = corpus.Corpus.open(str(tmp_path / "dataset"), split="test")  # no id column: the row index
    corpus.tokenize(by_index, tmp_path / "by-index", str(tree / "model"), readers=0, progress=False)
    assert [r["id"] for r in rows_of(tmp_path / "by-index")] == ["0", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Twelve clips of 0.3 to 3 s at three rates, for the resume and worker tests."""
    root = tmp_path_factory.mktemp("many")
    for i in range(12):
        rate = (16000, 22050, 44100)[i % 3]
        soundfile.write(root / f"clip{i:02d}.flac", tone(0.3 + 0.25 * i, rate, 1 + i % 2, 10 + i), rate)
    return root


def test_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(tree, many, tmp_path):
    model = str(tree / "model")
    corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "whole", model, shard_size=1, readers=0,
                    progress=False)
    command = [sys.executable, "-m", "dac_codec.tools.cli", "tokenize", str(many), "--output", str(tmp_path / "killed"),
               "--model", model, "--shard-size", "1", "--readers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "killed").glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    done = sorted(p.name for p in (tmp_path / "killed").glob("part-*.parquet"))
    assert 1 <= len(done) < 12, "the run was killed before it finished"
    summary = corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "killed", model, shard_size=1, readers=0,
                              progress=False)
    assert summary.shards_skipped == len(done) and summary.shards_done == 12 - len(done)
    assert rows_of(tmp_path / "killed") == rows_of(tmp_path / "whole")
    assert not list((tmp_path / "killed").glob("*.partial"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "killed").iterdir()}
    again = corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "killed", model, shard_size=1, progress=False)
    assert again.shards_skipped == 12 and again.shards_done == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "killed").iterdir()} == mtimes  # nothing rewritten


def test_rerun_with_another_model_settings_or_inputs_refuses(tree, many, tmp_path):
    model = str(tree / "model")
    corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "out", model, shard_size=5, readers=0, progress=False)
    other = tmp_path / "other-model"
    write_model_folder(tiny_model(seed=5), other)
    changes = [({"n_quantizers": 2}, "n_codebooks"), ({"shard_size": 4}, "shard_size"),
               ({"model_name": str(other)}, "weights_sha256"), ({"dtype": "bfloat16"}, "dtype")]
    for change, named in changes:
        arguments = {"model_name": model, "shard_size": 5, "progress": False, **change}
        with pytest.raises(ValueError, match=named):
            corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "out", **arguments)
    fewer = tmp_path / "fewer"
    shutil.copytree(many, fewer)
    (fewer / "clip00.flac").unlink()
    with pytest.raises(ValueError, match="inputs"):
        corpus.tokenize(corpus.Corpus.open(str(fewer)), tmp_path / "out", model, shard_size=5, progress=False)


def test_bad_arguments_are_clear_errors_before_anything_is_written(tree, many, tmp_path):
    bad = [({"workers": 0}, "workers"), ({"readers": -1}, "readers"), ({"engine": "spark"}, "engine"),
           ({"dtype": "int8"}, "dtype"), ({"shard_size": 0}, "shard_size"), ({"n_quantizers": 9}, "n_quantizers")]
    for arguments, named in bad:
        with pytest.raises(ValueError, match=named):
            corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "out", str(tree / "model"), progress=False,
                            **arguments)
        assert not (tmp_path / "out" / "manifest.json").exists()


def test_cpu_worker_processes_give_the_same_rows(tree, many, tmp_path):
    model = str(tree / "model")
    corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "one", model, shard_size=4, readers=0, progress=False)
    corpus.tokenize(corpus.Corpus.open(str(many)), tmp_path / "two", model, shard_size=4, workers=2, readers=0,
                    progress=False)
    assert rows_of(tmp_path / "two") == rows_of(tmp_path / "one")


def test_packed_tokenizer_gives_each_signals_codes(model, many, monkeypatch):
    """The accelerator path (the model's `encode_many` packing windows of many clips into shared batches), made to
    run on the CPU by the one function that chooses the strategy."""
    from dac_codec import chunking, modeling_dac

    assert Tokenizer(model, 3).pack_frames == 0  # the CPU encodes each input on its own
    monkeypatch.setattr(modeling_dac, "choose_strategy", lambda device_type, widest=0, chunk_given=False, signals=1,
                        direction="encode": chunking.PACKED if signals > 1 else
                        chunking.choose_strategy("cpu", widest, chunk_given, direction=direction))
    tokenizer = Tokenizer(model, 3)
    assert tokenizer.pack_frames > 0
    reader = InputReader(corpus.Corpus.open(str(many)), model.sampling_rate)
    signals = [reader.read(str(p)).samples for p in sorted(many.iterdir())]
    for x, codes in zip(signals, tokenizer(signals)):
        assert codes.dtype == np.int16
        assert torch.equal(torch.from_numpy(codes).long(), model.encode(x, model.sampling_rate, 3).codes[0])


def test_a_reader_process_that_dies_is_replaced(data, model):
    """A decoder crashing on a broken file kills its reader process: the pool is replaced and the reads go on."""
    with Readers(corpus.Corpus.open(str(data)), model.sampling_rate, 1) as readers:
        assert readers.result(readers.submit(str(data / "tone.wav"))).source_rate == 16000
        pending = readers.submit(str(data / "speech.flac"))
        for process in list(readers.pool._processes.values()):
            process.kill()
        later = readers.submit(str(data / "music" / "song.mp3"))
        assert readers.result(pending).source_rate == 22050 and readers.result(later).source_rate == 48000


def test_detokenize_gives_the_audio_of_decode(tokenized, model, tmp_path):
    output, _ = tokenized
    summary = corpus.detokenize(output, tmp_path / "audio", progress=False)  # the model the manifest names
    rows = [row for row in rows_of(output) if row["codes"] is not None]
    assert summary.written == len(rows) and summary.without_codes == len(BROKEN) and not summary.failed
    for row in rows:
        path = tmp_path / "audio" / (row["id"].rsplit(".", 1)[0] + ".wav")
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == model.sampling_rate
        decoded = model.decode(s=torch.tensor(row["codes"])[None])[0, 0, : row["n_samples"]]
        assert audio.shape == (row["n_samples"],)  # the input's length exactly: the decoder's last 8 samples padded
        expected = torch.nn.functional.pad(decoded, (0, row["n_samples"] - decoded.shape[-1]))
        assert torch.equal(torch.from_numpy(audio), expected), row["id"]  # same path, float WAV: the same bits
    again = corpus.detokenize(output, tmp_path / "audio", ids=[rows[0]["id"], "nope"], progress=False)
    assert again.skipped == 1 and again.failed == [("nope", "no row has this id")]


def test_detokenize_any_parquet_with_codes(model, tree, tmp_path):
    good = np.arange(12, dtype=np.int16).reshape(4, 3) % 16
    table = pa.table({"codes": [good.tolist(), [[1, 2], [3]], (good + 100).tolist()]})
    pq.write_table(table, tmp_path / "generated.parquet")
    summary = corpus.detokenize(tmp_path / "generated.parquet", tmp_path / "audio", model_name=str(tree / "model"),
                                progress=False)
    assert summary.written == 1 and [i for i, _ in summary.failed] == ["generated-000001", "generated-000002"]
    assert "same number" in summary.failed[0][1] and "do not fit this model" in summary.failed[1][1]
    audio, _ = soundfile.read(tmp_path / "audio" / "generated-000000.wav", dtype="float32")
    assert torch.equal(torch.from_numpy(audio), model.decode(s=torch.from_numpy(good).long()[None])[0, 0])
    with pytest.raises(ValueError, match="--model"):
        corpus.detokenize(tmp_path / "generated.parquet", tmp_path / "x", progress=False)


def test_command_line(tree, many, tmp_path, capsys, monkeypatch):
    assert cli.main(["tokenize", str(many), "--output", str(tmp_path / "t"), "--model", str(tree / "model"),
                     "--shard-size", "5", "--readers", "0"]) == 0
    assert "12 inputs tokenized, 0 failed (3 shards done now, 0 already done)" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["command"][:2] == ["dac-codec", "tokenize"]
    assert cli.main(["detokenize", str(tmp_path / "t"), "--output", str(tmp_path / "a"), "--ids", "clip03.flac"]) == 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["clip03.wav"]
    assert cli.main(["tokenize", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "x")]) == 1
    assert "No folder, audio file, list of paths or dataset" in capsys.readouterr().err
    monkeypatch.setattr(pytest.importorskip("datasets").config, "HF_HUB_OFFLINE", True)  # no retries
    assert cli.main(["tokenize", "no-owner/no-dataset", "--output", str(tmp_path / "x"), "--model",
                     str(tree / "model")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: Could not load the dataset 'no-owner/no-dataset'") and len(error.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def run_child(command, timeout=300, env=None):
    """`command`'s exit status and output; it and every process it started are killed if it outlives `timeout`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env=env)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return process.returncode, out


def without_loopback_setting():
    return {k: v for k, v in os.environ.items() if k != ray_engine.LOOPBACK_ENV}


def test_ray_engine_on_a_two_node_loopback_cluster_gives_the_local_rows(tree, many, tmp_path):
    """Two equal nodes on 127.0.0.1 (loopback only, checked), started and stopped by a child process under a
    timeout; the Ray run uses both nodes and resumes a folder whose first shard the local engine wrote."""
    pytest.importorskip("ray", reason="the Ray engine: requirements-ray.txt")
    inputs = tmp_path / "inputs"
    shutil.copytree(many, inputs)
    (inputs / "broken.wav").write_bytes(b"RIFF and nothing more")
    model = str(tree / "model")
    corpus.tokenize(corpus.Corpus.open(str(inputs)), tmp_path / "local", model, shard_size=4, readers=0,
                    progress=False)
    (tmp_path / "ray").mkdir()
    for name in ("manifest.json", "part-00000.parquet"):
        shutil.copy(tmp_path / "local" / name, tmp_path / "ray" / name)
    command = [sys.executable, str(Path(__file__).with_name("ray_two_nodes.py")), str(inputs), model,
               str(tmp_path / "ray"), "4"]
    code, out = run_child(command)  # killed with the Ray nodes it started if it outlives the timeout
    assert code == 0, out[-3000:]
    assert "shards done 3 skipped 1" in out
    assert "actors 2 of {'num_cpus': 1} on 2 nodes" in out  # one a node: each node keeps a CPU for reading
    assert "refused: 3 CPU actors do not fit the cluster's nodes (2 CPUs, 2 CPUs; 1 CPU of each left for reading): " \
           "at most 2" in out
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local")
    assert any(row["error"] for row in rows_of(tmp_path / "ray"))


def test_a_local_ray_instance_listens_on_loopback_alone(tree, many, tmp_path):
    """With no address, `tokenize` starts a Ray instance of its own: its servers run whatever code they are sent,
    so none may listen beyond loopback (checked while it runs, in a child under a timeout), and its rows are the
    local engine's."""
    pytest.importorskip("ray", reason="the Ray engine: requirements-ray.txt")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for clip in sorted(many.iterdir())[:5]:
        shutil.copy(clip, inputs / clip.name)
    model = str(tree / "model")
    corpus.tokenize(corpus.Corpus.open(str(inputs)), tmp_path / "local", model, shard_size=4, readers=0,
                    progress=False)
    command = [sys.executable, str(Path(__file__).with_name("ray_local.py")), str(inputs), model, str(tmp_path / "ray")]
    code, out = run_child(command, env=without_loopback_setting())
    assert code == 0, out[-3000:]
    assert "shards done 2 on 1 node at 127.0.0.1" in out
    rows = json.loads(out.strip().splitlines()[-1])
    assert rows == [[row["id"], row["codes"]] for row in rows_of(tmp_path / "local")]


def test_a_local_ray_instance_that_would_listen_on_the_network_is_refused():
    """Imported before the engine could keep it on loopback, ray would start a local instance at the machine's
    network address: the engine refuses in one line, before starting anything (where the machine has no network
    address, the instance stays on loopback and nothing is refused)."""
    pytest.importorskip("ray", reason="the Ray engine: requirements-ray.txt")
    script = ("import ray\n"
              "from dac_codec.tools.corpus.ray_engine import check_cluster\n"
              "print('node', ray.util.get_node_ip_address())\n"
              "try:\n    check_cluster(None)\nexcept ValueError as error:\n    print('refused:', error)\n"
              "print('started', ray.is_initialized())\n")
    code, out = run_child([sys.executable, "-c", script], timeout=120, env=without_loopback_setting())
    assert code == 0, out[-3000:]
    node = out.split("node ", 1)[1].split()[0]
    refused = f"refused: A local Ray instance would listen at {node}, open to the network: set " \
              f"{ray_engine.LOOPBACK_ENV}=0 before ray is imported, or start a cluster and give --ray-address."
    assert (refused in out) == (node != "127.0.0.1"), out
    assert "started False" in out


ACTOR_PLANS = {  # nodes (CPUs, GPUs), --workers: (actors, resources of each), or what the refusal says
    "two equal nodes": ([(2, 0), (2, 0)], None, (2, {"num_cpus": 1})),
    "two equal nodes, two workers": ([(2, 0), (2, 0)], 2, (2, {"num_cpus": 1})),
    "one wide node": ([(16, 0)], None, (1, {"num_cpus": 15})),
    "one wide node, four workers": ([(16, 0)], 4, (4, {"num_cpus": 3})),
    "unequal nodes": ([(8, 0), (4, 0)], None, (3, {"num_cpus": 3})),
    "more workers than fit": ([(2, 0), (2, 0)], 3, "3 CPU actors do not fit the cluster's nodes"),
    "a node without a spare CPU": ([(1, 0)], None, "No node of the cluster (1 CPUs) has a CPU"),
    "a GPU a node": ([(8, 1), (8, 1)], None, (2, {"num_gpus": 1, "num_cpus": 1})),
    "more GPU workers than GPUs": ([(8, 1)], 2, "2 GPU actors (1 GPU and 1 CPU each) do not fit"),
}


@pytest.mark.parametrize("case", list(ACTOR_PLANS))
def test_ray_actors_are_sized_to_fit_one_node_each(case):
    """Ray places an actor on one node: a request sized from the cluster's total would wait forever."""
    from dac_codec.tools.corpus.ray_engine import plan_actors

    nodes, workers, expected = ACTOR_PLANS[case]
    resources = [{"CPU": float(c), **({"GPU": float(g)} if g else {})} for c, g in nodes]
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            plan_actors(resources, workers)
        return
    plan = plan_actors(resources, workers)
    assert (plan.actors, plan.resources) == expected
    for node in resources:  # what each node is asked for stays within it, a CPU left for reading
        per_node = plan.resources.get("num_cpus", 0)
        assert per_node <= node["CPU"] - (0 if "num_gpus" in plan.resources else 1)
