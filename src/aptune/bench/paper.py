"""The paper's RoBERTa-base numbers (its Tables 2 and 4, Figure 3) that our tables print beside
ours (docs/protocol.md#scales).

Efficiency columns are % of FT on SST-2 (A100). Compare ratios, never absolute times.
"""

from __future__ import annotations

# job name -> SST-2, MNLI, TTA %, train memory %, inference time %, inference memory %
TABLE2 = {
    "ft": (94.8, 87.6, 100.0, 100.0, 100.0, 100.0),
    "lora": (95.1, 87.5, 2137.0, 60.5, 100.0, 100.0),
    "lora-prune": (93.0, 84.0, 5128.3, 60.5, 38.0, 75.1),
    "cofi": (94.5, 87.3, 1495.3, 168.5, 38.6, 79.2),
    "cofi-lora": (91.9, 84.2, 6534.6, 141.4, 39.4, 82.3),
    "apt": (94.5, 86.4, 592.1, 70.1, 41.3, 78.1),
}

# job name -> SQuAD v2 dev F1 (Table 2's SQuAD column; the paper runs no CoFi method on SQuAD)
TABLE2_SQUAD = {"ft": 82.9, "lora": 83.0, "lora-prune": 79.2, "apt": 81.8}

# T5-base rows of Table 2: job name -> SST-2, MNLI, CNN/DM ROUGE-1 / 2 / L, TTA %, train memory %,
# inference time %, inference memory % (efficiency on SST-2: 128 input + 2 teacher-forced tokens).
# The paper's "RL" is most likely ROUGE-Lsum (summary-level, newline-split sentences).
TABLE2_T5 = {
    "ft": (95.2, 87.1, (42.1, 20.3, 39.4), 100.0, 100.0, 100.0, 100.0),
    "lora": (95.0, 87.0, (38.7, 17.2, 36.0), 255.5, 62.0, 100.0, 100.0),
    "lora-prune": (92.3, 80.9, (36.7, 15.7, 33.9), 4523.5, 62.0, 47.1, 73.4),
    "apt": (95.0, 87.0, (38.6, 17.0, 35.8), 484.7, 73.9, 74.6, 81.5),
}

# job name -> SST-2, MNLI, train time (TTA) %, train memory %  (Table 4)
TABLE4 = {
    "apt": (94.5, 86.4, 592.1, 70.1),
    "apt-no-ap": (94.4, 87.5, 82.6, 62.2),
    "apt-uniform": (94.3, 84.7, 609.8, 65.0),
    "apt-no-at": (93.2, 84.5, 684.9, 64.4),
    "apt-no-ds": (92.9, 85.3, 483.1, 61.9),
}

# Figure 3 baseline points (paper Figure 3): inference speed-up and memory reduction vs FT.
FIGURE3_BASELINES = {
    "lora-prune": (2.629, 1 / 0.751),
    "cofi": (2.592, 1 / 0.792),
    "cofi-lora": (2.537, 1 / 0.823),
}
