"""Processes die with their parent: `tokenize` killed outright, or stopped with Ctrl-C (SIGINT to the whole group,
as a terminal sends it) or SIGTERM, leaves no process running and no partial output, and a stopped command says so
in one line; fine-tuning stopped with Ctrl-C writes a checkpoint at the step's end and resumes from it.

Each command runs in a session of its own, so that every process it started can be found (and, if the test fails,
killed) by that session's id."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from conftest import one_line, tone

TIMEOUT = 180  # seconds any command here may take


def session(leader: int) -> set[int]:
    """The processes of the session that `leader` started (it included, while it runs)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            if int(fields[3]) == leader and fields[0] != "Z":  # the session id, and not a zombie
                found.add(int(entry.name))
    return found


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def started(tmp_path):
    """Starts a command in its own session; on the way out, kills whatever of that session is left."""
    processes = []

    def start(*args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
        # bytes, not text: universal newlines would turn the progress bars' carriage returns into lines
        process = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=stderr,
                                   start_new_session=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        processes.append(process)
        return process

    yield start
    for process in processes:
        for pid in session(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight clips of 1 to 2 s."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(8):
        soundfile.write(root / f"clip{i}.wav", tone(1.0 + 0.15 * i, 16000, 1, i), 16000)
    return root


def tokenize_command(clips: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return ["-m", "dac_codec.tools.cli", "tokenize", str(clips), "--output", str(output), "--model", str(model),
            "--shard-size", "1", *extra]


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """Sixty clips of 3 s: more work than the command can do in the seconds its processes have to end."""
    root = tmp_path_factory.mktemp("long")
    for i in range(60):
        soundfile.write(root / f"clip{i:02d}.wav", tone(3.0, 16000, 1, i), 16000)
    return root


@pytest.mark.parametrize("layout", [["--readers", "1"], ["--workers", "2", "--readers", "1"]],
                         ids=["reader processes", "encoder processes"])
def test_killed_tokenize_leaves_no_process(layout, tree, long_corpus, tmp_path, started):
    """SIGKILL gives the command no chance to stop anyone: its encoders and readers must go by themselves, at once,
    though work remains (a reader would wait for work forever, an encoder do the rest)."""
    output = tmp_path / "tokens"
    process = started(*tokenize_command(long_corpus, output, tree / "model", *layout))
    wait_for(lambda: any(output.glob("part-*.parquet")), "a first shard")
    assert len(session(process.pid)) >= 3, "the command and its children"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    wait_for(lambda: not session(process.pid), "the encoders and readers to end", timeout=5)
    assert len(list(output.glob("part-*.parquet"))) < 60


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_a_stopped_tokenize_says_so_in_one_line_and_leaves_nothing_half_done(how, tree, clips, tmp_path, started):
    output = tmp_path / "tokens"
    layout = ["--workers", "2", "--readers", "1"] if how == "Ctrl-C" else ["--readers", "1"]
    process = started(*tokenize_command(clips, output, tree / "model", *layout))
    wait_for(lambda: any(output.glob("part-*.parquet")), "a first shard")
    if how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # as a terminal sends it: to every process of the group
    else:
        os.kill(process.pid, signal.SIGTERM)
    err = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 130, err
    assert one_line(err).startswith("interrupted: what was finished is kept"), err
    wait_for(lambda: not session(process.pid), "every process of the command to end", timeout=30)
    assert not list(output.glob("*.partial")) and not list(output.glob(".*"))
    done = sorted(p.name for p in output.glob("part-*.parquet"))
    assert 1 <= len(done) < 8
    if how == "Ctrl-C":  # and what was finished is kept
        rerun = subprocess.run([sys.executable, *tokenize_command(clips, output, tree / "model", "--readers", "0")],
                               capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{len(done)} already done" in rerun.stderr


def test_ctrl_c_in_finetune_saves_the_step_and_resumes(tree, clips, tmp_path, started):
    script = Path(__file__).resolve().parents[1] / "scripts" / "finetune.py"
    command = [script, "--model", tree / "model", "--data", clips, "--output", tmp_path / "run", "--batch-size", "1",
               "--duration", "0.2", "--save-every", "1000"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        process = started(*command, "--steps", "1000", stderr=err)
        wait_for(lambda: b"| 2/1000" in log.read_bytes(), "two steps done")  # tqdm's bar
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    err = log.read_bytes().decode()
    assert process.returncode == 130, err
    assert one_line(err).startswith("interrupted:"), err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]  # nothing half written
    rerun = subprocess.run([sys.executable, *map(str, command), "--steps", "1"], capture_output=True, text=True,
                           timeout=TIMEOUT, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    step = int(rerun.stderr.split("resumed from ")[1].split(" at step ")[1].split()[0])
    assert step >= 2  # the steps done before Ctrl-C were kept
