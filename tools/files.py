"""Files in and out of the tools: which inputs a command takes, where each one's output goes, and writing an output
so that it appears whole or not at all.

The output rule, for every command that writes a file per input (`encode`, `decode`, `detokenize`): an input's
output is its path relative to the folder it was found in (or its name, for a file given directly) with the
output's suffix in place of its own, under the output folder. Two inputs that would write one output (the same
stem with other suffixes, the same relative path under two inputs, names equal up to case, which are one file on
case-insensitive file systems) are refused before any work, naming them: nothing is skipped or overwritten
silently.

An output is written under a hidden temporary name beside it (`.NAME.partial`, a suffix no command reads as input)
and renamed when complete; an interrupted command leaves no output half written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import soundfile

AUDIO_SUFFIXES = frozenset({f".{name.lower()}" for name in soundfile.available_formats()} | {".oga", ".opus"})
PARTIAL = ".partial"


def find_inputs(inputs: Sequence[str], suffixes: Iterable[str]) -> list[tuple[Path, Path]]:
    """(file, its path relative to the folder it was found in, or its name) for every input: each given file, and
    every file with one of `suffixes` under each given folder (recursively, sorted).

    Raises:
        FileNotFoundError: A given input that does not exist.
    """
    suffixes = {s.lower() for s in suffixes}
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            paths = sorted(p for p in given.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
            found += [(path, path.relative_to(given)) for path in paths]
        elif given.is_file():
            found.append((given, Path(given.name)))
        else:
            raise FileNotFoundError(f"No such file or folder: {os.fspath(given)!r}.")
    return found


def plan_outputs(inputs: Sequence[tuple[Path, Path]], output: Path, suffix: str) -> list[Path]:
    """The output of each (input, its relative path) under `output` by the module's rule, in order.

    Raises:
        ValueError: Two inputs would write one output, or an output would overwrite an input; the message names
            them and the output.
    """
    check_output_folder(output)
    planned = [output / relative.with_suffix(suffix) for _, relative in inputs]
    given = {os.path.realpath(path): path for path, _ in inputs}
    first: dict[str, int] = {}
    clashes = []
    for index, path in enumerate(planned):
        if os.path.realpath(path) in given:
            raise ValueError(f"{given[os.path.realpath(path)]} would be overwritten by the output of "
                             f"{inputs[index][0]}; give another --output.")
        key = os.path.normcase(os.fspath(path)).casefold()
        if key in first:
            clashes.append((inputs[first[key]][0], inputs[index][0], planned[first[key]]))
        else:
            first[key] = index
    if clashes:
        a, b, path = clashes[0]
        more = f" (and {len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
        raise ValueError(f"{a} and {b} would both write {path}{more}; an output is the input's relative path with "
                         f"{suffix}, so rename one or give them separate --output folders.")
    return planned


def check_output_folder(output: Path) -> None:
    """Refuses an output folder that is a file."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {os.fspath(output)!r} is a file; give a folder (it is made if missing).")


def partial_path(output: Path) -> Path:
    """The hidden temporary name an output is written under."""
    return output.with_name(f".{output.name}{PARTIAL}")


def write_atomically(output: Path, write: Callable[[str], None]) -> None:
    """`write(path)` to `partial_path(output)`, then renamed to `output`: an interrupted run leaves no output that
    a rerun would take for done (the temporary is removed, unless the process is killed outright)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(output)
    try:
        write(str(temporary))
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()
