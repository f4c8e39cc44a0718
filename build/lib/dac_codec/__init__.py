"""The Descript Audio Codec (DAC) as a package: `from dac_codec import DacModel` and the `dac-codec` command.

The modules beside this file are also the remote code of the Hub repos, which load them without this file."""

from .configuration_dac import DacConfig
from .dac_file import DacFile
from .loading import load_model
from .modeling_dac import DacEncoderOutput, DacModel, DacOutput

__all__ = ["DacConfig", "DacEncoderOutput", "DacFile", "DacModel", "DacOutput", "load_model"]
