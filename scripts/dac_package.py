"""Imports the repo-root modules as the package `dac_codec`, and names the files that make up the model.

The root modules are Hugging Face remote code: they import each other relatively and have no package of their own.
Scripts and tests reach them through this namespace package, as transformers' loader does through its module cache.
"""

import importlib
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_FILES = ("configuration_dac.py", "modeling_dac.py")  # what config.json's auto_map names


def _model_files() -> tuple[str, ...]:
    """The entry files and every root module they import, relatively and transitively: what a Hub repo ships."""
    files, todo = [], list(ENTRY_FILES)
    while todo:
        name = todo.pop(0)
        if name not in files:
            files.append(name)
            source = (ROOT / name).read_text()
            todo += [f"{module}.py" for module in re.findall(r"^from \.(\w+) import", source, flags=re.MULTILINE)]
    return tuple(files)


MODEL_FILES = _model_files()


def load():
    """The `modeling_dac` module (DacModel, DacConfig, ...)."""
    if "dac_codec" not in sys.modules:
        package = types.ModuleType("dac_codec")
        package.__path__ = [str(ROOT)]
        sys.modules["dac_codec"] = package
    return importlib.import_module("dac_codec.modeling_dac")
