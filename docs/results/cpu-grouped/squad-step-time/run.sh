#!/bin/bash
# SQuAD FT step time with random and length-grouped batches, one after the other, alone.
set -e
cd /work/main && . .venv/bin/activate && export HF_HUB_OFFLINE=1
for g in no-group-by-length group-by-length; do
  aptune train --recipe cpu/squad_v2-ft --data-dir ../shared/data --max-train-samples 600 \
    --unanswerable-ratio 1.0 --unanswerable-source edited-question --epochs 1 --eval-every 1000 \
    --max-eval-samples 100 --$g --output-dir /work/results/squad-gbl/$g --overwrite --quiet
done
