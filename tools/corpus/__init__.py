"""Tokenizing a corpus to Parquet shards of codes and back. Its modules, each importing only those above it here:

- `sources`: the inputs (folders, one file, lists of paths, Hugging Face datasets), read as `encode` reads them;
- `shards`: the shard format and the manifest;
- `tokenizer`: codes of many signals through the model's public `encode_many`;
- `local`: the local engine (reader processes, encoder processes);
- `ray_engine`: the Ray engine (an optional extra);
- `tokenize`: the run itself, on either engine;
- `detokenize`: the way back, rows of codes to audio files.
"""

from .detokenize import DetokenizeSummary, detokenize
from .sources import Corpus
from .tokenize import Summary, tokenize

__all__ = ["Corpus", "DetokenizeSummary", "Summary", "detokenize", "tokenize"]
