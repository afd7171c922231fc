"""Write the local GLUE data as "your own data" files, with label names instead of ids:

    python bench/glue_as_files.py --data-dir ../shared/data --out data/own

sst2-train.csv, sst2-dev.csv   sentence,label  (negative/positive), every row SST-2's loader keeps
sst2-sample-1000.csv           1,000 training sentences (seed 0), for predict against eval
mnli-pairs.jsonl               premise, hypothesis, label (entailment/neutral/contradiction):
                               3,000 rows of the local MNLI training sample (seed 0)

The rows are the ones aptune's own SST-2 and MNLI loaders read, in file order, so that
`--task text-classification` on them sees exactly what `--task sst2` sees.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from aptune.errors import AptuneError
from aptune.tasks import get_task, resolve_data_dir


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows):,} rows)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    parser.add_argument("--out", default="data/own", help="where the files go")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data_dir = resolve_data_dir(args.data_dir)
        sst2, mnli = get_task("sst2"), get_task("mnli")
        splits = {s: sst2.load(s, data_dir, None, 0).examples for s in ("train", "dev")}
        pairs = mnli.load("train", data_dir, 3000, 0, {"strip_trailing_periods": False}).examples
    except AptuneError as err:
        print(f"error: {err.problem}\nfix: {err.fix}", file=sys.stderr)
        return 2
    names = sst2.id2label
    for split, examples in splits.items():
        write_csv(out / f"sst2-{split}.csv", ["sentence", "label"],
                  [[e.texts[0], names[e.label]] for e in examples])
    sample = np.sort(np.random.default_rng(0).permutation(len(splits["train"]))[:1000])
    write_csv(out / "sst2-sample-1000.csv", ["sentence", "label"],
              [[splits["train"][i].texts[0], names[splits["train"][i].label]] for i in sample])
    with open(out / "mnli-pairs.jsonl", "w", encoding="utf-8") as fh:
        for e in pairs:
            fh.write(json.dumps({"premise": e.texts[0], "hypothesis": e.texts[1],
                                 "label": mnli.id2label[e.label]}) + "\n")
    print(f"wrote {out / 'mnli-pairs.jsonl'} ({len(pairs):,} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
