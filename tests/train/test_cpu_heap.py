"""The `aptune` command's heap setting (aptune/cpu_heap.py): the mmap threshold fixed with torch's
huge pages asked for, the user's own choices kept, and the per-step trim only on the default heap.
Each case runs in a fresh interpreter: the setting is process-wide and must precede torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
from aptune import cpu_heap
cpu_heap.fix_mmap_threshold()
import torch
from aptune.train.memory import trims_each_step
print(json.dumps({"state": cpu_heap.state, "fixed": cpu_heap.fixed,
                  "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                  "trims": trims_each_step(torch.device("cpu"))}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("APTUNE_CPU_HEAP", "MALLOC_MMAP_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_threshold_is_fixed_with_huge_pages_and_no_per_step_trim():
    got = probe()
    assert got == {"state": "glibc mmap threshold fixed at 64 KiB, huge pages", "fixed": True,
                   "thp": "1", "trims": False}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_users_choices_are_kept():
    assert probe(THP_MEM_ALLOC_ENABLE="0")["state"] == "glibc mmap threshold fixed at 64 KiB"
    own = probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert own["fixed"] and own["thp"] is None and not own["trims"]
    default = probe(APTUNE_CPU_HEAP="default")
    assert default == {"state": "glibc default (dynamic mmap threshold)", "fixed": False, "thp": None,
                       "trims": True}
