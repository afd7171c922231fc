#!/usr/bin/env bash
# The README's test command: install with the test and export extras, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,export
export APTUNE_DATA_DIR="${APTUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
# Two worker processes (pytest-xdist), each test file on one worker so that its fixtures are built
# once. APTUNE_TEST_WORKERS overrides the count (0 runs everything in this process).
python -m pytest -q -p no:cacheprovider -n "${APTUNE_TEST_WORKERS:-2}" --dist loadfile "$@"
