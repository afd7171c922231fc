"""The lead-3 baseline of CNN/DailyMail: the first three sentences of each article as its summary,
scored by the same ROUGE as the models (aptune.tasks.rouge), on the validation and test rows:

    python bench/lead3.py --data-dir ../shared/data --out docs/results/cpu-cnn_dailymail

writes lead3.json and lead3.md there. A model that does not beat it has not learned to summarise
beyond copying the lead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aptune.errors import AptuneError
from aptune.tasks import get_task, resolve_data_dir
from aptune.tasks.rouge import ROUGE_KEYS, lead, rouge_scores


def lead_scores(data_dir: str | None, split: str, n: int, max_rows: int | None) -> dict:
    task = get_task("cnn_dailymail")
    loaded = task.load(split, resolve_data_dir(data_dir), max_rows, 0)
    predictions = [lead(e.article, n) for e in loaded.examples]
    return {"split": split, "rows": len(predictions), "data": loaded.report.summary(),
            **rouge_scores(predictions, [e.summary for e in loaded.examples])}


def markdown(results: list[dict], n: int) -> str:
    lines = [f"| split | rows | {' | '.join(ROUGE_KEYS)} |", "|---|---|" + "---|" * len(ROUGE_KEYS)]
    lines += [f"| {r['split']} | {r['rows']} | " + " | ".join(f"{100 * r[k]:.2f}" for k in ROUGE_KEYS) + " |"
              for r in results]
    title = f"Lead-{n} on CNN/DailyMail (ROUGE F-measure x 100, rouge-score with stemming)"
    return title + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder laid out like shared/data")
    parser.add_argument("--splits", default="dev,test", help="comma-separated: dev (validation), test")
    parser.add_argument("--sentences", type=int, default=3, help="leading sentences kept")
    parser.add_argument("--max-rows", type=int, default=None, help="a fixed subset (seed 0) per split")
    parser.add_argument("--out", default=None, help="folder for lead3.json and lead3.md")
    args = parser.parse_args(argv)
    try:
        results = [lead_scores(args.data_dir, s.strip(), args.sentences, args.max_rows)
                   for s in args.splits.split(",") if s.strip()]
    except AptuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = markdown(results, args.sentences)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, body in (("lead3.json", json.dumps(results, indent=2)), ("lead3.md", text + "\n")):
            tmp = out / (name + ".tmp")
            tmp.write_text(body)
            os.replace(tmp, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
