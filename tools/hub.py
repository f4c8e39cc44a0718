"""Builds the Hugging Face Hub repository of each released DAC model, and uploads it with --push-to-hub.

    python scripts/build_hub_repos.py --checkpoint-dir weights/ --output-dir out/hub
    python scripts/build_hub_repos.py --checkpoint-dir weights/ --output-dir out/hub --push-to-hub
    python scripts/build_hub_repos.py --variants 44khz --source 44khz=descript/dac_44khz --output-dir out/hub

For each variant (16khz, 24khz, 44khz, 44khz_16kbps) it writes OUTPUT_DIR/VARIANT/ with exactly what the Hub repo
holds: config.json (with auto_map), model.safetensors, the four model modules, requirements.txt, a README.md model
card for that variant and the figures `.fig/*.png` it shows; with --onnx also onnx/, the graphs of `dac-codec export`
(whole-signal, fp16 and step graphs) for ONNX Runtime and transformers.js, with the step graphs' streaming
section in config.json. The card is this repo's README.md with the variant's
repo id in the usage snippet, a header with its numbers computed from its config (sample rate, hop, frame rate,
codebooks, bitrate), the variant's name among the tags, and without what only a clone of this repo can run (the
quick-start commands, the "Converting weights" and "Development" sections, and anything between
`<!-- repo-only -->` and `<!-- /repo-only -->`). Every image the card shows must be a `.fig/*.png` of this repo.

Sources: --checkpoint-dir holds the original release files under their release names (weights_16khz_8kbps_0.0.5.pth,
weights_24khz_8kbps_0.0.4.pth, weights_44khz_8kbps_0.0.1.pth, weights_44khz_16kbps_1.0.0.pth); `--source
VARIANT=PATH_OR_HUB_ID` takes a variant from elsewhere instead: a .pth, or a transformers `DacModel` folder or Hub id
(e.g. 44khz=descript/dac_44khz). Each converted model must have its variant's architecture, or the build fails.

Release procedure:
  1. Run the tests (`.venv/bin/python -m pytest -q tests`) and redraw the figure if decoding changed
     (`.venv/bin/python .fig/make_chunking_figure.py`); commit both.
  2. Download the four original checkpoints from https://github.com/descriptinc/descript-audio-codec/releases
     (tags 0.0.5, 0.0.4, 0.0.1, 1.0.0) into one folder under the names above.
  3. Build: `.venv/bin/python scripts/build_hub_repos.py --checkpoint-dir weights/ --output-dir out/hub`.
     Read out/hub/*/README.md, and check a folder offline, e.g.
     `HF_HUB_OFFLINE=1 .venv/bin/python scripts/codec.py --model out/hub/44khz --input speech.wav`.
  4. Log in (`hf auth login`, or set HF_TOKEN to a token with write access to the organisation of --repo-prefix),
     then run the build command again with --push-to-hub. It checks the token before building, builds every
     variant before uploading any, then creates each repo if missing and uploads its folder in one commit, which
     also deletes the files of an earlier upload that the folder no longer holds.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from ..configuration_dac import DacConfig
from .command import ArgumentParser
from .convert import PACKAGE as ROOT  # a clone's root: the README, the figures and the model's modules
from .convert import RUNTIME_FILES, write_model_folder
from .loading import load_model

FIGURES = ROOT / ".fig"
RELEASE_FILES = {  # variant (a DacConfig preset) -> the original release's checkpoint
    "16khz": "weights_16khz_8kbps_0.0.5.pth",
    "24khz": "weights_24khz_8kbps_0.0.4.pth",
    "44khz": "weights_44khz_8kbps_0.0.1.pth",
    "44khz_16kbps": "weights_44khz_16kbps_1.0.0.pth",
}
DEFAULT_REPO_PREFIX = "dac-codec/dac-"
USAGE_PLACEHOLDER = "path/or/hub-id"
# What a clone of this repo has and a Hub repo does not: such parts of the README stay out of the cards.
REPO_ONLY_SECTIONS = ("Converting weights", "Development")
REPO_ONLY_PATH = re.compile(r"(?<![\w/.-])(scripts|tests|benchmarks|\.venv|\.ci)/")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)|<img\s[^>]*?src\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def _number(value: float, digits: int = 2) -> str:
    """86.1328125 -> "86.13", 50.0 -> "50"."""
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def variant_summary(config) -> str:
    """One sentence of the variant's numbers, all computed from its config."""
    bits = math.log2(config.codebook_size)
    return (
        f"{_number(config.sampling_rate / 1000)} kHz mono audio; hop {config.hop_length} samples, so a frame "
        f"rate of {_number(config.frame_rate)} Hz; {config.n_codebooks} codebooks of {config.codebook_size} "
        f"entries ({_number(bits)} bits each): {_number(config.bitrate / 1000)} kbps with all of them (fewer "
        "with `n_quantizers`)."
    )


def image_paths(markdown: str) -> list[str]:
    """The targets of the Markdown and HTML images in `markdown`, URL-decoded."""
    return [unquote(m[1] or m[2]) for m in IMAGE.finditer(markdown)]


def _strip_repo_only(body: str) -> str:
    """The README body without the sections, fenced blocks and marked spans that only a clone of the repo can use."""
    kept, fence, skip_level, marked = [], None, None, False
    for line in body.splitlines(keepends=True):
        stripped = line.strip()
        if fence is None and stripped in ("<!-- repo-only -->", "<!-- /repo-only -->"):
            marked = stripped == "<!-- repo-only -->"
            continue
        heading = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line) if fence is None else None
        if heading:
            level = len(heading[1])
            if skip_level is not None and level <= skip_level:
                skip_level = None
            if skip_level is None and heading[2] in REPO_ONLY_SECTIONS:
                skip_level = level
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = [line]
            continue
        if fence is not None:
            fence.append(line)
            if stripped.startswith(fence[0].strip()[:3]) and stripped.strip("`~") == "":
                block = "".join(fence)
                fence = None
                if not (marked or skip_level is not None or REPO_ONLY_PATH.search(block)):
                    kept.append(block)
            continue
        if not (marked or skip_level is not None):
            kept.append(line)
    if fence is not None:
        raise ValueError("README.md has an unclosed ``` code block.")
    if marked:
        raise ValueError("README.md has a <!-- repo-only --> without its <!-- /repo-only -->.")
    return re.sub(r"\n{3,}", "\n\n", "".join(kept))


def render_card(readme: str, config, variant: str, repo_id: str, weights: str) -> str:
    """The model card of one variant, made from the repo's README.md.

    Args:
        readme: The text of README.md, YAML front matter first.
        config: The variant's `DacConfig`; the header's numbers come from it.
        variant: The preset name, added to the tags.
        repo_id: The variant's Hub repo, which replaces "path/or/hub-id" in the usage snippet.
        weights: Where the weights come from, for the header.

    Raises:
        ValueError: If the README lacks front matter, a title or the usage placeholder, or if what remains names
            files that a Hub repo does not hold or images that are not in `.fig/`.
    """
    from huggingface_hub import ModelCard

    card = ModelCard(readme)
    if not card.data.to_dict():
        raise ValueError("README.md has no YAML front matter (license, tags, ...) to keep in the cards.")
    tags = list(card.data.tags or [])
    card.data.tags = tags if variant in tags else [*tags, variant]
    body = _strip_repo_only(card.text)
    if USAGE_PLACEHOLDER not in body:
        raise ValueError(f"README.md's usage snippet no longer loads {USAGE_PLACEHOLDER!r}: nothing to put the "
                         f"repo id in. Update render_card in {Path(__file__).name} along with the README.")
    body = body.replace(USAGE_PLACEHOLDER, repo_id)
    title = re.search(r"^# .*$", body, flags=re.MULTILINE)
    if title is None:
        raise ValueError("README.md has no '# ' title to put the variant's header under.")
    requirements = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    header = (
        f"\n\n**`{repo_id}`: the `{variant}` model.** {variant_summary(config)} Weights: {weights}.\n\n"
        "```bash\npip install " + " ".join(f'"{r}"' for r in requirements) + "  # requirements.txt\n```"
    )
    body = body[: title.end()] + header + body[title.end():]
    leftover = [line for line in body.splitlines() if REPO_ONLY_PATH.search(line)]
    if leftover:
        raise ValueError(f"The card would name files that the Hub repo does not hold: {leftover[0].strip()!r}. "
                         "Put such README parts between <!-- repo-only --> and <!-- /repo-only -->.")
    figures = {f".fig/{path.name}" for path in FIGURES.glob("*.png")}
    for path in image_paths(body):
        if not path.startswith(("http://", "https://")) and path.removeprefix("./") not in figures:
            raise ValueError(f"The card shows the image {path!r}, which is not one of this repo's .fig/*.png "
                             f"({sorted(figures) or 'none'}); images must be .fig/NAME.png, relative.")
    card.text = body
    return str(card)


ONNX_FILES = tuple(f"onnx/{name}.onnx" for name in (
    "encoder_model", "encoder_model_fp16", "decoder_model", "decoder_model_fp16", "encoder_step", "decoder_step"))


def expected_files(onnx: bool = False) -> list[str]:
    """The files of every built folder, relative to it; with `onnx`, the exported graphs too."""
    return sorted([*RUNTIME_FILES, "config.json", "model.safetensors", "README.md",
                   *(f".fig/{path.name}" for path in FIGURES.glob("*.png")), *(ONNX_FILES if onnx else ())])


def check_architecture(config, variant: str) -> None:
    preset = DacConfig.from_preset(variant).architecture()
    wrong = [f"{k} {v!r} (expected {preset[k]!r})" for k, v in config.architecture().items() if v != preset[k]]
    if wrong:
        raise ValueError(f"The checkpoint for {variant!r} is not that model: " + "; ".join(wrong) + ".")


def prepare_folder(folder: Path) -> None:
    """An empty `folder`: a previous build there (it has config.json) is replaced; anything else is left alone."""
    if folder.exists():
        if folder.is_dir() and (not any(folder.iterdir()) or (folder / "config.json").is_file()):
            shutil.rmtree(folder)
        else:
            raise ValueError(f"{folder} exists and is not an earlier build (no config.json): move it away first.")
    folder.mkdir(parents=True)


def build_variant(variant: str, source: str, output_dir: Path, repo_id: str, onnx: bool = False) -> Path:
    """Writes OUTPUT_DIR/VARIANT with exactly the files of the variant's Hub repo; returns the folder. With `onnx`,
    also the graphs of `dac-codec export` in onnx/, their streaming section in config.json."""
    model = load_model(source)
    check_architecture(model.config, variant)
    if Path(source).name == RELEASE_FILES[variant]:
        weights = f"`{Path(source).name}` of the original release (MIT), converted to safetensors"
    elif Path(source).is_file():
        weights = f"`{Path(source).name}`, a checkpoint in the original release's format, converted"
    else:
        weights = f"the transformers `DacModel` checkpoint `{source}`, converted"
    card = render_card((ROOT / "README.md").read_text(), model.config, variant, repo_id, weights)
    folder = output_dir / variant
    prepare_folder(folder)
    if onnx:
        from ..export.onnx import export_graphs

        model.config.streaming = export_graphs(model, folder / "onnx")
    write_model_folder(model, folder, readme=card)
    for figure in sorted(FIGURES.glob("*.png")):
        (folder / ".fig").mkdir(exist_ok=True)
        shutil.copy(figure, folder / ".fig" / figure.name)
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert written == expected_files(onnx), f"{folder} holds {written}, expected {expected_files(onnx)}"
    return folder


def hub_api():
    """An authenticated `HfApi`, or a clear exit: no token, offline, or the Hub unreachable or refusing it."""
    from huggingface_hub import HfApi, get_token, is_offline_mode

    token = get_token()
    if not token:
        sys.exit("error: --push-to-hub needs a Hugging Face token with write access: run `hf auth login` "
                 "or set HF_TOKEN. Nothing was built or uploaded.")
    if is_offline_mode():
        sys.exit("error: --push-to-hub cannot upload in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is "
                 "set): unset it. Nothing was built or uploaded.")
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except Exception as error:  # no network, DNS, proxy, or a revoked token: say so without a traceback
        sys.exit(f"error: could not reach the Hugging Face Hub with your token ({type(error).__name__}: "
                 f"{str(error).splitlines()[0] if str(error) else ''}). Nothing was built or uploaded.")
    print(f"Uploading as {user.get('name', '?')}.")
    return api


def push(api, folder: Path, repo_id: str, variant: str, private: bool) -> str:
    """Creates `repo_id` if missing and makes it hold exactly `folder`, in one commit; returns the commit URL."""
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True, text=True).stdout.strip()
    message = f"DAC {variant}" + (f", built from {revision}" if revision else "")
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, commit_message=message,
                                   delete_patterns="*")  # remove what an earlier upload had and the folder has not
    except Exception as error:  # network or permission errors: the message, not a traceback
        sys.exit(f"error: uploading {folder} to {repo_id} failed ({type(error).__name__}: "
                 f"{str(error).splitlines()[0] if str(error) else ''}).")
    return commit.commit_url


def parse_sources(args: argparse.Namespace) -> dict[str, str]:
    """The source of each requested variant; fails before any conversion if one is missing."""
    sources = {}
    for item in args.source:
        variant, _, source = item.partition("=")
        if variant not in RELEASE_FILES or not source:
            raise ValueError(f"--source takes VARIANT=PATH_OR_HUB_ID with VARIANT one of {list(RELEASE_FILES)}, "
                             f"got {item!r}.")
        sources[variant] = source
    variants = args.variants or list(RELEASE_FILES)
    missing = []
    for variant in variants:
        if variant in sources:
            continue
        path = Path(args.checkpoint_dir or ".") / RELEASE_FILES[variant]
        if args.checkpoint_dir and path.is_file():
            sources[variant] = str(path)
        else:
            missing.append(f"{variant}: {path}")
    if missing:
        raise ValueError("No checkpoint for " + ", ".join(missing) + ". Give --checkpoint-dir holding the release "
                         "files, --source VARIANT=..., or --variants to build fewer.")
    return {variant: sources[variant] for variant in variants}


def main(argv: Optional[list[str]] = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", help="folder with the original release .pth files, under their names")
    parser.add_argument("--source", action="append", default=[], metavar="VARIANT=PATH_OR_HUB_ID",
                        help="a variant's checkpoint from elsewhere: a .pth, or a transformers DacModel folder or "
                             "Hub id; repeatable")
    parser.add_argument("--variants", nargs="+", choices=list(RELEASE_FILES), help="build only these (default: all)")
    parser.add_argument("--output-dir", required=True, help="a folder per variant is written here")
    parser.add_argument("--repo-prefix", default=DEFAULT_REPO_PREFIX,
                        help=f"repo id = prefix + variant (default {DEFAULT_REPO_PREFIX!r})")
    parser.add_argument("--push-to-hub", action="store_true", help="upload each folder to its repo")
    parser.add_argument("--private", action="store_true", help="create missing repos as private")
    parser.add_argument("--onnx", action="store_true",
                        help="add the ONNX graphs of `dac-codec export` in onnx/ (needs pip install 'dac-codec[onnx]')")
    args = parser.parse_args(argv)

    try:
        sources = parse_sources(args)
    except ValueError as error:
        parser.error(str(error))
    if args.onnx:
        from ..export.onnx import check_installed

        try:
            check_installed()
        except ValueError as error:
            parser.error(str(error))
    api = hub_api() if args.push_to_hub else None  # before any work: fail fast without a token or network
    folders = {}
    for variant, source in sources.items():  # all built before any upload: a failed build uploads nothing
        repo_id = args.repo_prefix + variant
        try:
            folders[variant] = build_variant(variant, source, Path(args.output_dir), repo_id, args.onnx)
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"error: {variant}: {error}")
        print(f"{variant}: built {folders[variant]} for {repo_id} from {source}")
    if api is not None:
        for variant, folder in folders.items():
            print(f"{variant}: uploaded {push(api, folder, args.repo_prefix + variant, variant, args.private)}")


if __name__ == "__main__":
    main()
