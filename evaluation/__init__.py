"""How good a model is on your audio: `evaluate` (the `dac-codec evaluate` command) encodes and decodes a corpus with
each model at each bitrate, scores every reconstruction (`metrics`), and writes the table, the summary and a report
page."""

from .evaluate import Summary, evaluate, parse_bitrates
from .metrics import DEFAULT_MEASURES, MEASURES

__all__ = ["DEFAULT_MEASURES", "MEASURES", "Summary", "evaluate", "parse_bitrates"]
