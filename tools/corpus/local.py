"""The local engine of `tokenize`: reader processes that read inputs ahead of the model (replaced when a decoder
crashes one), and one encoder here or one encoder process per device (or per CPU worker), writing each shard when
complete. Every process started here dies with its parent and leaves Ctrl-C to it."""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from ..loading import load_model, resolve_device
from ..processes import run_workers, spawning, start_child, stop
from .shards import Row, Shard, rows_table, write_shard
from .sources import Corpus, Input, InputReader, file_stamp
from .tokenizer import Report, Tokenizer


def _start_reader(corpus: Corpus, sample_rate: int) -> None:
    global _READER
    start_child(threads=1)
    _READER = InputReader(corpus, sample_rate)


def _read_in_process(reference: Union[str, int]) -> Input:
    return _READER.read(reference)


def _alive() -> bool:
    return True


def _wait(pool: ProcessPoolExecutor, future: Future):
    """`future.result()`, or BrokenProcessPool once a reader of its pool has died. The pool mostly notices on its
    own, but a reader killed while the pool hands it work can leave a future waiting forever (CPython 3.11)."""
    while True:
        try:
            return future.result(timeout=1.0)
        except FutureTimeout:
            manager = pool._executor_manager_thread
            dead = [p for p in (pool._processes or {}).values() if p.exitcode is not None]
            if pool._broken or dead or (manager is not None and not manager.is_alive()):
                raise BrokenProcessPool("a reader process died") from None


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
            return _wait(pool, future)
        except BrokenProcessPool:  # a reader died, on this input or on one read beside it: retry this one alone
            self._replace(pool)
        try:
            pool = self.pool
            return _wait(pool, pool.submit(_read_in_process, reference))
        except BrokenProcessPool:
            self._replace(pool)
        try:  # this input's fault, or can no reader process run here at all?
            pool = self.pool
            _wait(pool, pool.submit(_alive))
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


def tokenize_shards(model, corpus: Corpus, shards: Iterable[Shard], output: Path, n_quantizers: int,
                    readers: int, report: Report) -> None:
    """Tokenizes `shards` with `model`, reading ahead in `readers` processes, writing each shard when complete."""
    tokenizer, rate = Tokenizer(model, n_quantizers), model.sampling_rate
    keyed = (((shard, position), reference) for shard in shards for position, (_, reference) in enumerate(shard.items))
    with Readers(corpus, rate, readers) as pool:
        for shard, group in itertools.groupby(pool.read(keyed, depth=2 * readers + 1), key=lambda kr: kr[0][0]):
            rows = [Row(id) for id, _ in shard.items]
            waiting: list[tuple[Row, Input]] = []  # read, not yet encoded
            for (_, position), read in group:
                if read.error is not None:
                    rows[position].fill(read)
                    report(1, 0.0)
                    continue
                waiting.append((rows[position], read))
                if sum(r.samples.shape[-1] for _, r in waiting) // model.hop_length >= tokenizer.pack_frames:
                    tokenizer.fill(waiting, report)
            tokenizer.fill(waiting, report)
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



def run_encoder_processes(model_name: str, devices: list[str], dtype: str, threads: int, corpus: Corpus,
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
    run_workers(processes, reports, report, "encoder")
