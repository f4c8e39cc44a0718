"""Codes of many signals, as `encode` gives them, for either engine: the model's `encode_many` on as many signals
as fill its batches; a signal that cannot be encoded is its own error, not the batch's."""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

from ..command import first_line
from .shards import Row
from .sources import Input

Report = Callable[[int, float], None]  # progress: (files done, audio seconds done)


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` says that memory ran out (the device's, or the machine's): a reason to try less at once."""
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


class Tokenizer:
    """int16 codes of model-rate signals as `encode` gives them. Gather `pack_frames` frames of signals for one
    call (0: one signal a call, as on the CPU, where each is encoded by `encode` itself)."""

    def __init__(self, model, n_quantizers: int):
        self.model, self.n_quantizers = model, n_quantizers
        self.pack_frames = model.pack_frames("encode")

    def __call__(self, signals: list[np.ndarray]) -> list[Union[np.ndarray, str]]:
        """The codes (n_quantizers, frames) of each signal (t,) at the model's rate, or the line that says why it
        could not be encoded."""
        model, rate = self.model, self.model.sampling_rate
        if len(signals) > 1:
            try:
                return [out.codes[0].to(torch.int16).cpu().numpy()
                        for out in model.encode_many(signals, rate, self.n_quantizers)]
            except (ValueError, MemoryError, RuntimeError) as error:  # then each alone, with its own error
                if not (isinstance(error, ValueError) or out_of_memory(error)):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        results = []
        for x in signals:
            try:
                results.append(model.encode(x, rate, self.n_quantizers).codes[0].to(torch.int16).cpu().numpy())
            except (ValueError, MemoryError, RuntimeError) as error:
                if not (isinstance(error, ValueError) or out_of_memory(error)):
                    raise
                results.append(first_line(error))
        return results

    def fill(self, waiting: list[tuple[Row, Input]], report: Report) -> None:
        """Fills each row with its input's description and codes (or why it could not be encoded), reports them
        and empties `waiting`."""
        if not waiting:
            return
        for (row, read), codes in zip(waiting, self([read.samples for _, read in waiting])):
            row.fill(read)
            if isinstance(codes, str):
                row.error = codes
            else:
                row.codes, row.n_samples = codes, read.samples.shape[-1]
        report(len(waiting), sum(read.samples.shape[-1] for _, read in waiting) / self.model.sampling_rate)
        waiting.clear()
