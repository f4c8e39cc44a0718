"""Model folders that `AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads, from any checkpoint that
`load_model` reads (an original release `.pth`, a transformers `DacModel` folder or Hub id, ours).

    python scripts/convert_checkpoint.py --checkpoint weights_44khz_8kbps_0.0.1.pth --output-dir dac_44khz

A folder holds config.json (with `auto_map`), model.safetensors, the model's modules (`MODEL_FILES`: the Hub
payload), requirements.txt and a README.md model card.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Optional

from ..modeling_dac import DacModel
from .loading import load_model

PACKAGE = Path(__file__).resolve().parents[1]  # the package's root: the model's modules, and in a clone the repo
AUTO_MAP = {"AutoConfig": "configuration_dac.DacConfig", "AutoModel": "modeling_dac.DacModel"}
# The Hub payload, stated once: every module at the package's root but its __init__.py (which no Hub repo needs).
MODEL_FILES = tuple(sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"))
RUNTIME_FILES = (*MODEL_FILES, "requirements.txt")


def write_model_folder(model: DacModel, output_dir: str | os.PathLike, readme: Optional[str] = None) -> Path:
    """Writes config.json (with auto_map), model.safetensors, the model's modules, requirements.txt and README.md
    (`readme`, or this repo's README where there is one)."""
    output_dir = Path(output_dir)
    model.config.auto_map = AUTO_MAP
    model.config.architectures = ["DacModel"]
    model.save_pretrained(output_dir)
    for name in RUNTIME_FILES:
        if (PACKAGE / name).is_file():
            shutil.copy(PACKAGE / name, output_dir / name)
    if readme is None and (PACKAGE / "README.md").is_file():
        readme = (PACKAGE / "README.md").read_text()
    if readme is not None:
        (output_dir / "README.md").write_text(readme)
    return output_dir


def convert(checkpoint: str, output_dir: str | os.PathLike, sampling_rate: Optional[int] = None) -> Path:
    """The folder of `checkpoint` (see `load_model`) at `output_dir`."""
    return write_model_folder(load_model(checkpoint, sampling_rate), output_dir)


def main(argv: Optional[list[str]] = None) -> int:
    from .command import ArgumentParser, run_command

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth, or transformers DacModel folder / Hub id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sampling-rate", type=int, help="only for checkpoints that do not record it")
    args = parser.parse_args(argv)

    def run() -> int:
        folder = convert(args.checkpoint, args.output_dir, args.sampling_rate)
        print(f"Wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")
        return 0

    return run_command(run)
