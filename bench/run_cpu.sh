#!/usr/bin/env bash
# The cpu-scale benchmark runs behind the README's Results, in the order the issue asks for them,
# then a copy of their tables, plots and results.json under docs/results/.
# Each command resumes: finished jobs are reused, so rerun this script after an interruption.
# Usage: bash bench/run_cpu.sh [DATA_DIR]   (default ../shared/data; results in results/cpu*)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"

# Table 2 on SST-2 at cpu scale (the 8k-sentence subset of recipes/bench.yaml): about 1.6 h.
aptune bench --suite table2 --tasks sst2 --scale cpu --run cpu --data-dir "$data"

# The ablations and the sparsity sweep on SST-2 at a smaller fixed scale, so that they fit the
# same 3-hour session: 1,000 training sentences, evaluation every 50 steps, 3 inference rounds,
# in their own folder (the suites share its FT, LoRA and APT runs). APT's sweep points first.
small=(--scale cpu --run cpu-small --data-dir "$data" --set max_train_samples=1000 --set eval_every=50
       --inference-rounds 3)
aptune bench --suite sweep --tasks sst2 "${small[@]}" --only ft,apt,apt-s40,apt-s80,apt-s95
aptune bench --suite ablations --tasks sst2 "${small[@]}"
aptune bench --suite sweep --tasks sst2 "${small[@]}" \
  --only ft,apt,apt-s40,apt-s80,apt-s95,lora-prune-s40,lora-prune,lora-prune-s80

# Table 2 on MNLI at a smaller fixed scale (2,000 training pairs, 1,000 dev rows; see
# recipes/bench.yaml): about 1.3 h. Its report covers SST-2 and MNLI, whose jobs share results/cpu.
aptune bench --suite table2 --tasks mnli --scale cpu --run cpu --data-dir "$data"

# Training memory under a fixed glibc mmap threshold: the 1k FT and APT jobs retrained (~10 min).
python bench/train_memory_allocator.py results/cpu-small --jobs ft,apt

# Diagnosis of APT's MNLI result: the same job without self-distillation (~18 min).
aptune train --recipe results/cpu/configs/mnli-apt.yaml --no-distill --output-dir results/diag/mnli-apt-no-ds \
  --overwrite

publish() {  # results/<run> -> docs/results/<run>: the reports, not the models
  local run="$1"; shift
  mkdir -p "docs/results/$run/plots"
  for file in "$@" results.json; do cp "results/$run/$file" "docs/results/$run/"; done
  cp "results/$run"/plots/*.png "docs/results/$run/plots/"
}
publish cpu table.md
publish cpu-small ablations.md sweep.md
cp results/cpu-small/allocator/train_memory_allocator.{md,json} docs/results/cpu-small/
