"""Converts a DAC checkpoint into a folder that `AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads.

    python scripts/convert_checkpoint.py --checkpoint weights_44khz_8kbps_0.0.1.pth --output-dir dac_44khz
    python scripts/convert_checkpoint.py --checkpoint descript/dac_44khz --output-dir dac_44khz

An entry point of `dac_codec.tools.convert`, which takes an original release checkpoint (.pth), a transformers
`DacModel` checkpoint (a folder or Hub id) or one of ours.
"""

import sys

from dac_codec.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())
