"""The Descript Audio Codec (DAC) as a package: `from dac_codec import DacModel` and the `dac-codec` command.

The modules beside this file are also the remote code of the Hub repos, which load them without this file. Names
are imported when first used, so that `dac-codec --help` and the reader processes of a corpus do not pay for torch
and transformers before they need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configuration_dac import DacConfig
    from .dac_file import DacFile
    from .loading import load_model
    from .modeling_dac import DacEncoderOutput, DacModel, DacOutput

_HOMES = {"DacConfig": "configuration_dac", "DacFile": "dac_file", "load_model": "loading",
          "DacEncoderOutput": "modeling_dac", "DacModel": "modeling_dac", "DacOutput": "modeling_dac"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
