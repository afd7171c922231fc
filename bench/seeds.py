"""Table 2 or Table 4 over seeds: several `aptune bench` folders of one task, side by side.

One bench run is one seed, and on a dev set of a few hundred rows one seed moves a score by about
a point. This reads the runs' results.json (run the same bench with `--set seed=S --run NAME-S`),
lists each run's figures, then each method's mean and sample standard deviation, the paired
difference of two methods (run by run, so that each run's own FT line and machine state cancel),
and, with --against, every method's paired difference to one reference (Table 4's "delta against
APT"). Ratios to FT (TTA, training memory) are taken within each run, as the bench takes them. No
model runs. Writes seeds.json and seeds.md.

Usage: python bench/seeds.py OUT RUN_DIR [RUN_DIR ...] [--suite table2|ablations] [--task sst2]
       [--pair apt,lora-prune] [--against apt]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


SUITES = ("table2", "ablations")


def run_rows(run_dir: Path, task: str, suite: str = "table2") -> dict[str, dict]:
    """Per method of one run: seed, score (%), TTA as a multiple of FT's, memory % of FT, params kept."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; point at a folder that "
                         f"`aptune bench --suite {suite}` wrote.")
    results = json.loads(path.read_text())
    if suite not in results:
        raise SystemExit(f"error: {path} has no {suite} suite (it has: {', '.join(results) or 'none'}); "
                         f"run `aptune bench --suite {suite} --run {run_dir.name}` first.")
    table = results[suite]
    rows = {}
    for key, job in table["jobs"].items():
        job_task, name = key.split("/", 1)
        if job_task != task or job.get("score") is None:
            continue
        relative, tta = job.get("relative") or {}, job.get("tta") or {}
        tta_pct = relative.get("tta_pct") if tta.get("reached") else None
        rows[name] = {"label": job["label"], "seed": table["configs"][key].get("seed"),
                      "score": 100 * job["score"], "tta_x_ft": None if tta_pct is None else tta_pct / 100,
                      "train_memory_pct_ft": relative.get("train_memory_pct"),
                      "params_kept": job["params_kept"], "epochs": table["configs"][key].get("epochs")}
    if "ft" not in rows:
        raise SystemExit(f"error: {run_dir} has no finished {task}/ft job; every ratio here is to FT's.")
    return rows


def mean_sd(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def paired(runs: dict[str, dict[str, dict]], first: str, second: str) -> list[float]:
    """first's score minus second's, run by run, over the runs that have both."""
    return [rows[first]["score"] - rows[second]["score"] for rows in runs.values()
            if first in rows and second in rows]


def summarise(runs: dict[str, dict[str, dict]], pair: tuple[str, str] | None,
              against: str | None = None) -> dict:
    shared = [m for m in next(iter(runs.values())) if all(m in rows for rows in runs.values())]
    methods = ["ft"] + [m for m in shared if m != "ft"]  # FT first: the other TTAs are ratios to it
    summary = {m: {field: mean_sd([rows[m][field] for rows in runs.values()])
                   for field in ("score", "tta_x_ft", "train_memory_pct_ft")} for m in methods}
    result = {"methods": methods, "summary": summary}
    if pair:
        diffs = paired(runs, *pair)
        result["pair"] = {"first": pair[0], "second": pair[1], "differences": diffs,
                          "stats": mean_sd(diffs), "first_ahead": sum(d > 0 for d in diffs),
                          "runs": len(diffs)}
    if against:
        differences = {m: paired(runs, m, against) for m in methods if m != against}
        result["against"] = {"reference": against, "differences": differences,
                             "stats": {m: mean_sd(d) for m, d in differences.items()}}
    return result


def fmt(stat: dict | None, digits: int = 2, unit: str = "") -> str:
    if stat is None:
        return "-"
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{sd}{unit}"


def markdown(runs: dict[str, dict[str, dict]], result: dict, task: str) -> str:
    methods = result["methods"]
    labels = [next(iter(runs.values()))[m]["label"] for m in methods]
    tta_heads = " | ".join(f"{label} TTA" for label in labels[1:])
    lines = [f"## {task}: one row per run (dev score, %; TTA as a multiple of the run's FT)", "",
             "| run | seed | " + " | ".join(labels) + " | " + tta_heads + " |",
             "|---|---:|" + "---:|" * (2 * len(methods) - 1)]
    for name, rows in runs.items():
        scores = " | ".join(f"{rows[m]['score']:.2f}" for m in methods)
        ttas = " | ".join("not reached" if rows[m]["tta_x_ft"] is None else f"{rows[m]['tta_x_ft']:.2f}×"
                          for m in methods[1:])
        lines.append(f"| {name} | {rows['ft']['seed']} | {scores} | {ttas} |")
    lines += ["", "## Mean ± sample standard deviation over the runs", "",
              "| method | dev score | TTA (× FT) | train memory (% of FT) | runs |",
              "|---|---:|---:|---:|---:|"]
    for m, label in zip(methods, labels):
        s = result["summary"][m]
        lines.append(f"| {label} | {fmt(s['score'])} | {fmt(s['tta_x_ft'], unit='×')} | "
                     f"{fmt(s['train_memory_pct_ft'], 1, '%')} | {s['score']['n']} |")
    if "against" in result:
        reference = result["against"]["reference"]
        lines += ["", f"## Paired difference to {reference}, run by run (points)", "",
                  f"| method | {' | '.join(runs)} | mean ± sd |", "|---|" + "---:|" * (len(runs) + 1)]
        for m, label in zip(methods, labels):
            if m == reference:
                continue
            cells = " | ".join(f"{d:+.2f}" for d in result["against"]["differences"][m])
            lines.append(f"| {label} | {cells} | {fmt(result['against']['stats'][m])} |")
    if "pair" in result:
        pair = result["pair"]
        diffs = ", ".join(f"{d:+.2f}" for d in pair["differences"])
        lines += ["", f"Paired difference {pair['first']} − {pair['second']}, run by run: {diffs} "
                  f"(mean {fmt(pair['stats'])}; {pair['first']} ahead in {pair['first_ahead']} "
                  f"of {pair['runs']})."]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+", help="bench run folders (each with results.json)")
    parser.add_argument("--suite", choices=SUITES, default="table2", help="the results.json entry to read")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--pair", default=None, help="two job names: first − second, per run "
                        "(default apt,lora-prune for table2, none for ablations)")
    parser.add_argument("--against", default=None, help="every job's paired difference to this one "
                        "(default apt for ablations, none for table2)")
    args = parser.parse_args()
    pair_arg = args.pair or ("apt,lora-prune" if args.suite == "table2" else None)
    pair = tuple(pair_arg.split(",")) if pair_arg else None
    if pair is not None and len(pair) != 2:
        raise SystemExit(f"error: --pair takes two job names joined by a comma, got {args.pair!r}.")
    against = args.against or ("apt" if args.suite == "ablations" else None)
    runs = {run.name: run_rows(run, args.task, args.suite) for run in args.runs}
    if against and not all(against in rows for rows in runs.values()):
        raise SystemExit(f"error: --against {against}: not a finished {args.task} job in every run.")
    result = summarise(runs, pair, against)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.json").write_text(json.dumps({"task": args.task, "suite": args.suite, "runs": runs,
                                                     **result}, indent=2))
    table = markdown(runs, result, args.task)
    (args.out / "seeds.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
