"""How much of a training epoch is padding, with random batches and with --group-by-length.

Tokenises a recipe's training rows exactly as `aptune train` does, draws one epoch of batches
both ways (the training loader, seed from the recipe) and counts the tokens the model sees
(rows x the batch's longest row) against the real ones. No model runs. Writes JSON and Markdown.

Usage: python bench/padding.py OUT --recipe cpu/squad_v2-ft [--recipe cpu/sst2-ft] [--data-dir D]
       [--set key=value ...]   (e.g. --set max_train_samples=10000)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aptune.bench.harness import parse_settings
from aptune.config import TrainConfig, build_config
from aptune.pipeline import load_data
from aptune.train.data import make_loader


def epoch_tokens(loader) -> tuple[int, int, int]:
    """(batches, tokens seen = sum of rows x longest row, real tokens) over one epoch."""
    batches = seen = real = 0
    for batch in loader:
        mask = batch["attention_mask"]  # (rows, longest)
        batches, seen, real = batches + 1, seen + mask.numel(), real + int(mask.sum())
    return batches, seen, real


def measure(recipe: str, data_dir: str | None, overrides: dict) -> dict:
    cfg = build_config(TrainConfig, recipe, {**overrides, "data_dir": data_dir})
    data = load_data(cfg, say=lambda _: None)
    row = {"recipe": recipe, "task": cfg.task, "rows": len(data.train_ds), "batch_size": cfg.batch_size,
           "max_length": data.max_length}
    for name, grouped in (("random", False), ("grouped", True)):
        loader = make_loader(data.train_ds, data.tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed,
                             group_by_length=grouped)
        batches, seen, real = epoch_tokens(loader)
        row[name] = {"batches": batches, "tokens_seen": seen, "real_tokens": real,
                     "padding_share": 1 - real / seen, "mean_batch_length": seen / len(data.train_ds)}
    row["tokens_ratio"] = row["grouped"]["tokens_seen"] / row["random"]["tokens_seen"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | rows | batch | max length | padding, random batches | padding, grouped | "
             "tokens seen, grouped / random |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        random_pad, grouped_pad = r["random"]["padding_share"], r["grouped"]["padding_share"]
        lines.append(f"| {r['recipe']} | {r['rows']:,} | {r['batch_size']} | {r['max_length']} | "
                     f"{100 * random_pad:.1f}% | {100 * grouped_pad:.1f}% | {r['tokens_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipe", action="append", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = [measure(r, args.data_dir, parse_settings(args.set)) for r in args.recipe]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "padding.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "padding.md").write_text(markdown(rows))
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
