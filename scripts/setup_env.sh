#!/usr/bin/env bash
# Creates .venv with the runtime needs, the command line and this package; with --test also pytest and the
# reference package (a test dependency only).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# Install the CPU build of torch first: an unpinned torch resolves to a multi-GB CUDA build.
$PIP install -q -c constraints.txt torch==2.13.0
if [[ "${1:-}" == "--test" ]]; then
  $PIP install -q -c constraints.txt -r requirements-test.txt
  $PIP install -q -c constraints.txt --no-deps -r requirements-reference.txt
  # torchaudio's binaries are CUDA builds that fail to load beside CPU torch; without them it uses pure Python.
  rm -f .venv/lib/python*/site-packages/torchaudio/lib/*.so
  # The report page's browser test drives Debian's chromium (Playwright's own browsers are a download we do not need).
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null \
      || echo "setup_env: could not install chromium; the browser test skips"
  fi
  # The transformers.js client and browser page (export/web) from the npm registry, where Node is; onnxruntime-node's
  # optional CUDA binaries are a download from elsewhere that the CPU does not need.
  if command -v npm >/dev/null; then
    (cd export/web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || echo "setup_env: npm ci in export/web failed; the JavaScript tests fail"
  fi
else
  $PIP install -q -c constraints.txt -r requirements.txt -r requirements-cli.txt
fi
# This repo as the package `dac_codec`, editable, with the `dac-codec` command (its needs are installed above).
$PIP install -q -c constraints.txt --no-deps -e .
