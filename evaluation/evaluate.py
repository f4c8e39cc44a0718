"""`dac-codec evaluate`: every input of a corpus (what `tokenize` takes) encoded and decoded by each model at each
bitrate with the package's own `encode` and `decode`, and each reconstruction measured against the input at the
model's rate (metrics.py); then the table, the summary (summary.py) and the report page (report.py).

    DIR/settings.json       the models (name, architecture, weights' hash), bitrates and measures; a rerun must match
    DIR/parts/NNNNNN.parquet one input's rows, written whole or not at all: a rerun skips the inputs already done
    DIR/metrics.parquet     every (input, model, bitrate): the scores, the bitrate, the `error` column
    DIR/metrics.csv         the same, for spreadsheets
    DIR/summary.json        per model and bitrate: mean, median and a bootstrap 95% interval of each score, codebook
                            usage; with two models or more, each one's paired difference from the first
    DIR/report.html         the page to read, look at and listen to (beside it: report/, its images and audio)
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..configuration_dac import check_int
from ..tools.command import first_line
from ..tools.corpus.sources import Corpus, InputReader
from ..tools.files import check_output_folder, write_atomically
from ..tools.loading import load_model, model_identity, resolve_device
from ..tools.processes import run_workers, start_child
from .metrics import DEFAULT_MEASURES, check_measures
from .report import write_report
from .roundtrip import roundtrip
from .summary import write_summary

FORMAT = "dac-codec evaluation 1"
MIN_SECONDS = 0.25  # PESQ, STOI and the widest STFT window want at least this much audio


@dataclass
class Summary:
    """What a run did: inputs measured now, inputs done by an earlier run, and the inputs that failed, with why."""

    measured: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    output: Optional[Path] = None


def bitrate_label(n_quantizers: Optional[int]) -> str:
    return "all" if n_quantizers is None else str(n_quantizers)


def parse_bitrates(given: str) -> list[Optional[int]]:
    """"1,2,4,all" -> [1, 2, 4, None]: codebooks per bitrate, None for all of them.

    Raises:
        ValueError: A value that is neither a positive whole number nor "all", or one given twice.
    """
    chosen: list[Optional[int]] = []
    for part in given.split(","):
        part = part.strip()
        if part == "all":
            value = None
        elif part.isdigit() and int(part) > 0:
            value = int(part)
        else:
            raise ValueError(f"--n-quantizers takes numbers of codebooks and 'all', comma-separated; got {part!r}.")
        if value in chosen:
            raise ValueError(f"--n-quantizers names {part!r} twice.")
        chosen.append(value)
    return chosen


class Evaluator:
    """One input's rows: each model encodes and decodes it at each bitrate, and each measure scores the pair."""

    def __init__(self, models: Sequence[tuple[str, Any]], bitrates: Sequence[Optional[int]], measures: list):
        self.models, self.bitrates = list(models), list(bitrates)
        self.measures = [(m.name, m.columns, m.make()) for m in measures]
        self.columns = [c for _, columns, _ in self.measures for c in columns]
        for _, model in self.models:
            for n in self.bitrates:
                model.check_n_quantizers(n)

    def rows(self, id: str, audio: dict[int, Any]) -> list[dict[str, Any]]:
        """The rows of one input; `audio` maps each model's rate to its `Input` as the reader gives it."""
        rows = []
        for index, (name, model) in enumerate(self.models):
            config = model.config
            read = audio[config.sampling_rate]
            for n in self.bitrates:
                codebooks = config.n_codebooks if n is None else n
                row: dict[str, Any] = {
                    "id": id, "model": name, "model_index": index, "bitrate": bitrate_label(n),
                    "n_quantizers": codebooks,
                    "bitrate_kbps": config.frame_rate * codebooks * math.log2(config.codebook_size) / 1000,
                    "seconds": None, "error": read.error, "code_counts": None,
                    **{c: None for c in self.columns}}
                if read.error is None:
                    try:
                        row.update(self._measure(model, read.samples, n))
                    except ValueError as error:  # what the model or a measure refuses of this input
                        row["error"] = first_line(error)
                rows.append(row)
        return rows

    def _measure(self, model, samples: np.ndarray, n: Optional[int]) -> dict[str, Any]:
        rate = model.config.sampling_rate
        if samples.shape[-1] < MIN_SECONDS * rate:
            raise ValueError(f"{samples.shape[-1] / rate:.3f} s of audio: under the {MIN_SECONDS} s the measures need.")
        codes, audio = roundtrip(model, samples, n)
        counts = [np.bincount(c, minlength=model.config.codebook_size).tolist() for c in codes]
        scores: dict[str, Any] = {"seconds": samples.shape[-1] / rate, "code_counts": counts}
        for _, _, measure in self.measures:
            scores.update(measure(samples, audio, rate))
        return scores


def measure_inputs(evaluator: Evaluator, corpus: Corpus, pending: Sequence[tuple[int, str, Any]], output: Path,
                   report: Callable[[int, float], None]) -> None:
    """Measures each (index, id, reference) of `pending` into its part, reporting (1, seconds of audio) for each."""
    readers = {rate: InputReader(corpus, rate) for rate in {m.config.sampling_rate for _, m in evaluator.models}}
    for index, id, reference in pending:
        rows = evaluator.rows(id, {rate: reader.read(reference) for rate, reader in readers.items()})
        table = pa.Table.from_pylist(rows, schema=schema(evaluator.columns))
        write_atomically(part_path(output, index), lambda p, table=table: pq.write_table(table, p))
        report(1, max((r["seconds"] or 0.0) for r in rows))


def _worker(names: list[str], device: str, threads: int, bitrates: list, measures: list[str], corpus: Corpus,
            output: str, jobs, reports) -> None:
    """One evaluation process: loads the models on its device and measures the inputs it takes from `jobs`."""
    start_child(threads)
    try:
        where, _ = resolve_device(device)
        evaluator = Evaluator([(name, load_model(name).to(where)) for name in names], bitrates,
                              check_measures(measures))
        measure_inputs(evaluator, corpus, iter(jobs.get, None), Path(output),
                       lambda done, seconds: reports.put(("progress", done, seconds)))
    except BaseException as error:
        reports.put(("failed", device, f"{type(error).__name__}: {error}"))
        raise
    reports.put(("done", device, None))


def run_evaluators(names: list[str], devices: list[str], bitrates: list, measures: list[str], corpus: Corpus,
                pending: Sequence[tuple[int, str, Any]], output: Path, report: Callable[[int, float], None]) -> None:
    """A spawned process per device (several for CPU workers, the cores split between them) taking inputs from a
    shared queue; all are stopped if one fails or this process is interrupted. What they finished is kept."""
    context = multiprocessing.get_context("spawn")
    jobs, reports = context.Queue(), context.Queue()
    for job in pending:
        jobs.put(job)
    for _ in devices:
        jobs.put(None)
    cpus = sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // max(1, cpus))
    processes = [context.Process(target=_worker, name=f"dac-codec evaluate {device}",
                                 args=(names, device, threads, bitrates, measures, corpus, str(output), jobs,
                                       reports)) for device in devices]
    run_workers(processes, reports, report, "evaluation")


def settings_of(models: Sequence[tuple[str, Any]], bitrates: Sequence[Optional[int]], measures: list,
                corpus: Corpus) -> dict[str, Any]:
    return {"format": FORMAT, "input": corpus.location,
            "models": [model_identity(model, name) for name, model in models],
            "n_quantizers": [bitrate_label(n) for n in bitrates], "measures": [m.name for m in measures]}


def check_settings(output: Path, settings: dict[str, Any]) -> None:
    """Writes the run's settings, or refuses a folder that an earlier run filled with other settings."""
    path = output / "settings.json"
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not readable settings ({first_line(error)}); give another --output.") from None
        if recorded != settings:
            differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            raise ValueError(f"{output} holds an evaluation with other settings ({', '.join(differ)} differ); give "
                             "the same command to resume it, or another --output.")
        return
    write_atomically(path, lambda p: Path(p).write_text(json.dumps(settings, indent=2)))


ROW_SCHEMA_BASE = [("id", pa.string()), ("model", pa.string()), ("model_index", pa.int32()),
                   ("bitrate", pa.string()), ("n_quantizers", pa.int32()), ("bitrate_kbps", pa.float64()),
                   ("seconds", pa.float64()), ("error", pa.string()), ("code_counts", pa.list_(pa.list_(pa.int64())))]


def schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([*ROW_SCHEMA_BASE, *[(c, pa.float64()) for c in columns]])


def part_path(output: Path, index: int) -> Path:
    return output / "parts" / f"{index:06d}.parquet"


def done_part(path: Path, id: str, expected_rows: int, columns: Sequence[str]) -> bool:
    """Whether a part reads back whole: this input's rows, every one, with this run's columns."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return False
    return (table.num_rows == expected_rows and table.schema.names == schema(columns).names
            and set(table.column("id").to_pylist()) == {id})


def evaluate(source: Union[Corpus, str], output: Union[str, Path], models: Sequence[Union[str, Any]],
             n_quantizers: Sequence[Optional[int]] = (None,), measures: Sequence[str] = DEFAULT_MEASURES,
             device: Optional[str] = None, workers: int = 1, devices: Optional[Sequence[str]] = None,
             progress: bool = True, report: bool = True) -> Summary:
    """Evaluates each model at each bitrate on every input of `source`, into the folder `output` (see the module's
    docstring for what it holds); a rerun of the same call resumes.

    Args:
        source: A `Corpus`, or what `Corpus.open` takes (a folder, an audio file, a list of paths, a dataset).
        output: The folder of results.
        models: Folders, Hub ids or checkpoints, as `load_model` takes them, or loaded models; the first is the
            baseline of the paired differences.
        n_quantizers: Codebooks per bitrate; None for all.
        measures: Names of `metrics.MEASURES`.
        device: Where the models run (default: cuda if available, else cpu).
        workers: Processes on `device`, the inputs shared between them (on the CPU, its cores split too).
        devices: One process on each of these devices instead (e.g. ["cuda:0", "cuda:1"]).

    Raises:
        ValueError: Bad settings, a model that does not load, a missing measure library, or a folder that holds an
            evaluation with other settings.
    """
    from tqdm import tqdm

    corpus = source if isinstance(source, Corpus) else Corpus.open(source)
    output = Path(output)
    check_output_folder(output)
    if not models:
        raise ValueError("Give at least one --model.")
    named = [(m, None) if isinstance(m, str) else (str(m.name_or_path) or f"model {i}", m)
             for i, m in enumerate(models)]
    if len({name for name, _ in named}) != len(named):
        raise ValueError("A model is given twice; give each once.")
    chosen = check_measures(list(measures))
    where, _ = resolve_device(device)
    loaded = [(name, load_model(name) if model is None else model) for name, model in named]
    evaluator = Evaluator(loaded, list(n_quantizers), chosen)
    settings = settings_of(loaded, n_quantizers, chosen, corpus)
    for _, model in loaded:
        model.to(where)
    items = corpus.items()
    output.mkdir(parents=True, exist_ok=True)
    check_settings(output, settings)

    per_input = len(loaded) * len(evaluator.bitrates)
    summary = Summary(output=output)
    pending = []
    for index, (id, reference) in enumerate(items):
        path = part_path(output, index)
        if path.exists() and done_part(path, id, per_input, evaluator.columns):
            summary.already_done += 1
        else:
            pending.append((index, id, reference))
    check_int("workers", workers)
    places = [str(resolve_device(d)[0]) for d in devices] if devices else [str(where)] * workers
    if len(places) > 1 and any(model is not None for _, model in named):
        raise ValueError("Several workers load the models by name: give names, not loaded models.")
    with tqdm(total=len(items), initial=summary.already_done, unit="file", desc="evaluate",
              disable=not progress) as bar:
        seconds = [0.0]

        def report(done: int, audio_seconds: float) -> None:
            seconds[0] += audio_seconds
            bar.set_postfix(audio=f"{seconds[0]:.1f}s")
            bar.update(done)

        if len(places) == 1:
            measure_inputs(evaluator, corpus, pending, output, report)
        else:
            run_evaluators([name for name, _ in loaded], places, list(n_quantizers), [m.name for m in chosen],
                        corpus, pending, output, report)
    summary.measured = len(pending)

    table = pa.concat_tables([pq.read_table(part_path(output, i)) for i in range(len(items))])
    for id, error in zip(table.column("id").to_pylist(), table.column("error").to_pylist()):
        if error is not None and (id, error) not in summary.failed:
            summary.failed.append((id, error))
    pq.write_table(table, output / "metrics.parquet")
    pa_csv.write_csv(table.drop_columns(["code_counts"]), output / "metrics.csv")
    scores = write_summary(table, evaluator.columns, settings, output / "summary.json")
    if report:
        write_report(output, table, scores, settings, corpus, {name: m for name, m in loaded})
    return summary
