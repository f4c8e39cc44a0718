"""Imports this checkout as the package `dac_codec`, and names the files that make up the model.

The root modules are also Hugging Face remote code: they import each other relatively, so they work as the package
that `pip install .` makes and as the flat folder of a Hub repo.
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
    """The `modeling_dac` module (DacModel, DacConfig, ...) of this checkout, as the package `dac_codec`: the
    installed package where it is this checkout (`scripts/setup_env.sh` installs it editable), as users import it;
    otherwise a namespace package over the repo root."""
    if "dac_codec" not in sys.modules:
        try:
            package = importlib.import_module("dac_codec")
            if Path(package.__file__).resolve().parent != ROOT:
                raise ImportError(f"dac_codec is installed from {package.__file__}, not from this checkout")
        except ImportError:
            for name in [m for m in sys.modules if m == "dac_codec" or m.startswith("dac_codec.")]:
                del sys.modules[name]
            package = types.ModuleType("dac_codec")
            package.__path__ = [str(ROOT)]
            sys.modules["dac_codec"] = package
    return importlib.import_module("dac_codec.modeling_dac")
