"""Fine-tunes DAC on a folder of audio: `dac-codec finetune`, as a script of this repo.

    python scripts/finetune.py --model descript/dac_44khz --data my_audio/ --output runs/mine --steps 20000

The options and behaviour are `dac-codec finetune --help`'s (`dac_codec.training.finetune`).
"""

import sys

from dac_codec.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
