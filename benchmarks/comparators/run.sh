#!/usr/bin/env bash
# Creates the comparators' own virtual environment (benchmarks/comparators/.venv, from PyPI, once),
# exports the IU gold reports and each convention's phrases with the project's Python, and runs
# medspaCy and negspacy over them. benchmarks/extract.py --quality then reads the results from
# benchmarks/out/comparators/. See benchmarks/comparators/README.md.
#
#   benchmarks/comparators/run.sh            # PYTHON=.venv/bin/python, BASE_PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
BASE_PYTHON=${BASE_PYTHON:-python3}
HERE=benchmarks/comparators
OUT=benchmarks/out/comparators

if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$BASE_PYTHON" -m venv "$HERE/.venv"
fi
"$HERE/.venv/bin/pip" install --quiet -r "$HERE/requirements.txt" \
  || { echo "comparators: pip could not install $HERE/requirements.txt (see the error above)" >&2; exit 1; }
PYTHONPATH=$PWD "$PYTHON" "$HERE/export.py" "$OUT/input.json"
for engine in medspacy negspacy; do
  "$HERE/.venv/bin/python" "$HERE/run.py" "$engine" "$OUT/input.json" "$OUT/$engine.json"
done
