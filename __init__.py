"""The Descript Audio Codec (DAC) as a package: `from dac_codec import DacModel` and the `dac-codec` command.

The modules beside this file are the model, and a Hub repo's remote code: every one of them but this file is
shipped to the Hub. What the package adds to the model lives in `tools` (command line, `.dac` files, loading and
conversion, corpora) and `training` (the objective and fine-tuning). Names are imported when first used, so that
`dac-codec --help` and the reader processes of a corpus do not pay for torch and transformers before they need them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configuration_dac import DacConfig
    from .modeling_dac import DacEncoderOutput, DacModel, DacOutput
    from .tools.compress import compress, decompress
    from .tools.dac_file import DacFile
    from .tools.loading import load_model

__all__ = ["DacConfig", "DacEncoderOutput", "DacFile", "DacModel", "DacOutput", "compress", "decompress",
           "load_model"]
_HOMES = {"DacConfig": ".configuration_dac", "DacEncoderOutput": ".modeling_dac", "DacModel": ".modeling_dac",
          "DacOutput": ".modeling_dac", "DacFile": ".tools.dac_file", "compress": ".tools.compress",
          "decompress": ".tools.compress", "load_model": ".tools.loading"}
# Modules that sat beside the model before the tools had a package of their own, and where they are now.
_MOVED = {"cli": "tools.cli", "corpus": "tools.corpus", "corpus_ray": "tools.corpus.ray_engine",
          "dac_file": "tools.dac_file", "files": "tools.files", "loading": "tools.loading",
          "loudness": "tools.loudness", "processes": "tools.processes"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _MovedModules(importlib.abc.MetaPathFinder):
    """Asked last, for a module no other finder has: an old path of a moved module is an error naming the new one."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in _MOVED:
            raise ImportError(f"{fullname} is now {__name__}.{_MOVED[name]}", name=fullname)
        return None


sys.meta_path.append(_MovedModules())
