"""The inputs of a corpus: a folder of audio files, one audio file, a text file of paths, or a Hugging Face dataset;
each read as `encode` reads it (mixed down to mono, resampled to the model's rate)."""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
import soundfile
import torch

from ...audio_io import load_audio, prepare_audio
from ..command import first_line
from ..files import AUDIO_SUFFIXES


@dataclass(frozen=True)
class Corpus:
    """The inputs: a folder of audio files (walked recursively), one audio file, a text file of paths (one a line),
    or a Hugging Face dataset (a `save_to_disk` folder or a Hub id) whose `audio_column` is read without decoding
    (`Audio(decode=False)`) by this package's reader."""

    kind: str  # "folder", "file", "list" or "dataset"
    location: str
    audio_column: str = "audio"
    id_column: Optional[str] = None
    split: Optional[str] = None

    @classmethod
    def open(cls, given: str, audio_column: str = "audio", id_column: Optional[str] = None,
             split: Optional[str] = None) -> "Corpus":
        path = Path(given)
        if path.is_dir():
            saved = any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))
            kind = "dataset" if saved else "folder"
            return cls(kind, str(path.resolve()), audio_column, id_column, split)
        if path.is_file():
            return cls("file" if path.suffix.lower() in AUDIO_SUFFIXES else "list", str(path.resolve()))
        if given.count("/") == 1 and not given.startswith((".", "/", "~")):
            return cls("dataset", given, audio_column, id_column, split)  # a Hub id
        raise FileNotFoundError(f"No folder, audio file, list of paths or dataset at {given!r} (a Hub dataset is "
                                "named owner/name).")

    def items(self) -> list[tuple[str, Union[str, int]]]:
        """(id, reference) of every input, in the order of the shards; a reference is a path or a row index.

        Raises:
            ValueError: No inputs, or one input twice (the same id, or a list naming one file twice).
        """
        if self.kind == "folder":
            root = Path(self.location)
            paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            items = [(p.relative_to(root).as_posix(), str(p)) for p in paths]
        elif self.kind == "file":
            items = [(Path(self.location).name, self.location)]
        elif self.kind == "list":
            items = self._listed()
        else:
            dataset = open_dataset(self)
            ids = list(dataset[self.id_column]) if self.id_column else range(len(dataset))
            items = [(str(i), row) for row, i in enumerate(ids)]
        if not items:
            raise ValueError(f"{self.location} holds no inputs.")
        twice = sorted(id for id, count in Counter(id for id, _ in items).items() if count > 1)
        if twice:
            raise ValueError(f"{self.location} names some inputs more than once ({twice[:5]}); each must be unique.")
        return items

    def _listed(self) -> list[tuple[str, str]]:
        base = Path(self.location).parent
        try:
            lines = [line.strip() for line in Path(self.location).read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise ValueError(f"{self.location} is neither audio nor a text file of paths (one a line).") from None
        items = [(line, str(base / line)) for line in lines if line and not line.startswith("#")]
        files: dict[str, str] = {}
        for id, path in items:  # the same file under two spellings (a.wav, ./a.wav) is one input
            where = os.path.normcase(os.path.realpath(path))
            if where in files and files[where] != id:
                raise ValueError(f"{self.location} lists one file twice, as {files[where]!r} and {id!r}; each input "
                                 "must be listed once.")
            files.setdefault(where, id)
        return items


def open_dataset(corpus: Corpus):
    """The corpus's dataset (one split), holding only the audio (and id) column, audio left undecoded."""
    try:
        import datasets
    except ImportError:
        raise ImportError('Reading a Hugging Face dataset needs `datasets`: pip install "dac-codec[datasets]".') \
            from None
    if Path(corpus.location).is_dir():
        dataset = datasets.load_from_disk(corpus.location)
    else:
        try:
            dataset = datasets.load_dataset(corpus.location, split=corpus.split)
        except Exception as error:  # offline, no such dataset, no access: one line that says which
            raise ValueError(f"Could not load the dataset {corpus.location!r} ({first_line(error)}); check the name "
                             "and the network, or give a folder that `save_to_disk` wrote.") from None
    if isinstance(dataset, datasets.DatasetDict):
        split = corpus.split or ("train" if list(dataset) == ["train"] else None)
        if split not in dataset:
            raise ValueError(f"{corpus.location} has the splits {list(dataset)}; choose one with --split.")
        dataset = dataset[split]
    for column in filter(None, (corpus.audio_column, corpus.id_column)):
        if column not in dataset.column_names:
            raise ValueError(f"{corpus.location} has no column {column!r}; its columns are {dataset.column_names}. "
                             "Name the audio with --audio-column and the ids with --id-column.")
    dataset = dataset.select_columns([c for c in (corpus.audio_column, corpus.id_column) if c])
    try:
        dataset = dataset.cast_column(corpus.audio_column, datasets.Audio(decode=False))
    except (ValueError, TypeError) as error:
        raise ValueError(f"Column {corpus.audio_column!r} of {corpus.location} does not hold audio ({error}).") \
            from None
    return dataset


class Input(NamedTuple):
    """One input as `encode` reads it, or why it could not be read."""

    samples: Optional[np.ndarray]  # float32 (t,), mono at the model's rate; None where `error` says why
    source_rate: Optional[int] = None
    source_samples: Optional[int] = None  # per channel, at the source's rate
    size: Optional[int] = None  # bytes of the file when it was read (None for dataset rows and missing files)
    mtime_ns: Optional[int] = None
    error: Optional[str] = None


def file_stamp(path: Union[str, os.PathLike]) -> tuple[Optional[int], Optional[int]]:
    """(size, modification time in ns) of a file, (None, None) where there is none: what a rerun compares to know
    that an input has not changed."""
    try:
        status = os.stat(path)
    except OSError:
        return None, None
    return status.st_size, status.st_mtime_ns


class InputReader:
    """Reads inputs of one corpus as `encode` reads them (mixed down to mono, resampled to the model's rate); the
    dataset, for a dataset corpus, is opened once per process."""

    def __init__(self, corpus: Corpus, sample_rate: int):
        self.corpus, self.sample_rate = corpus, sample_rate
        self._dataset = None

    def read(self, reference: Union[str, int]) -> Input:
        """The input, or an `Input` whose `error` says why it cannot be read (a bad, missing or huge input)."""
        size = mtime_ns = None
        if self.corpus.kind != "dataset":
            size, mtime_ns = file_stamp(reference)
        try:
            return self._read(reference)._replace(size=size, mtime_ns=mtime_ns)
        except (ValueError, OSError, MemoryError) as error:
            return Input(None, size=size, mtime_ns=mtime_ns, error=first_line(error))

    def _read(self, reference: Union[str, int]) -> Input:
        if self.corpus.kind == "dataset":
            if self._dataset is None:
                self._dataset = open_dataset(self.corpus)
            audio = self._dataset[reference][self.corpus.audio_column]
            if audio.get("bytes"):
                try:
                    data, source_rate = soundfile.read(io.BytesIO(audio["bytes"]), dtype="float32", always_2d=True)
                except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
                    raise ValueError(f"Could not read row {reference} as audio: {error}") from None
                data = data.T  # (time, channels) -> (channels, time), as `load_audio` gives
            elif audio.get("path"):
                data, source_rate = load_audio(audio["path"])
            else:
                raise ValueError(f"Row {reference} holds no audio.")
        else:
            data, source_rate = load_audio(reference)
        samples = prepare_audio(torch.from_numpy(data), source_rate, self.sample_rate)
        return Input(samples[0, 0].numpy(), source_rate, data.shape[-1])


_READER: Optional[InputReader] = None  # a reader process's own reader, made by its initializer
