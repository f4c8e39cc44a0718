"""Tokenizing a corpus: every input of a folder of audio files, one audio file, a list of paths or a Hugging Face
dataset to Parquet shards of codes, resumably; and rows of codes back to audio.

The output folder holds `manifest.json` (the model, its architecture and weights hashes, the settings, the inputs)
and shards `part-NNNNN.parquet`: shard k holds inputs [k * shard_size, (k + 1) * shard_size) of the input list, one
row each (`SCHEMA`, plain Arrow types that pandas, polars and `datasets` read without this package). A shard is
written under a hidden temporary name and renamed when complete. A rerun skips the shards that read back complete
(every row of its inputs, in order, from inputs that have not changed since: same size and modification time) and
redoes the others, so after any interruption (`kill -9` included) it ends with the rows of an uninterrupted run.

A row's codes are `model.encode(that input).codes`: the same reading, mono mix-down and resampling. On the CPU
each input is encoded on its own, exactly as `encode` does; on an accelerator the windows of many inputs are packed
into full batches (`chunking.encode_packed`), each input's codes as if alone, to the agreement that `encode` has
there (float rounding may flip near-ties of the nearest-code search). Reading, decoding and resampling run in
reader processes, ahead of the model; every process this starts dies with its parent.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import queue
import re
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch

from .audio_io import load_audio, prepare_audio
from .chunking import BATCH_ELEMENTS, decode_packed, encode_packed
from .files import AUDIO_SUFFIXES, check_output_folder, write_atomically
from .loading import DTYPES, check_identity, first_line, load_model, model_identity, resolve_device
from .processes import spawning, start_child, stop

FORMAT = "dac-codec tokens 2"
MANIFEST = "manifest.json"
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("codes", pa.list_(pa.list_(pa.int16()))),  # (n_codebooks, n_frames); null where `error` says why
    ("n_frames", pa.int32()),
    ("n_samples", pa.int64()),  # at the model's rate
    ("source_sample_rate", pa.int32()),
    ("duration_s", pa.float64()),  # of the source
    ("source_size", pa.int64()),  # bytes of the input file when it was read (null for dataset rows)
    ("source_mtime_ns", pa.int64()),  # its modification time, ns since the epoch
    ("error", pa.string()),
])
# What a rerun must share with the run that made a folder; the rest of the manifest is informative.
IDENTITY = ("format", "config_sha256", "weights_sha256", "n_codebooks", "dtype", "shard_size", "inputs")
DEFAULT_SHARD_SIZE = 1000
PACK_BATCHES = 8  # accelerators: inputs gathered until their windows fill this many full batches
Report = Callable[[int, float], None]  # (files done, audio seconds done)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
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
            paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                           and not p.name.endswith(".partial"))
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
        raise ImportError('Reading a Hugging Face dataset needs `datasets`: pip install "dac-codec[datasets]".') from None
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
        raise ValueError(f"Column {corpus.audio_column!r} of {corpus.location} does not hold audio ({error}).")
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


def _start_reader(corpus: Corpus, sample_rate: int) -> None:
    global _READER
    start_child(threads=1)
    _READER = InputReader(corpus, sample_rate)


def _read_in_process(reference: Union[str, int]) -> Input:
    return _READER.read(reference)


def _alive() -> bool:
    return True


class Readers:
    """Reader processes (spawned: forking a process that has run torch can hang) that read inputs ahead of the
    model. A reader that dies (a decoder crashing on a broken file) is replaced, and the input it was reading is
    retried once on its own, then reported. The processes die with this one, and stop when it leaves the block."""

    def __init__(self, corpus: Corpus, sample_rate: int, processes: int):
        self.reader, self.processes = InputReader(corpus, sample_rate), processes
        self.pool: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "Readers":
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            if exc[0] is not None:  # interrupted or failed: stop reading now rather than finish what is queued
                stop((self.pool._processes or {}).values(), timeout=5)
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _start(self) -> None:
        if self.processes:
            self.pool = ProcessPoolExecutor(self.processes, multiprocessing.get_context("spawn"),
                                            initializer=_start_reader,
                                            initargs=(self.reader.corpus, self.reader.sample_rate))
            with spawning():  # each submit to an idle-less pool starts a process: start them all here
                for _ in range(self.processes):
                    self.pool.submit(_alive)

    def submit(self, reference) -> tuple:
        if self.pool is None:  # no reader processes: read when the result is asked for
            return reference, None, None
        pool = self.pool
        try:
            return reference, pool, pool.submit(_read_in_process, reference)
        except BrokenProcessPool:  # it broke since the last submit
            self._replace(pool)
            return reference, self.pool, self.pool.submit(_read_in_process, reference)

    def result(self, handle: tuple) -> Input:
        """What `InputReader.read` returns for a submitted reference."""
        reference, pool, future = handle
        if future is None:
            return self.reader.read(reference)
        try:
            return future.result()
        except BrokenProcessPool:  # a reader died, on this input or on one read beside it: retry this one alone
            self._replace(pool)
        try:
            return self.pool.submit(_read_in_process, reference).result()
        except BrokenProcessPool:
            self._replace(self.pool)
        try:  # this input's fault, or can no reader process run here at all?
            self.pool.submit(_alive).result()
        except BrokenProcessPool:
            raise RuntimeError("Reader processes cannot run here (a script that calls `tokenize` must do so under "
                               "`if __name__ == '__main__':`, as spawned processes import it); readers=0 reads "
                               "in the encoder's process.") from None
        size, mtime_ns = file_stamp(reference) if self.reader.corpus.kind != "dataset" else (None, None)
        return Input(None, size=size, mtime_ns=mtime_ns, error="reading it crashed the reader process")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is self.pool:  # the first to see a broken pool replaces it
            self.pool.shutdown(wait=False)
            self._start()

    def read(self, keyed: Iterable[tuple[object, object]], depth: int) -> Iterator[tuple[object, object]]:
        """(key, `InputReader.read` result) for each (key, reference), in order, `depth` read ahead."""
        ahead: deque = deque()
        for key, reference in keyed:
            ahead.append((key, self.submit(reference)))
            if len(ahead) > depth:
                key, handle = ahead.popleft()
                yield key, self.result(handle)
        while ahead:
            key, handle = ahead.popleft()
            yield key, self.result(handle)


# ----------------------------------------------------------------------------------------------------------------
# Shards and the manifest
@dataclass(frozen=True)
class Shard:
    index: int
    items: list  # (id, reference) of its inputs, in order

    def path(self, output: Path) -> Path:
        return output / f"part-{self.index:05d}.parquet"


def plan_shards(items: list, shard_size: int) -> list[Shard]:
    return [Shard(k, items[start : start + shard_size]) for k, start in enumerate(range(0, len(items), shard_size))]


def make_manifest(model, model_name: str, corpus: Corpus, items: list, n_quantizers: int, dtype: str,
                  shard_size: int, command: Optional[list[str]] = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("dac-codec")
    except PackageNotFoundError:
        package_version = None
    config, identity = model.config, model_identity(model, model_name)
    ids = hashlib.sha256("\n".join(i for i, _ in items).encode()).hexdigest()
    return {
        "format": FORMAT, "model": identity["name"], "architecture": identity["architecture"],
        "config_sha256": hashlib.sha256(json.dumps(identity["architecture"], sort_keys=True).encode()).hexdigest(),
        "weights_sha256": identity["weights_sha256"], "package_version": package_version,
        "n_codebooks": n_quantizers, "codebook_size": config.codebook_size, "sample_rate": config.sampling_rate,
        "hop_length": config.hop_length, "frame_rate": config.frame_rate, "dtype": dtype, "shard_size": shard_size,
        "n_shards": -(-len(items) // shard_size),
        "inputs": {"kind": corpus.kind, "location": corpus.location, "audio_column": corpus.audio_column,
                   "id_column": corpus.id_column, "split": corpus.split, "count": len(items), "ids_sha256": ids},
        "command": command if command is not None else sys.argv,
    }


_MANIFEST_FIELDS = {"format": str, "model": str, "weights_sha256": str, "config_sha256": str, "n_codebooks": int,
                    "sample_rate": int, "hop_length": int, "shard_size": int, "inputs": dict}


def read_manifest(path: Path) -> dict:
    """A folder's manifest, every field that is read checked for type (one line naming the file and the field)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({first_line(error)}).") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds a JSON {type(manifest).__name__}, not a manifest (an object).")
    for key, kind in _MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise ValueError(f"{path}: field {key!r} must be {'a positive int' if kind is int else f'a {kind.__name__}'}"
                             f", got {value!r:.80}.")
    for key in ("weights_sha256", "config_sha256"):
        if not re.fullmatch(r"[0-9a-f]{64}", manifest[key]):
            raise ValueError(f"{path}: field {key!r} must be 64 hexadecimal digits, got {manifest[key]!r:.80}.")
    if manifest["format"] != FORMAT:
        raise ValueError(f"{path} is of the format {manifest['format']!r}; this package reads {FORMAT!r}.")
    return manifest


def prepare_output(output: Path, manifest: dict) -> None:
    """Writes the manifest into a new or empty folder, or checks that a folder's own manifest matches (resuming);
    removes what an interrupted run left half-written."""
    check_output_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / MANIFEST
    if path.is_file():
        try:
            made = read_manifest(path)
        except ValueError as error:
            raise ValueError(f"{error} Give another --output.") from None
        different = [key for key in IDENTITY if made.get(key) != manifest[key]]
        if different:
            details = "; ".join(f"{key}: {made.get(key)!r} there, {manifest[key]!r} now" for key in different)
            raise ValueError(f"{output} holds tokens made with another model, other settings or other inputs "
                             f"({details}). Give another --output, or the same model, settings and inputs to resume.")
    elif any(output.glob("part-*.parquet")):
        raise ValueError(f"{output} holds shards but no {MANIFEST}; give another --output.")
    else:
        write_atomically(path, lambda target: Path(target).write_text(json.dumps(manifest, indent=2)))
    for partial in output.glob("*.partial"):
        partial.unlink()


def check_done(shard: Shard, path: Path, corpus: Corpus) -> Optional[str]:
    """Why the shard at `path` must be redone (it does not read back whole, or an input changed since it was
    written), or None when it is done."""
    try:
        parquet = pq.ParquetFile(path)
        if parquet.schema_arrow.names != SCHEMA.names:
            return f"{path.name} has the columns {parquet.schema_arrow.names}, not a shard's"
        table = parquet.read(columns=["id", "source_size", "source_mtime_ns"])
    except (OSError, pa.ArrowException) as error:  # truncated or damaged
        return f"{path.name} does not read back ({first_line(error)})"
    if table.column("id").to_pylist() != [id for id, _ in shard.items]:
        return f"{path.name} holds {table.num_rows} rows, not those of its {len(shard.items)} inputs"
    if corpus.kind == "dataset":
        return None
    stamps = zip(table.column("source_size").to_pylist(), table.column("source_mtime_ns").to_pylist())
    for (id, reference), stamp in zip(shard.items, stamps):
        if file_stamp(reference) != stamp:
            return f"{id} changed since {path.name} was written"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Rows
@dataclass
class Row:
    id: str
    codes: Optional[np.ndarray] = None  # (n_codebooks, n_frames) int16
    n_samples: Optional[int] = None
    source_sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    source_size: Optional[int] = None
    source_mtime_ns: Optional[int] = None
    error: Optional[str] = None

    def fill(self, read: Input) -> None:
        """The row's description of its input (and why it could not be read)."""
        self.source_size, self.source_mtime_ns, self.error = read.size, read.mtime_ns, read.error
        if read.source_rate:
            self.source_sample_rate, self.duration_s = read.source_rate, read.source_samples / read.source_rate


def codes_array(codes: list[Optional[np.ndarray]]) -> pa.Array:
    """list<list<int16>> of (n, frames) arrays, None for null, built from offsets without Python lists."""
    present = [c for c in codes if c is not None]
    values = pa.array(np.concatenate([c.reshape(-1) for c in present]) if present else np.zeros(0, np.int16))
    row_lengths = [np.full(c.shape[0], c.shape[1]) for c in present]
    inner_offsets = np.concatenate([[0], np.cumsum(np.concatenate(row_lengths) if present else [])])
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets.astype(np.int32)), values)
    outer_offsets = np.concatenate([[0], np.cumsum([0 if c is None else c.shape[0] for c in codes])])
    mask = pa.array([c is None for c in codes])
    return pa.ListArray.from_arrays(pa.array(outer_offsets.astype(np.int32)), inner, mask=mask).cast(
        SCHEMA.field("codes").type)


def rows_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array([r.id for r in rows], pa.string()),
        codes_array([r.codes for r in rows]),
        pa.array([None if r.codes is None else r.codes.shape[1] for r in rows], pa.int32()),
        pa.array([r.n_samples for r in rows], pa.int64()),
        pa.array([r.source_sample_rate for r in rows], pa.int32()),
        pa.array([r.duration_s for r in rows], pa.float64()),
        pa.array([r.source_size for r in rows], pa.int64()),
        pa.array([r.source_mtime_ns for r in rows], pa.int64()),
        pa.array([r.error for r in rows], pa.string()),
    ], schema=SCHEMA)


def write_shard(path: Path, table: pa.Table) -> None:
    write_atomically(path, lambda target: pq.write_table(table, target))


def row_codes(codes: Optional[list]) -> Optional[np.ndarray]:
    """A `codes` cell (list of codebook rows) as an int64 array (n_codebooks, n_frames)."""
    if codes is None:
        return None
    lengths = {len(row) if row is not None else -1 for row in codes}
    if not codes or len(lengths) != 1 or -1 in lengths:
        raise ValueError(f"its codebooks have {sorted(lengths)} frames; every codebook needs the same number")
    return np.asarray(codes, dtype=np.int64).reshape(len(codes), lengths.pop())


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing
def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


class Tokenizer:
    """Codes of model-rate signals as `encode` gives them: on the CPU each streamed on its own; on an accelerator
    many signals' windows packed into full batches (`batch_frames` frames of signals gathered at a time)."""

    def __init__(self, model, n_quantizers: int):
        self.model, self.n_quantizers = model, n_quantizers
        packed = model.device.type != "cpu"
        self.batch_frames = PACK_BATCHES * BATCH_ELEMENTS // model.geometry.encoder_width if packed else 0

    @torch.inference_mode()
    def __call__(self, signals: list[np.ndarray]) -> list[Union[np.ndarray, str]]:
        """int16 codes (n_quantizers, frames) of each signal (t,), or the line that says why it failed."""
        model, rate = self.model, self.model.sampling_rate
        if self.batch_frames and len(signals) > 1:
            try:
                tensors = [torch.from_numpy(x)[None, None].to(model.device, model.dtype) for x in signals]
                packed = encode_packed(model.encoder, model.quantizer, tensors, self.n_quantizers, model.geometry)
                return [codes[0].to(torch.int16).cpu().numpy() for _, codes in packed]
            except torch.OutOfMemoryError:  # too much at once: each signal on its own, its own error
                torch.cuda.empty_cache()
        results = []
        for x in signals:
            try:
                codes = model.encode(torch.from_numpy(x), rate, self.n_quantizers).codes
                results.append(codes[0].to(torch.int16).cpu().numpy())
            except (ValueError, MemoryError, RuntimeError) as error:
                if isinstance(error, RuntimeError) and not _out_of_memory(error):
                    raise
                results.append(first_line(error))
        return results


def tokenize_shards(model, corpus: Corpus, shards: Iterable[Shard], output: Path, n_quantizers: int,
                    readers: int, report: Report) -> None:
    """Tokenizes `shards` with `model`, reading ahead in `readers` processes, writing each shard when complete."""
    tokenizer, rate = Tokenizer(model, n_quantizers), model.sampling_rate
    keyed = (((shard, position), reference) for shard in shards for position, (_, reference) in enumerate(shard.items))
    with Readers(corpus, rate, readers) as pool:
        for shard, group in itertools.groupby(pool.read(keyed, depth=2 * readers + 1), key=lambda kr: kr[0][0]):
            rows: list[Row] = [Row(id) for id, _ in shard.items]
            waiting: list[tuple[int, Input]] = []

            def flush() -> None:
                results = tokenizer([read.samples for _, read in waiting]) if waiting else []
                for (position, read), codes in zip(waiting, results):
                    row = rows[position]
                    row.fill(read)
                    if isinstance(codes, str):
                        row.error = codes
                    else:
                        row.codes, row.n_samples = codes, read.samples.shape[-1]
                report(len(waiting), sum(read.samples.shape[-1] for _, read in waiting) / rate)
                waiting.clear()

            for (_, position), read in group:
                if read.error is not None:
                    rows[position].fill(read)
                    report(1, 0.0)
                    continue
                waiting.append((position, read))
                if sum(r.samples.shape[-1] for _, r in waiting) // model.hop_length >= tokenizer.batch_frames:
                    flush()
            flush()
            write_shard(shard.path(output), rows_table(rows))


def _encoder_process(model_name: str, device: str, dtype: str, threads: int, corpus: Corpus, output: str,
                     n_quantizers: int, readers: int, jobs, reports) -> None:
    """One encoder process (one per device, or per CPU worker): takes shards from `jobs` until None."""
    start_child(threads)
    try:
        device, torch_dtype = resolve_device(device, dtype)
        model = load_model(model_name).to(device, torch_dtype)
        shards = iter(jobs.get, None)
        tokenize_shards(model, corpus, shards, Path(output), n_quantizers, readers,
                        lambda files, seconds: reports.put(("progress", files, seconds)))
    except BaseException as error:
        reports.put(("failed", str(device), f"{type(error).__name__}: {error}"))
        raise
    reports.put(("done", str(device), None))


@dataclass
class Summary:
    """What a folder holds after a run: inputs tokenized and failed in all its shards (earlier runs' included),
    shards done in this run and skipped as already done, and the shards redone with the reason."""

    tokenized: int = 0
    failed: list = field(default_factory=list)  # (id, error) of every failed input of the folder
    shards_done: int = 0
    shards_skipped: int = 0
    redone: list = field(default_factory=list)  # why each redone shard was not done
    ray: Any = None  # the Ray engine's `RayRun`: its actors and the nodes they ran on


def tokenize(
    corpus: Corpus, output: Union[str, Path], model_name: str, n_quantizers: Optional[int] = None,
    devices: Optional[list[str]] = None, workers: Optional[int] = None, readers: Optional[int] = None,
    shard_size: Optional[int] = None, dtype: str = "float32", engine: str = "local",
    ray_address: Optional[str] = None, progress: bool = True, command: Optional[list[str]] = None,
) -> Summary:
    """Tokenizes `corpus` into `output` (see the module's docstring), skipping the shards already done.

    Args:
        devices: Where to encode, one encoder process per device (e.g. ["cuda:0", "cuda:1"]); ["cpu"] or ["cuda"]
            by default.
        workers: Local engine: CPU encoder processes, the cores split between them (CPU only; 1 by default).
            Ray: encoder actors (by default as many as fit: one a GPU, or one a node).
        readers: Reader processes per encoder; 1 on the CPU, else the spare cores shared out (at most 8).
        engine: "local", or "ray" for Ray Data (`ray_address` of a cluster, or a local one).
    """
    from tqdm import tqdm

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}.")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}.")
    for name, value, least in (("workers", workers, 1), ("readers", readers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
    if engine == "ray":
        from .corpus_ray import check_cluster

        if dtype not in DTYPES:  # the device each actor gets checks the rest
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}.")
        check_cluster(ray_address)  # Ray installed and its cluster reachable, before anything is written
    else:
        devices = [str(resolve_device(d, dtype)[0]) for d in (devices or [None])]  # each exists, with the dtype
    output = Path(output)
    items = corpus.items()  # bad input fails before the model loads
    model = load_model(model_name)
    if model.config.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit the int16 codes of the shards.")
    n_quantizers = model.check_n_quantizers(n_quantizers)
    manifest = make_manifest(model, model_name, corpus, items, n_quantizers, dtype, shard_size, command)
    model_name = manifest["model"]  # a local folder by its absolute path, the same for every process and node
    prepare_output(output, manifest)
    shards = plan_shards(items, shard_size)
    summary = Summary()
    pending = []
    for shard in shards:
        why = check_done(shard, shard.path(output), corpus) if shard.path(output).is_file() else "not done"
        if why is None:
            summary.shards_skipped += 1
            continue
        if why != "not done":
            summary.redone.append(why)
            shard.path(output).unlink()
        pending.append(shard)
    cpu = engine == "ray" or all(torch.device(d).type == "cpu" for d in devices)
    encoders = (workers or 1) if cpu else len(devices)
    if readers is None:
        readers = 1 if cpu else max(1, min(8, ((os.cpu_count() or 1) - encoders) // encoders))

    bar = tqdm(total=sum(len(s.items) for s in pending), unit="file", desc="tokenize", disable=not progress)
    seconds_done = [0.0]

    def report(files: int, seconds: float) -> None:
        seconds_done[0] += seconds
        bar.update(files)
        bar.set_postfix({"audio": f"{seconds_done[0] / 3600:.3f} h"}, refresh=False)

    with bar:
        if engine == "ray":
            from .corpus_ray import tokenize_ray

            summary.ray = tokenize_ray(model_name, model.sampling_rate, corpus, pending, output, n_quantizers, dtype,
                                       workers, report, ray_address)
        elif encoders == 1 and pending:
            model.to(*resolve_device(devices[0], dtype))
            tokenize_shards(model, corpus, pending, output, n_quantizers, readers, report)
        elif pending:
            threads = max(1, (os.cpu_count() or 1) // encoders) if cpu else 1
            _run_encoder_processes(model_name, devices if not cpu else ["cpu"] * encoders, dtype, threads, corpus,
                                   output, n_quantizers, readers, pending, report)
    summary.shards_done = sum(shard.path(output).is_file() for shard in pending)
    for shard in shards:  # every shard's rows, earlier runs' too: a rerun's summary and exit status count them
        if shard.path(output).is_file():
            table = pq.read_table(shard.path(output), columns=["id", "error"])
            errors = table.filter(table.column("error").is_valid())
            summary.failed += list(zip(errors.column("id").to_pylist(), errors.column("error").to_pylist()))
            summary.tokenized += table.num_rows - errors.num_rows
    return summary


def _run_encoder_processes(model_name: str, devices: list[str], dtype: str, threads: int, corpus: Corpus,
                           output: Path, n_quantizers: int, readers: int, pending: list[Shard],
                           report: Report) -> None:
    """One spawned encoder process per device, taking shards from a shared queue; stops them all if one fails,
    or when this process is interrupted."""
    context = multiprocessing.get_context("spawn")
    jobs, reports = context.Queue(), context.Queue()
    for shard in pending:
        jobs.put(shard)
    for _ in devices:
        jobs.put(None)
    processes = [context.Process(target=_encoder_process, name=f"dac-codec encoder {device}",
                                 args=(model_name, device, dtype, threads, corpus, str(output), n_quantizers,
                                       readers, jobs, reports)) for device in devices]
    with spawning():
        for process in processes:
            process.start()
    finished = False
    try:
        running = len(processes)
        while running:
            try:
                kind, *payload = reports.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}; the finished shards "
                                       "are kept: rerun the same command to resume.")
                continue
            if kind == "progress":
                report(*payload)
            elif kind == "failed":
                raise RuntimeError(f"the encoder on {payload[0]} failed: {payload[1]}; the finished shards are "
                                   "kept: rerun the same command to resume.")
            else:
                running -= 1
        finished = True
    finally:
        if finished:
            for process in processes:
                process.join(timeout=10)
        stop(processes)


# ----------------------------------------------------------------------------------------------------------------
# The way back
def audio_path(output: Path, id: str) -> Path:
    """Where the audio of row `id` goes: its path, relative to `output`, with the suffix .wav (a dataset row's index:
    17.wav; an absolute path is taken as relative to `output`).

    Raises:
        ValueError: An id that names no file inside `output` (empty, "..", a NUL character).
    """
    parts = [part for part in PurePosixPath(id).parts if part != "/"]
    if not parts or ".." in parts or "\0" in id or parts[-1] in (".",):
        raise ValueError(f"its id {id!r} names no file inside the output folder")
    return output / Path(*parts).with_suffix(".wav")


def codes_type_error(file: Path, schema: pa.Schema) -> Optional[str]:
    """Why a Parquet file's `codes` column cannot hold codes, or None."""
    if "codes" not in schema.names:
        return f"{file} has no `codes` column; its columns are {schema.names}."
    kind = schema.field("codes").type
    if not (pa.types.is_list(kind) and pa.types.is_list(kind.value_type) and pa.types.is_integer(
            kind.value_type.value_type)):
        return f"{file}: its `codes` column is {kind}, not lists of lists of integers (n_codebooks, frames)."
    if "n_samples" in schema.names and not pa.types.is_integer(schema.field("n_samples").type):
        return f"{file}: its `n_samples` column is {schema.field('n_samples').type}, not integers."
    return None


def parquet_files(source: Path) -> list[Path]:
    """The Parquet files of a folder of shards (or any Parquet files), or the one file given, each checked to hold
    codes."""
    files = [source] if source.is_file() else sorted(source.glob("part-*.parquet")) or sorted(source.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No Parquet files at {source}.")
    for file in files:
        try:
            problem = codes_type_error(file, pq.read_schema(file))
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{file} is not a readable Parquet file ({first_line(error)}).") from None
        if problem:
            raise ValueError(problem)
    return files


def read_rows(files: list[Path], columns: tuple[str, ...], ids: Optional[set[str]] = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, {column: value}) of every row of `files` that has `ids` (all where None), for the `columns` they have.
    Files without an `id` column name their rows <file stem>-<row>."""
    for file in files:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        row = 0
        for batch in parquet.iter_batches(batch_size=64, columns=[c for c in ("id", *columns) if c in names]):
            cells = batch.to_pydict()
            for i in range(batch.num_rows):
                id = str(cells["id"][i]) if "id" in cells else f"{file.stem}-{row:06d}"
                row += 1
                if ids is None or id in ids:
                    yield id, {k: cells[k][i] if k in cells else None for k in columns}


def plan_audio_paths(files: list[Path], output: Path, ids: Optional[set[str]]) -> dict[str, Union[Path, str]]:
    """The output of each row to be written (rows with an error have none), or why its id cannot be one; refuses
    before any work when two rows would write one file."""
    planned: dict[str, Union[Path, str]] = {}
    first: dict[str, str] = {}
    for id, cells in read_rows(files, ("error",), ids):
        if cells["error"] is not None:
            continue
        try:
            path = audio_path(output, id)
        except ValueError as error:
            planned[id] = str(error)
            continue
        key = os.path.normcase(os.fspath(path)).casefold()
        if key in first:
            raise ValueError(f"the rows {first[key]!r} and {id!r} would both write {path}; detokenize them to "
                             "separate folders (--ids) or rename one.")
        first[key], planned[id] = id, path
    return planned


def checked_codes(cell: Any, n_samples: Any, config, hop_length: int) -> tuple[np.ndarray, Optional[int]]:
    """A row's codes (n, frames) and `n_samples`, checked against the model: codebooks and values it has, and a
    length that its frames make (frames = ceil(n_samples / hop))."""
    codes = row_codes(cell)
    if codes.shape[-1] == 0:
        raise ValueError("it holds no frames")
    if codes.shape[0] > config.n_codebooks or not (0 <= int(codes.min()) and int(codes.max()) < config.codebook_size):
        raise ValueError(f"its codes (shape {tuple(codes.shape)}, values {int(codes.min())} to {int(codes.max())}) "
                         f"do not fit this model ({config.n_codebooks} codebooks of {config.codebook_size}); give the "
                         "model that made them with --model")
    frames = codes.shape[-1]
    if n_samples is not None and not (isinstance(n_samples, int) and -(-n_samples // hop_length) == frames):
        raise ValueError(f"its n_samples {n_samples!r} is not a length its {frames} frames make (hop {hop_length}: "
                         f"{(frames - 1) * hop_length + 1} to {frames * hop_length})")
    return codes, n_samples


@dataclass
class DetokenizeSummary:
    written: int = 0
    skipped: int = 0  # outputs that exist
    without_codes: int = 0  # rows of inputs that could not be tokenized
    failed: list = field(default_factory=list)  # (id, why)


def detokenize(source: Union[str, Path], output: Union[str, Path], model_name: Optional[str] = None,
               ids: Optional[Iterable[str]] = None, device: Optional[str] = None, dtype: str = "float32",
               overwrite: bool = False, progress: bool = True) -> DetokenizeSummary:
    """Decodes rows of codes to mono WAV files at the model's rate, one per row, named by `audio_path`, with exactly
    the row's `n_samples` where it has one (the 16 and 24 kHz decoders' last 8 samples are zeros).

    On the CPU each row is decoded as `decode(s=codes)` does; on an accelerator many rows' windows are packed into
    full batches. The model is `model_name`, or the one the folder's manifest names; where a manifest records the
    model that made the codes, another model is refused.
    """
    from tqdm import tqdm

    source, output = Path(source), Path(output)
    check_output_folder(output)
    torch_device, torch_dtype = resolve_device(device, dtype)
    files = parquet_files(source)
    manifest_path = source / MANIFEST if source.is_dir() else source.parent / MANIFEST
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    if model_name is None and manifest is None:
        raise ValueError(f"No {MANIFEST} beside {source} names the model; give it with --model.")
    wanted = set(ids) if ids is not None else None
    planned = plan_audio_paths(files, output, wanted)  # before the model loads: a clash is refused at once
    model_name = model_name or manifest["model"]
    model = load_model(model_name)
    if manifest is not None:
        recorded = {"name": manifest["model"], "architecture": manifest.get("architecture"),
                    "weights_sha256": manifest["weights_sha256"]}
        check_identity(recorded, model_identity(model, model_name), str(manifest_path))
    model = model.to(torch_device, torch_dtype)
    config, summary = model.config, DetokenizeSummary()
    batch_frames = PACK_BATCHES * BATCH_ELEMENTS // model.geometry.decoder_width if torch_device.type != "cpu" else 0
    waiting: list[tuple[str, Path, torch.Tensor, Optional[int]]] = []
    found: set[str] = set()  # ids of the rows read

    def write(id: str, path: Path, audio: torch.Tensor, n_samples: Optional[int]) -> None:
        samples = audio[0, 0, :n_samples].float().cpu().numpy()
        if n_samples is not None and samples.shape[-1] < n_samples:  # the 16 and 24 kHz decoders' last 8 samples
            samples = np.pad(samples, (0, n_samples - samples.shape[-1]))
        try:
            write_atomically(path, lambda target: soundfile.write(target, samples, config.sampling_rate,
                                                                   format="WAV", subtype="FLOAT"))
            summary.written += 1
        except OSError as error:  # a name too long for the file system, no permission: this row's failure
            summary.failed.append((id, first_line(error)))

    @torch.inference_mode()
    def flush() -> None:
        if len(waiting) > 1:
            audio = decode_packed(model.decoder, model.quantizer, [codes for *_, codes, _ in waiting], model.geometry)
        else:
            audio = [model.decode(s=codes) for *_, codes, _ in waiting]
        for (id, path, _, n_samples), decoded in zip(waiting, audio):
            write(id, path, decoded, n_samples)
        bar.update(len(waiting))
        waiting.clear()

    with tqdm(unit="row", desc="detokenize", disable=not progress) as bar:
        for id, cells in read_rows(files, ("codes", "n_samples"), wanted):
            found.add(id)
            if cells["codes"] is None:
                summary.without_codes += 1
                bar.update(1)
                continue
            try:
                path = planned.get(id)
                if not isinstance(path, Path):
                    raise ValueError(path or "its row records an error beside its codes")
                if path.exists() and not overwrite:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                codes, n_samples = checked_codes(cells["codes"], cells["n_samples"], config, model.hop_length)
                waiting.append((id, path, torch.from_numpy(codes)[None].to(model.device), n_samples))
                if sum(c.shape[-1] for *_, c, _ in waiting) >= batch_frames:
                    flush()
            except (ValueError, OSError) as problem:  # this row's codes, or a name the file system refuses
                summary.failed.append((id, first_line(problem)))
                bar.update(1)
        flush()
    if wanted is not None:
        summary.failed += [(id, "no row has this id") for id in sorted(wanted - found)]
    return summary

