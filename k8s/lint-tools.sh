#!/usr/bin/env bash
# The manifest and image linters (the k8s-lint extra: checkov, hadolint) in a virtual environment
# of their own, .venv-k8s-lint: checkov pins packaging, networkx, cachetools and python-dateutil
# below what the dev extra's packages need, so it cannot share .venv. tests/test_k8s.py finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-k8s-lint
mapfile -t tools < <(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["k8s-lint"]))')
.venv-k8s-lint/bin/pip install --quiet "${tools[@]}"
