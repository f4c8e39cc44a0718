"""Tokenizing a corpus: every input of a folder of audio files, a list of paths or a Hugging Face dataset to
Parquet shards of codes, resumably; and rows of codes back to audio.

The output folder holds `manifest.json` (the model, its config and weights hashes, the settings, the inputs) and
shards `part-NNNNN.parquet`: shard k holds inputs [k * shard_size, (k + 1) * shard_size) of the input list, one row
each (`SCHEMA`, plain Arrow types that pandas, polars and `datasets` read without this package). A shard is
written under a temporary name and renamed when complete, so a rerun after any interruption (`kill -9` included)
skips the finished shards and ends with the rows of an uninterrupted run.

A row's codes are `model.encode(that input).codes`: the same reading, mono mix-down and resampling. On the CPU
each input is encoded on its own, exactly as `encode` does; on an accelerator the windows of many inputs are packed
into full batches (`chunking.encode_packed`), each input's codes as if alone, to the agreement that `encode` has
there (float rounding may flip near-ties of the nearest-code search). Reading, decoding and resampling run in
reader processes, ahead of the model.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import queue
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch

from .audio_io import AUDIO_SUFFIXES, load_audio, prepare_audio
from .chunking import BATCH_ELEMENTS, decode_packed, encode_packed
from .loading import DTYPES, first_line, load_model, write_atomically

FORMAT = "dac-codec tokens 1"
MANIFEST = "manifest.json"
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("codes", pa.list_(pa.list_(pa.int16()))),  # (n_codebooks, n_frames); null where `error` says why
    ("n_frames", pa.int32()),
    ("n_samples", pa.int64()),  # at the model's rate
    ("source_sample_rate", pa.int32()),
    ("duration_s", pa.float64()),  # of the source
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
    """The inputs: a folder of audio files (walked recursively), a text file of paths (one a line), or a Hugging
    Face dataset (a `save_to_disk` folder or a Hub id) whose `audio_column` is read without decoding
    (`Audio(decode=False)`) by this package's reader."""

    kind: str  # "folder", "list" or "dataset"
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
            return cls("list", str(path.resolve()))
        if given.count("/") == 1 and not given.startswith((".", "/")):
            return cls("dataset", given, audio_column, id_column, split)  # a Hub id
        raise FileNotFoundError(f"No folder, list of paths or dataset at {given!r} (a Hub dataset is named "
                                "owner/name).")

    def items(self) -> list[tuple[str, Union[str, int]]]:
        """(id, reference) of every input, in the order of the shards; a reference is a path or a row index."""
        if self.kind == "folder":
            root = Path(self.location)
            paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            items = [(p.relative_to(root).as_posix(), str(p)) for p in paths]
        elif self.kind == "list":
            base = Path(self.location).parent
            lines = [line.strip() for line in Path(self.location).read_text().splitlines()]
            items = [(line, str(base / line)) for line in lines if line and not line.startswith("#")]
        else:
            dataset = open_dataset(self)
            ids = list(dataset[self.id_column]) if self.id_column else range(len(dataset))
            items = [(str(i), row) for row, i in enumerate(ids)]
        if not items:
            raise ValueError(f"{self.location} holds no inputs.")
        twice = [id for id, count in Counter(id for id, _ in items).items() if count > 1]
        if twice:
            raise ValueError(f"{self.location} lists some inputs more than once ({sorted(twice)[:5]}); each must "
                             "be unique.")
        return items


_DATASETS: dict = {}  # per process: opening a dataset maps its files, done once


def open_dataset(corpus: Corpus):
    """The corpus's dataset (one split), holding only the audio (and id) column, audio left undecoded."""
    key = (corpus.location, corpus.split, corpus.audio_column, corpus.id_column)
    if key in _DATASETS:
        return _DATASETS[key]
    try:
        import datasets
    except ImportError:
        raise ImportError("Reading a Hugging Face dataset needs `datasets`: pip install 'dac-codec[datasets]'.")
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
    except Exception as error:
        raise ValueError(f"Column {corpus.audio_column!r} of {corpus.location} does not hold audio ({error}).")
    _DATASETS[key] = dataset
    return dataset


def read_input(corpus: Corpus, reference: Union[str, int], sample_rate: int) -> tuple[np.ndarray, int, int]:
    """One input as `encode` reads it: mixed down to mono and resampled to `sample_rate`.

    Returns:
        (samples float32 (t,), the source's rate, the source's samples per channel).
    """
    if corpus.kind == "dataset":
        audio = open_dataset(corpus)[reference][corpus.audio_column]
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
    samples = prepare_audio(torch.from_numpy(data), source_rate, sample_rate)
    return samples[0, 0].numpy(), source_rate, data.shape[-1]


def _read_or_error(corpus: Corpus, reference, sample_rate: int):
    """`read_input`, or the one line that says why it failed."""
    try:
        return read_input(corpus, reference, sample_rate)
    except Exception as error:
        return first_line(error)


def _one_thread() -> None:
    torch.set_num_threads(1)


class Readers:
    """Reader processes (spawned: forking a process that has run torch can hang) that read inputs ahead of the
    model. A reader that dies (a decoder crashing on a broken file) is replaced, and the input it was reading is
    retried once on its own, then reported."""

    def __init__(self, corpus: Corpus, sample_rate: int, processes: int):
        self.corpus, self.sample_rate, self.processes = corpus, sample_rate, processes
        self.pool: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "Readers":
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _start(self) -> None:
        if self.processes:
            self.pool = ProcessPoolExecutor(self.processes, multiprocessing.get_context("spawn"),
                                            initializer=_one_thread)

    def submit(self, reference) -> tuple:
        if self.pool is None:  # no reader processes: read when the result is asked for
            return reference, None, None
        pool = self.pool
        try:
            return reference, pool, pool.submit(_read_or_error, self.corpus, reference, self.sample_rate)
        except BrokenProcessPool:  # it broke since the last submit
            self._replace(pool)
            return reference, self.pool, self.pool.submit(_read_or_error, self.corpus, reference, self.sample_rate)

    def result(self, handle: tuple):
        """What `_read_or_error` returns for a submitted reference."""
        reference, pool, future = handle
        if future is None:
            return _read_or_error(self.corpus, reference, self.sample_rate)
        try:
            return future.result()
        except BrokenProcessPool:  # a reader died, on this input or on one read beside it: retry this one alone
            self._replace(pool)
        try:
            return self.pool.submit(_read_or_error, self.corpus, reference, self.sample_rate).result()
        except BrokenProcessPool:
            self._replace(self.pool)
        try:  # this input's fault, or can no reader process run here at all?
            self.pool.submit(_one_thread).result()
        except BrokenProcessPool:
            raise RuntimeError("Reader processes cannot run here (a script that calls `tokenize` must do so under "
                               "`if __name__ == '__main__':`, as spawned processes import it); readers=0 reads "
                               "in the encoder's process.") from None
        return "reading it crashed the reader process"

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is self.pool:  # the first to see a broken pool replaces it
            self.pool.shutdown(wait=False)
            self._start()

    def read(self, keyed: Iterable[tuple[object, object]], depth: int) -> Iterator[tuple[object, object]]:
        """(key, `read_input` result or error line) for each (key, reference), in order, `depth` read ahead."""
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


def model_hashes(model) -> dict[str, str]:
    """sha256 of the model's architecture and of its weights (every tensor's bytes, in name order)."""
    config = hashlib.sha256(json.dumps(model.config.architecture(), sort_keys=True).encode()).hexdigest()
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return {"config_sha256": config, "weights_sha256": weights.hexdigest()}


def make_manifest(model, model_name: str, corpus: Corpus, items: list, n_quantizers: int, dtype: str,
                  shard_size: int, command: Optional[list[str]] = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("dac-codec")
    except PackageNotFoundError:
        package_version = None
    config = model.config
    ids = hashlib.sha256("\n".join(i for i, _ in items).encode()).hexdigest()
    return {
        "format": FORMAT, "model": model_name, **model_hashes(model), "package_version": package_version,
        "n_codebooks": n_quantizers, "codebook_size": config.codebook_size, "sample_rate": config.sampling_rate,
        "hop_length": config.hop_length, "frame_rate": config.frame_rate, "dtype": dtype, "shard_size": shard_size,
        "n_shards": -(-len(items) // shard_size),
        "inputs": {"kind": corpus.kind, "location": corpus.location, "audio_column": corpus.audio_column,
                   "id_column": corpus.id_column, "split": corpus.split, "count": len(items), "ids_sha256": ids},
        "command": command if command is not None else sys.argv,
    }


def prepare_output(output: Path, manifest: dict) -> None:
    """Writes the manifest into a new or empty folder, or checks that a folder's own manifest matches (resuming);
    removes what an interrupted run left half-written."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / MANIFEST
    if path.is_file():
        made = json.loads(path.read_text())
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


# ----------------------------------------------------------------------------------------------------------------
# Rows
@dataclass
class Row:
    id: str
    codes: Optional[np.ndarray] = None  # (n_codebooks, n_frames) int16
    n_samples: Optional[int] = None
    source_sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    error: Optional[str] = None


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
        pa.array([r.error for r in rows], pa.string()),
    ], schema=SCHEMA)


def write_shard(path: Path, table: pa.Table) -> None:
    write_atomically(path, lambda target: pq.write_table(table, target))


def row_codes(codes: Optional[list]) -> Optional[np.ndarray]:
    """A `codes` cell (list of codebook rows) as an int64 array (n_codebooks, n_frames)."""
    if codes is None:
        return None
    lengths = {len(row) for row in codes}
    if len(lengths) != 1:
        raise ValueError(f"its codebooks have {sorted(lengths)} frames; every codebook needs the same number")
    return np.asarray(codes, dtype=np.int64).reshape(len(codes), lengths.pop())


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing
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
            except Exception:  # out of memory, say: each signal on its own, its own error
                pass
        results = []
        for x in signals:
            try:
                codes = model.encode(torch.from_numpy(x), rate, self.n_quantizers).codes
                results.append(codes[0].to(torch.int16).cpu().numpy())
            except Exception as error:
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
            waiting: list[tuple[int, tuple]] = []

            def flush() -> None:
                results = tokenizer([read[0] for _, read in waiting]) if waiting else []
                for (position, (samples, source_rate, source_samples)), codes in zip(waiting, results):
                    row = rows[position]
                    row.source_sample_rate, row.duration_s = source_rate, source_samples / source_rate
                    if isinstance(codes, str):
                        row.error = codes
                    else:
                        row.codes, row.n_samples = codes, samples.shape[-1]
                report(len(waiting), sum(read[0].shape[-1] for _, read in waiting) / rate)
                waiting.clear()

            for (_, position), read in group:
                if isinstance(read, str):
                    rows[position].error = read
                    report(1, 0.0)
                    continue
                waiting.append((position, read))
                if sum(r[0].shape[-1] for _, r in waiting) // model.hop_length >= tokenizer.batch_frames:
                    flush()
            flush()
            write_shard(shard.path(output), rows_table(rows))


def _encoder_process(model_name: str, device: str, dtype: str, threads: int, corpus: Corpus, output: str,
                     n_quantizers: int, readers: int, jobs, reports) -> None:
    """One encoder process (one per device, or per CPU worker): takes shards from `jobs` until None."""
    torch.set_num_threads(threads)
    try:
        model = load_model(model_name).to(device, DTYPES[dtype])
        shards = iter(jobs.get, None)
        tokenize_shards(model, corpus, shards, Path(output), n_quantizers, readers,
                        lambda files, seconds: reports.put(("progress", files, seconds)))
    except BaseException as error:
        reports.put(("failed", device, f"{type(error).__name__}: {error}"))
        raise
    reports.put(("done", device, None))


@dataclass
class Summary:
    """What a run did: inputs tokenized and failed in this run, and shards skipped as already done."""

    tokenized: int = 0
    failed: list = field(default_factory=list)  # (id, error) of this run's failed inputs
    shards_done: int = 0
    shards_skipped: int = 0


def tokenize(
    corpus: Corpus, output: Union[str, Path], model_name: str, n_quantizers: Optional[int] = None,
    devices: Optional[list[str]] = None, workers: int = 1, readers: Optional[int] = None,
    shard_size: Optional[int] = None, dtype: str = "float32", engine: str = "local",
    ray_address: Optional[str] = None, progress: bool = True, command: Optional[list[str]] = None,
) -> Summary:
    """Tokenizes `corpus` into `output` (see the module's docstring), skipping the shards already there.

    Args:
        devices: Where to encode, one encoder process per device (e.g. ["cuda:0", "cuda:1"]); ["cpu"] or ["cuda"]
            by default.
        workers: CPU encoder processes, the cores split between them (CPU only); Ray: actors.
        readers: Reader processes per encoder; 1 on the CPU, else the spare cores shared out (at most 8).
        engine: "local", or "ray" for Ray Data (`ray_address` of a cluster, or a local one).
    """
    from tqdm import tqdm

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}.")
    for name, value, least in (("workers", workers, 1), ("readers", readers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
    devices = devices or ["cuda" if torch.cuda.is_available() else "cpu"]
    output = Path(output)
    if Path(model_name).is_dir():  # the same folder for every process and node, whatever their working directory
        model_name = str(Path(model_name).resolve())
    items = corpus.items()  # bad input fails before the model loads
    model = load_model(model_name)
    if model.config.codebook_size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit the int16 codes of the shards.")
    n_quantizers = model._n_quantizers(n_quantizers)
    manifest = make_manifest(model, model_name, corpus, items, n_quantizers, dtype, shard_size, command)
    prepare_output(output, manifest)
    shards = plan_shards(items, shard_size)
    pending = [shard for shard in shards if not shard.path(output).is_file()]
    summary = Summary(shards_skipped=len(shards) - len(pending))
    cpu = all(torch.device(d).type == "cpu" for d in devices)
    encoders = workers if cpu else len(devices)
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

            tokenize_ray(model_name, model.sampling_rate, corpus, pending, output, n_quantizers, dtype, workers,
                         ray_address, report)
        elif encoders == 1 and pending:
            model.to(devices[0], DTYPES[dtype])
            tokenize_shards(model, corpus, pending, output, n_quantizers, readers, report)
        elif pending:
            threads = max(1, (os.cpu_count() or 1) // encoders) if cpu else 1
            _run_encoder_processes(model_name, devices if not cpu else ["cpu"] * encoders, dtype, threads, corpus,
                                   output, n_quantizers, readers, pending, report)
    for shard in pending:
        if shard.path(output).is_file():
            table = pq.read_table(shard.path(output), columns=["id", "error"])
            errors = table.filter(table.column("error").is_valid())
            summary.failed += list(zip(errors.column("id").to_pylist(), errors.column("error").to_pylist()))
            summary.tokenized += table.num_rows - errors.num_rows
            summary.shards_done += 1
    return summary


def _run_encoder_processes(model_name: str, devices: list[str], dtype: str, threads: int, corpus: Corpus,
                           output: Path, n_quantizers: int, readers: int, pending: list[Shard],
                           report: Report) -> None:
    """One spawned encoder process per device, taking shards from a shared queue; stops them all if one fails."""
    context = multiprocessing.get_context("spawn")
    jobs, reports = context.Queue(), context.Queue()
    for shard in pending:
        jobs.put(shard)
    for _ in devices:
        jobs.put(None)
    processes = [context.Process(target=_encoder_process, name=f"dac-codec encoder {device}",
                                 args=(model_name, device, dtype, threads, corpus, str(output), n_quantizers,
                                       readers, jobs, reports)) for device in devices]
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
        for process in processes:
            process.join(timeout=10 if finished else 0)
            if process.is_alive():
                process.terminate()
                process.join()


# ----------------------------------------------------------------------------------------------------------------
# The way back
def audio_path(output: Path, id: str) -> Path:
    """Where the audio of row `id` goes: its path, relative to `output`, with the suffix .wav (a dataset row's index:
    17.wav)."""
    parts = [part for part in PurePosixPath(id).parts if part != "/"]  # a listed absolute path: under the folder
    if not parts or ".." in parts:
        raise ValueError(f"its id {id!r} names no file inside the output folder")
    return output / Path(*parts).with_suffix(".wav")


def read_rows(source: Path, ids: Optional[set[str]] = None) -> Iterator[tuple[str, Optional[list], dict]]:
    """(id, codes cell, the row's `error` and `n_samples`) of every row of a folder of shards (or any Parquet
    files) or of one Parquet file, with `ids` only where given. Files without an `id` column name their rows
    <file stem>-<row>."""
    files = [source] if source.is_file() else sorted(source.glob("part-*.parquet")) or sorted(source.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No Parquet files at {source}.")
    for file in files:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        if "codes" not in names:
            raise ValueError(f"{file} has no `codes` column; its columns are {names}.")
        columns = [c for c in ("id", "codes", "error", "n_samples") if c in names]
        row = 0
        for batch in parquet.iter_batches(batch_size=64, columns=columns):
            cells = batch.to_pydict()
            for i in range(batch.num_rows):
                id = str(cells["id"][i]) if "id" in cells else f"{file.stem}-{row:06d}"
                row += 1
                if ids is None or id in ids:
                    extra = {k: cells[k][i] if k in cells else None for k in ("error", "n_samples")}
                    yield id, cells["codes"][i], extra


@dataclass
class DetokenizeSummary:
    written: int = 0
    skipped: int = 0  # outputs that exist
    without_codes: int = 0  # rows of inputs that could not be tokenized
    failed: list = field(default_factory=list)  # (id, why)


def detokenize(source: Union[str, Path], output: Union[str, Path], model_name: Optional[str] = None,
               ids: Optional[Iterable[str]] = None, device: Optional[str] = None, dtype: str = "float32",
               overwrite: bool = False, progress: bool = True) -> DetokenizeSummary:
    """Decodes rows of codes to mono WAV files at the model's rate, one per row, named by `audio_path` and cropped
    to the row's `n_samples` where it has one.

    On the CPU each row is decoded as `decode(s=codes)` does; on an accelerator many rows' windows are packed into
    full batches. The model is `model_name`, or the one the folder's manifest names.
    """
    from tqdm import tqdm

    source, output = Path(source), Path(output)
    if model_name is None:
        manifest = source / MANIFEST if source.is_dir() else source.parent / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"No {MANIFEST} beside {source} names the model; give it with --model.")
        model_name = json.loads(manifest.read_text())["model"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_name).to(device, DTYPES[dtype])
    config, summary = model.config, DetokenizeSummary()
    wanted = set(ids) if ids is not None else None
    batch_frames = PACK_BATCHES * BATCH_ELEMENTS // model.geometry.decoder_width if device != "cpu" else 0
    waiting: list[tuple[Path, torch.Tensor, Optional[int]]] = []
    seen: set[Path] = set()
    found: set[str] = set()  # ids of the rows read

    def write(path: Path, audio: torch.Tensor, n_samples: Optional[int]) -> None:
        samples = audio[0, 0, :n_samples].float().cpu().numpy()  # the input's length, where the row records it
        write_atomically(path, lambda target: soundfile.write(target, samples, config.sampling_rate,
                                                               format="WAV", subtype="FLOAT"))
        summary.written += 1

    @torch.inference_mode()
    def flush() -> None:
        if len(waiting) > 1:
            audio = decode_packed(model.decoder, model.quantizer, [codes for _, codes, _ in waiting], model.geometry)
        else:
            audio = [model.decode(s=codes) for _, codes, _ in waiting]
        for (path, _, n_samples), decoded in zip(waiting, audio):
            write(path, decoded, n_samples)
        bar.update(len(waiting))
        waiting.clear()

    with tqdm(unit="row", desc="detokenize", disable=not progress) as bar:
        for id, cell, extra in read_rows(source, wanted):
            found.add(id)
            if cell is None:
                summary.without_codes += 1
                bar.update(1)
                continue
            try:
                path = audio_path(output, id)
                if path in seen:
                    raise ValueError(f"another row already writes {path}")
                seen.add(path)
                if path.exists() and not overwrite:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                codes = torch.from_numpy(row_codes(cell))
                if codes.shape[0] > config.n_codebooks or (codes.numel() and not (
                        0 <= int(codes.min()) and int(codes.max()) < config.codebook_size)):
                    raise ValueError(f"its codes (shape {tuple(codes.shape)}, values {int(codes.min())} to "
                                     f"{int(codes.max())}) do not fit this model ({config.n_codebooks} codebooks "
                                     f"of {config.codebook_size}); give the model that made them with --model")
                if codes.shape[-1] == 0:
                    raise ValueError("it holds no frames")
                waiting.append((path, codes[None].to(model.device), extra["n_samples"]))
                if sum(c.shape[-1] for _, c, _ in waiting) >= batch_frames:
                    flush()
            except Exception as problem:
                summary.failed.append((id, first_line(problem)))
                bar.update(1)
        flush()
    if wanted is not None:
        summary.failed += [(id, "no row has this id") for id in sorted(wanted - found)]
    return summary
