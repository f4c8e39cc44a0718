"""Imports the repo-root modules as the package `dac_codec`.

The root modules are Hugging Face remote code: they import each other relatively and have no package of their own.
Scripts and tests reach them through this namespace package, as transformers' loader does through its module cache.
"""

import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("configuration_dac.py", "modeling_dac.py", "dac_layers.py", "chunking.py")


def load():
    """The `modeling_dac` module (DacModel, DacConfig, ...)."""
    if "dac_codec" not in sys.modules:
        package = types.ModuleType("dac_codec")
        package.__path__ = [str(ROOT)]
        sys.modules["dac_codec"] = package
    return importlib.import_module("dac_codec.modeling_dac")
