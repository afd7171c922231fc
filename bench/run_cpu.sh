#!/usr/bin/env bash
# The cpu-scale benchmark runs behind the README's Results, in the order the issue asks for them.
# Each command resumes: finished jobs are reused, so rerun this script after an interruption.
# Suites share one results folder (--run cpu), so FT, LoRA and APT are trained once per task.
# Usage: bash bench/run_cpu.sh [DATA_DIR]   (default ../shared/data; results in results/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
common=(--scale cpu --run cpu --data-dir "$data")
aptune bench --suite table2 --tasks sst2 "${common[@]}"
aptune bench --suite ablations --tasks sst2 "${common[@]}"
aptune bench --suite sweep --tasks sst2 "${common[@]}" --only apt-s40,apt-s80,apt-s95,lora-prune-s40,lora-prune-s80
aptune bench --suite table2 --tasks mnli "${common[@]}"
