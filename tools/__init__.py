"""What a clone or `pip install` adds to the model at the package's root, standing on its public API: the command
line (`cli`), `.dac` files and the original's `compress` / `decompress` (`dac_file`, `loudness`, `compress`), loading
and converting checkpoints (`loading`, `convert`), tokenizing a corpus (`corpus`), and what they share (`files`,
`processes`; `random_weights` for tests, benchmarks and figures). None of it is shipped to the Hub."""
