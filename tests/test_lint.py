"""The style guide's checks, in the test command: ruff (pyproject's [tool.ruff]: pycodestyle, pyflakes, bugbear and
import order) over the repo, and mypy over the modules of the package's public API."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# What users call: the model and its config, and the tools' library functions the README documents.
PUBLIC_API = ("__init__.py", "configuration_dac.py", "modeling_dac.py", "audio_io.py", "tools/dac_file.py",
              "tools/compress.py", "tools/loading.py")


def tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.is_file() else shutil.which(name) or name


def test_ruff_finds_nothing():
    done = subprocess.run([tool("ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_public_api_type_checks(tmp_path):
    (tmp_path / "dac_codec").symlink_to(ROOT)  # the checkout under the package's name, as imports name it
    files = [f"dac_codec/{name}" for name in PUBLIC_API]
    done = subprocess.run([tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                           str(tmp_path / "cache"), *files], capture_output=True, text=True, cwd=tmp_path,
                          env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
