"""The `.dac` file: what we write the original package reads, what it writes we read, and opening a crafted file
runs nothing (NumPy's own loader, the control, does run it)."""

import io
import os
import pickle

import numpy as np
import pytest
import torch

from dac_codec.tools import dac_file

DacFile = dac_file.DacFile


def example(generator, model=None):
    """Two mono signals of 9 codebooks, each with its loudness."""
    return DacFile(codes=torch.randint(0, 1024, (2, 9, 37), generator=generator), chunk_length=37,
                   original_length=18_900, input_db=torch.tensor([-23.5, -18.25]), channels=1, sample_rate=44100,
                   padding=True, model=model)


def same(a, b):
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(torch.as_tensor(a.input_db).float().reshape(-1), torch.as_tensor(b.input_db).float().reshape(-1))
    for key in ("chunk_length", "original_length", "channels", "sample_rate", "padding", "dac_version"):
        assert getattr(a, key) == getattr(b, key), key


def test_round_trip_keeps_every_field(tmp_path, generator):
    written = example(generator, model={"name": "dac-codec/dac-44khz", "n_codebooks": 9})
    written.save(tmp_path / "x.dac")
    loaded = DacFile.load(tmp_path / "x.dac")
    same(loaded, written)
    assert loaded.model == {"name": "dac-codec/dac-44khz", "n_codebooks": 9}
    assert loaded.codes.dtype == torch.int64


def test_the_original_reads_ours_and_we_read_the_originals(tmp_path, generator):
    original = pytest.importorskip("dac.model.base", reason="the reference package is a test dependency")
    ours = example(generator, model={"name": "some/model"})
    ours.save(tmp_path / "ours.dac")
    same(original.DACFile.load(tmp_path / "ours.dac"), ours)  # our extra `model` key is ignored there

    theirs = original.DACFile(codes=ours.codes, chunk_length=37, original_length=18_900,
                              input_db=torch.tensor([-23.5, -18.25]), channels=1, sample_rate=44100, padding=False,
                              dac_version="1.0.0")
    path = theirs.save(tmp_path / "theirs")  # the original adds the suffix
    loaded = DacFile.load(path)
    same(loaded, theirs)
    assert loaded.model is None and loaded.padding is False


class _Payload:
    """Unpickling this calls os.mkdir(marker): the classic payload, harmless here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("where", ["top", "metadata"])
def test_a_crafted_file_runs_nothing(tmp_path, where):
    marker = tmp_path / "payload_ran"
    artifacts = {"codes": np.zeros((1, 9, 4), np.uint16),
                 "metadata": {"input_db": np.zeros(1, np.float32), "original_length": 2048, "sample_rate": 44100,
                              "chunk_length": 4, "channels": 1, "padding": True, "dac_version": "1.0.0"}}
    (artifacts if where == "top" else artifacts["metadata"])["extra"] = _Payload(marker)
    with open(tmp_path / "evil.dac", "wb") as file:
        np.save(file, artifacts)
    with pytest.raises(ValueError, match=r"Refused to open .*evil.dac.*posix.mkdir|Refused to open .*os.mkdir"):
        DacFile.load(tmp_path / "evil.dac")
    assert not marker.exists()
    np.load(tmp_path / "evil.dac", allow_pickle=True)  # control: NumPy's loader runs the payload
    assert marker.is_dir()


def test_numpy_1_module_names_are_read(tmp_path, generator):
    """Files written under NumPy 1 name `numpy.core.multiarray`, which NumPy 2 only aliases."""
    written = example(generator)
    written.save(tmp_path / "x.dac")
    data = (tmp_path / "x.dac").read_bytes()
    header = data[: data.index(b"\n") + 1]
    artifacts = np.load(tmp_path / "x.dac", allow_pickle=True)
    body = pickle.dumps(artifacts, protocol=3)  # NumPy 1's protocol: names as text lines, rewritable
    assert b"numpy._core.multiarray" in body
    (tmp_path / "old.dac").write_bytes(header + body.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    same(DacFile.load(tmp_path / "old.dac"), written)


@pytest.mark.parametrize("content, match", [
    (b"not a numpy file at all", "not a .dac file"),
    (None, "holds an array of float"),
    ("junk pickle", "Refused to open"),
])
def test_other_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.dac"
    if content is None:
        np.save(open(path, "wb"), np.zeros(3))
    elif content == "junk pickle":  # a valid header for one object, then no pickle
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
        path.write_bytes(header.getvalue() + b"junk")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        DacFile.load(path)
    with pytest.raises(FileNotFoundError):
        DacFile.load(tmp_path / "missing.dac")


def test_a_file_of_another_version_is_refused(tmp_path, generator):
    example(generator).save(tmp_path / "x.dac")
    artifacts = np.load(tmp_path / "x.dac", allow_pickle=True)[()]
    artifacts["metadata"]["dac_version"] = "2.0.0"
    np.save(open(tmp_path / "v2.dac", "wb"), artifacts)
    with pytest.raises(ValueError, match="version '2.0.0'"):
        DacFile.load(tmp_path / "v2.dac")

