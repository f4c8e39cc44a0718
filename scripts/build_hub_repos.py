"""Builds the Hugging Face Hub repository of each released DAC model, and uploads it with --push-to-hub.

    python scripts/build_hub_repos.py --checkpoint-dir weights/ --output-dir out/hub [--push-to-hub]

An entry point of `dac_codec.tools.hub`, whose docstring gives the options and the release procedure.
"""

import sys

from dac_codec.tools.hub import main

if __name__ == "__main__":
    sys.exit(main())
