"""How every command and script of the package runs: a user's mistake is one line on stderr and status 1, a usage
error one line and status 2, Ctrl-C or SIGTERM one line and status 130; anything else is a bug and fails loudly."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable, NoReturn

# What a user's mistake raises (a bad path, file, model or argument): one line, never a traceback. Anything else is
# a bug and fails loudly.
USER_ERRORS = (ValueError, OSError, ImportError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`dac-codec encode: error: ...`) instead of the usage and a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_command(command: Callable[[], int]) -> int:
    """Runs a command, turning a user error into one line on stderr (status 1) and Ctrl-C or SIGTERM into one
    line (status 130): what the command leaves half done is removed on the way out, and what it finished is kept."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted: what was finished is kept; run the same command again to go on", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name: how a command, or a long job for one failed item,
    reports it."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
