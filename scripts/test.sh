#!/usr/bin/env bash
# The README's test command: install with the test and export extras, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,export
export APTUNE_DATA_DIR="${APTUNE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
python -m pytest -q -p no:cacheprovider "$@"
