"""The house, read from the code's own imports: the root is the model (the Hub payload and the package's
`__init__.py`), its modules import each other only relatively and one way; the tools and training stand on the
model's public API (no `chunking` or `streaming`, no private name, no `model.encoder` and the like); and no modules
of the package import each other in a circle."""

import ast
import subprocess
from pathlib import Path

from dac_codec.tools.convert import MODEL_FILES

from conftest import ROOT

# The model, in the order its modules may import each other: each only those before it.
MODEL = ("configuration_dac.py", "streaming.py", "dac_layers.py", "chunking.py", "audio_io.py", "modeling_dac.py")
PROJECT_FILES = {"README.md", "config.json", "requirements.txt", "pyproject.toml", "constraints.txt", "pytest.ini",
                 "requirements-cli.txt", "requirements-datasets.txt", "requirements-ray.txt", "requirements-test.txt",
                 "requirements-reference.txt", "requirements-evaluate.txt", "requirements-pesq.txt",
                 "requirements-train.txt", "requirements-onnx.txt", ".gitignore",
                 "__init__.py", *MODEL}
FOLDERS = {"tools", "training", "evaluation", "export", "tests", "scripts", "benchmarks", "samples", ".fig", ".ci"}
BUILT = {".venv", "build", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache", "__pycache__", "out"}  # made here
SUBPACKAGES = ("tools", "training", "evaluation", "export")  # what the package adds to the model
OUTSIDE = (*SUBPACKAGES, "scripts")  # what must stand on the model's public API
INTERNALS = {"encoder", "decoder", "quantizer", "geometry"}  # the model's parts: attributes tools must not touch


def package_modules() -> dict[str, Path]:
    """Module name (dac_codec.x.y) -> file, for the package's every module."""
    modules = {}
    for path in [*ROOT.glob("*.py"), *(p for folder in SUBPACKAGES for p in ROOT.glob(f"{folder}/**/*.py"))]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        modules[".".join(("dac_codec", *parts))] = path
    return modules


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of a module, at any depth of its code,
    relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def tracked_at_root() -> tuple[set[str], set[str]]:
    """(files, folders) at the root that the checkout holds: git's, where it is one, else all but what builds make."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        paths = [Path(line) for line in listed.stdout.splitlines()]
        return {p.name for p in paths if len(p.parts) == 1}, {p.parts[0] for p in paths if len(p.parts) > 1}
    files = {p.name for p in ROOT.iterdir() if p.is_file()}
    return files, {p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in BUILT and "egg-info" not in p.name}


def test_the_root_is_the_model():
    files, folders = tracked_at_root()
    assert {name for name in files if name.endswith(".py")} == {*MODEL, "__init__.py"}
    assert files <= PROJECT_FILES, sorted(files - PROJECT_FILES)
    assert folders <= FOLDERS, sorted(folders - FOLDERS)
    assert MODEL_FILES == tuple(sorted(MODEL))  # the Hub payload: the root's modules but __init__.py


def test_model_modules_import_each_other_relatively_and_one_way():
    for index, file in enumerate(MODEL):
        for module, _, line in imports(f"dac_codec.{file[:-3]}", ROOT / file):
            local = module.removeprefix("dac_codec.")
            assert f"{local}.py" not in MODEL or module.startswith("dac_codec."), f"{file}:{line} imports {module}"
            if module.startswith("dac_codec"):
                assert f"{local}.py" in MODEL[:index], f"{file}:{line}: {module} is not below it"


def test_tools_stand_on_the_models_public_api():
    for name, path in package_modules().items():
        if not name.startswith(tuple(f"dac_codec.{folder}" for folder in SUBPACKAGES)):
            continue
        for module, names, line in imports(name, path):
            assert module not in ("dac_codec.chunking", "dac_codec.streaming"), f"{path}:{line} imports {module}"
            if module.startswith("dac_codec"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path}:{line} imports the private {private} of {module}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS:
                raise AssertionError(f"{path}:{node.lineno} touches the model's internal `.{node.attr}`")
    for path in ROOT.glob("scripts/*.py"):
        text = path.read_text()
        assert "sys.path" not in text and "sys.modules" not in text, path
    for path in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob(".fig/*.py")]:  # users of the model like any other
        text = path.read_text()
        assert "dac_codec.chunking" not in text and "dac_codec.streaming" not in text, path


def test_no_modules_import_each_other_in_a_circle():
    modules = package_modules()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in imports(name, path):
            targets = [module, *(f"{module}.{n}" for n in names)]  # `from . import corpus` names a module
            edges[name] |= {t for t in targets if t in modules and t != name and not name.startswith(f"{t}.")}

    def circle(start: str) -> list[str]:
        path, seen = [start], set()

        def walk(node: str) -> bool:
            for target in sorted(edges[node]):
                if target == start:
                    return True
                if target not in seen:
                    seen.add(target)
                    path.append(target)
                    if walk(target):
                        return True
                    path.pop()
            return False

        return path if walk(start) else []

    for name in modules:
        assert not circle(name), " -> ".join([*circle(name), name])


def test_the_root_loads_as_a_hub_repo():
    """config.json at the root: the 44.1 kHz release's configuration, with the auto_map of every built folder."""
    from transformers import AutoConfig

    from dac_codec import DacConfig
    from dac_codec.tools.convert import AUTO_MAP

    config = AutoConfig.from_pretrained(ROOT, trust_remote_code=True)
    assert type(config).__name__ == "DacConfig" and config.auto_map == AUTO_MAP
    assert config.architecture() == DacConfig.from_preset("44khz").architecture()


def test_the_old_paths_of_moved_modules_name_the_new_ones():
    """`dac_codec.corpus` and the other modules that sat at the root before `tools/`: each of the old ways to import
    one is an ImportError naming where it is now, and that path imports."""
    import importlib

    from dac_codec import _MOVED

    for old, new in _MOVED.items():
        assert not (ROOT / f"{old}.py").exists()
        importlib.import_module(f"dac_codec.{new}")
        for statement in (f"import dac_codec.{old}", f"from dac_codec import {old}", f"from dac_codec.{old} import x"):
            try:
                exec(statement, {})
            except ImportError as error:
                assert str(error) == f"dac_codec.{old} is now dac_codec.{new}", statement
            else:
                raise AssertionError(f"{statement} imported")
