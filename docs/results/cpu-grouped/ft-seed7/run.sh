#!/bin/bash
# FT on the bench's SST-2 config (8k sentences, 2 epochs) with random and grouped batches, seed 7, one after the other, alone.
set -e
cd /work/main && . .venv/bin/activate && export HF_HUB_OFFLINE=1
for g in no-group-by-length group-by-length; do
  aptune train --recipe /work/results/cpu-grouped/configs/sst2-ft.yaml --seed 7 --$g \
    --output-dir /work/results/sst2-ft-seed7/$g --overwrite --quiet
done
