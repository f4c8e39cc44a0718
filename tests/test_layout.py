"""The root modules import one way (each only the ones before it in LAYERS), only relatively (remote code has no
package), and the ones the model needs are exactly the files a Hub repo ships."""

import re

import dac_package

MODEL = ("configuration_dac.py", "streaming.py", "dac_layers.py", "chunking.py", "audio_io.py", "modeling_dac.py")
# what the package adds for the command line; not shipped to the Hub
LAYERS = (*MODEL, "files.py", "processes.py", "loading.py", "dac_file.py", "loudness.py", "corpus.py", "corpus_ray.py", "cli.py", "__init__.py")


def relative_imports(name):
    return {f"{m}.py" for m in re.findall(r"^from \.(\w+) import", (dac_package.ROOT / name).read_text(), re.M)}


def test_root_modules_import_one_way():
    assert sorted(p.name for p in dac_package.ROOT.glob("*.py")) == sorted(LAYERS)
    for index, name in enumerate(LAYERS):
        assert relative_imports(name) <= set(LAYERS[:index]), name


def test_root_modules_import_each_other_only_relatively():
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(n[:-3] for n in LAYERS if n != '__init__.py')})\b", re.M)
    for name in LAYERS:
        assert not pattern.search((dac_package.ROOT / name).read_text()), name


def test_shipped_files_are_the_model_modules():
    assert sorted(dac_package.MODEL_FILES) == sorted(MODEL)
