"""Converts a DAC checkpoint into a folder that `AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads.

    python scripts/convert_checkpoint.py --checkpoint weights_44khz_8kbps_0.0.1.pth --output-dir dac_44khz
    python scripts/convert_checkpoint.py --checkpoint descript/dac_44khz --output-dir dac_44khz

Accepts an original release checkpoint (`.pth`: {"state_dict", "metadata": {"kwargs"}}) or a transformers
`DacModel` checkpoint (a folder or Hub id with config.json and model.safetensors).

The checkpoint is read by `dac_codec.loading.load_model` (its key policy: strict, names as transformers' `DacModel`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dac_package  # noqa: E402

modeling = dac_package.load()
DacConfig, DacModel = modeling.DacConfig, modeling.DacModel
PRESETS = sys.modules["dac_codec.configuration_dac"].PRESETS
loading = importlib.import_module("dac_codec.loading")
cli = importlib.import_module("dac_codec.cli")
load_model, model_from_original, original_key = loading.load_model, loading.model_from_original, loading.original_key

AUTO_MAP = {"AutoConfig": "configuration_dac.DacConfig", "AutoModel": "modeling_dac.DacModel"}
RUNTIME_FILES = (*dac_package.MODEL_FILES, "requirements.txt")


def write_model_folder(model: DacModel, output_dir: str | os.PathLike, readme: Optional[str] = None) -> Path:
    """Writes config.json (with auto_map), model.safetensors, the root modules, requirements.txt and README.md."""
    output_dir = Path(output_dir)
    model.config.auto_map = AUTO_MAP
    model.config.architectures = ["DacModel"]
    model.save_pretrained(output_dir)
    for name in RUNTIME_FILES:
        shutil.copy(dac_package.ROOT / name, output_dir / name)
    if readme is None:
        readme = (dac_package.ROOT / "README.md").read_text()
    (output_dir / "README.md").write_text(readme)
    return output_dir


def convert(checkpoint: str, output_dir: str, sampling_rate: Optional[int] = None) -> Path:
    return write_model_folder(load_model(checkpoint, sampling_rate), output_dir)


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth, or transformers DacModel folder / Hub id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sampling-rate", type=int, help="only for checkpoints that do not record it")
    args = parser.parse_args(argv)

    def run() -> int:
        folder = convert(args.checkpoint, args.output_dir, args.sampling_rate)
        print(f"Wrote {folder}: load it with AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")
        return 0

    return cli.run_command(run)


if __name__ == "__main__":
    sys.exit(main())
