"""Markdown tables in the paper's layouts, our figures beside the paper's (paper.py)."""

from __future__ import annotations

from typing import Any

from ..methods import METHODS
from ..methods.base import SIZE_TOLERANCE
from . import paper
from .collect import relative_accuracy
from .suites import ABLATIONS, SEQ2SEQ_METHODS, TABLE2_METHODS

MiB = 2**20
TASK_TITLES = {"sst2": "SST-2", "mnli": "MNLI", "squad_v2": "SQuAD v2", "cnn_dailymail": "CNN/DM"}


def _kept(s: dict | None) -> str:
    """The measured kept share, marked when it is above what the job's --sparsity asked for (a
    CoFi run whose Lagrangian fell short), so that a bigger model's score is not read as a peer's."""
    if s is None:
        return "—"
    text = _pct(100 * s["params_kept"], 2)
    target = s.get("sparsity_target")
    if target and s["params_kept"] > 1 - target + SIZE_TOLERANCE:
        text += f" (asked {100 * (1 - target):.0f}%)"
    return text


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}%"


def _score(s: dict | None) -> str:
    return "—" if s is None else f"{100 * s['score']:.2f}"


def _tta_pct(s: dict | None) -> str:
    if s is None or "tta" not in s:
        return "—"
    if not s["tta"]["reached"]:
        best = s["tta"]["best"]
        return "not reached" + ("" if best is None else f" (best {100 * best:.2f})")
    return _pct(s["relative"]["tta_pct"])


def _rel(s: dict | None, key: str) -> float | None:
    return None if s is None else s.get("relative", {}).get(key)


def _batches(summaries: dict[str, dict], task: str) -> list[str]:
    """The inference batch sizes measured on `task` (e.g. ["32", "128"]), smallest first."""
    found = {bs for s in summaries.values() if s["task"] == task
             for bs in s.get("inference", {}).get("fixed", {})}
    return sorted(found, key=int)


def _fixed_noise(summaries: dict, task: str) -> str:
    """How many fixed batches a round timed, and the largest round-to-round spread among the
    fixed figures (measurements older than the per-round record have neither)."""
    infs = [s["inference"] for s in summaries.values() if s["task"] == task and s.get("inference")]
    spreads = [f["spread"] for inf in infs for f in inf.get("fixed", {}).values() if "spread" in f]
    per_round = next((inf["fixed_batches_per_round"] for inf in infs
                      if "fixed_batches_per_round" in inf), None)
    if not spreads or per_round is None:
        return ""
    return (f" ({per_round} fixed batch{'es' if per_round > 1 else ''} per round; the slowest round "
            f"of a fixed figure is at most {100 * max(spreads):.0f}% slower than its fastest)")


def _inf_seq_len(summaries: dict[str, dict], task: str) -> int:
    """The length of the fixed inference inputs measured on `task`."""
    return next((s["inference"].get("seq_len") for s in summaries.values()
                 if s["task"] == task and s.get("inference")), 128)


def _inf_shape(summaries: dict[str, dict], task: str) -> str:
    """'batch 128 × 128 tokens': the largest measured batch and the inputs' length."""
    sizes = _batches(summaries, task) or ["128"]
    return f"batch {sizes[-1]} × {_inf_seq_len(summaries, task)} tokens"


def _inf_time_pct(summaries: dict[str, dict], s: dict | None) -> float | None:
    """Inf time % of FT at the largest batch measured on the summary's task."""
    if s is None:
        return None
    sizes = _batches(summaries, s["task"])
    return _rel(s, f"inf_time_pct_fixed_{sizes[-1]}") if sizes else None


def efficiency_task(summaries: dict[str, dict], tasks: list[str]) -> str:
    """The paper measures efficiency on SST-2; use it when it ran, else the first task."""
    return "sst2" if "sst2" in tasks and any(k.startswith("sst2/") for k in summaries) else tasks[0]


def table2(summaries: dict[str, dict], tasks: list[str]) -> str:
    eff = efficiency_task(summaries, tasks)
    head = ["Method"]
    score_tasks = ["sst2", "mnli"] + (["squad_v2"] if "squad_v2" in tasks else [])
    for task in score_tasks:
        head += [TASK_TITLES[task] + (" F1" if task == "squad_v2" else ""), "paper"]
    head += ["TTA", "paper", "Train mem", "paper", "Inf time", "paper", "Inf mem", "paper", "Params kept"]
    rows = [head, ["---"] * len(head)]
    for name, label in TABLE2_METHODS:
        p = paper.TABLE2[name]
        e = summaries.get(f"{eff}/{name}")
        row = [label]
        for i, task in enumerate(score_tasks):
            theirs = paper.TABLE2_SQUAD.get(name) if task == "squad_v2" else p[i]
            row += [_score(summaries.get(f"{task}/{name}")), _num(theirs)]
        row += [_tta_pct(e), _pct(p[2]), _pct(_rel(e, "train_memory_pct")), _pct(p[3]),
                _pct(_inf_time_pct(summaries, e)), _pct(p[4]),
                _pct(_rel(e, "inf_memory_pct")), _pct(p[5]),
                _kept(e)]
        rows.append(row)
    notes = [f"Efficiency columns are measured on {TASK_TITLES[eff]}, as % of FT in this run "
             "(lower is better); the paper's are RoBERTa-base on an A100.",
             *_threshold_notes(summaries, tasks),
             f"Inf time = FT throughput / method throughput on fixed {_inf_shape(summaries, eff)} "
             "inputs; Inf mem = weights + the peak memory rise of one forward pass at the same "
             "shape, one fresh process per pass (median of the passes), / FT's."]
    if "squad_v2" in score_tasks:
        notes.append("SQuAD v2 F1 is on the run's dev subset, at the fixed null threshold 0 (the "
                     "paper's column is RoBERTa-base on the full dev set; it ran no CoFi method there).")
    return _render(rows) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _rouge(s: dict | None) -> str:
    """ROUGE-1 / 2 / Lsum of a CNN/DM run, in points."""
    r = (s or {}).get("rouge") or {}
    if not all(k in r for k in ("rouge1", "rouge2", "rougeLsum")):
        return "—"
    return " / ".join(f"{100 * r[k]:.1f}" for k in ("rouge1", "rouge2", "rougeLsum"))


def table2_seq2seq(summaries: dict[str, dict], tasks: list[str]) -> str:
    """The T5 half of Table 2: FT, LoRA, LoRA+Prune and APT on an encoder-decoder, beside the
    paper's T5-base rows (efficiency on SST-2 as the paper measures it)."""
    eff = efficiency_task(summaries, tasks)
    head = ["Method", "SST-2", "paper", "MNLI", "paper", "CNN/DM R1 / R2 / RLsum", "paper", "TTA", "paper",
            "Train mem", "paper", "Inf time", "paper", "Inf mem", "paper", "CNN/DM gen time", "Params kept"]
    rows = [head, ["---"] * len(head)]
    for name in SEQ2SEQ_METHODS:
        p = paper.TABLE2_T5[name]
        e = summaries.get(f"{eff}/{name}")
        cnn = summaries.get(f"cnn_dailymail/{name}")
        rows.append([METHODS[name].label, _score(summaries.get(f"sst2/{name}")), _num(p[0]),
                     _score(summaries.get(f"mnli/{name}")), _num(p[1]),
                     _rouge(cnn), " / ".join(f"{x:.1f}" for x in p[2]),
                     _tta_pct(e), _pct(p[3]), _pct(_rel(e, "train_memory_pct")), _pct(p[4]),
                     _pct(_inf_time_pct(summaries, e)), _pct(p[5]),
                     _pct(_rel(e, "inf_memory_pct")), _pct(p[6]),
                     _pct(_rel(cnn, "inf_time_pct_generate")), _kept(e or cnn)])
    notes = [f"Efficiency columns are measured on {TASK_TITLES[eff]}, as % of FT in this run (lower is "
             "better); the paper's are T5-base on an A100.",
             *_threshold_notes(summaries, tasks),
             f"Inf time = FT throughput / method throughput on fixed {_inf_shape(summaries, eff)} inputs "
             "with 2 teacher-forced decoder tokens (the paper's protocol for T5); Inf mem = weights + the "
             "peak memory rise of one forward pass at the same shape, one fresh process per pass, / FT's.",
             "CNN/DM gen time = FT's greedy-generation tokens per second / the method's, generating a "
             "fixed number of tokens per article on real dev articles (no paper counterpart).",
             "CNN/DM scores are ROUGE with stemming on the run's dev subset; the paper's RL is most likely "
             "ROUGE-Lsum, shown here (the raw table also has sentence-level ROUGE-L)."]
    return _render(rows) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def raw_table(summaries: dict[str, dict], tasks: list[str]) -> str:
    """Our Table 11: the raw figures behind the ratios, per task."""
    out = []
    for task in tasks:
        sizes = _batches(summaries, task) or ["32", "128"]
        head = ["Method", "dev score", "TTA (s)", "TTA step", "train s (total)", "s/step",
                "s/step after p_K (× FT)",
                "train mem (MiB)", *[f"inf {kind}@{bs}" + (" (samples/s)" if i == 0 else "")
                                     for i, (kind, bs) in enumerate(_kinds(sizes))],
                "inf mem (MiB)", "one-process (MiB)", "non-emb params", "wall (min)"]
        if task == "squad_v2":
            head.insert(2, "EM")
        if task == "cnn_dailymail":  # ROUGE-1 is the dev score; then R-2, R-L, R-Lsum, generation
            head[2:2] = ["R-2", "R-L", "R-Lsum"]
            head.insert(head.index("inf mem (MiB)"), "gen (tokens/s)")
        rows = [head, ["---"] * len(head)]
        for s in summaries.values():
            if s["task"] != task:
                continue
            inf = s.get("inference", {})
            tta = s.get("tta", {})
            exact = [f"{100 * s['exact']:.2f}" if s.get("exact") is not None else "—"] \
                if task == "squad_v2" else []
            rouge = [f"{100 * s['rouge'][k]:.2f}" if k in s.get("rouge", {}) else "—"
                     for k in ("rouge2", "rougeL", "rougeLsum")] if task == "cnn_dailymail" else []
            generate = [f"{inf['generate']['tokens_per_s']:,.1f}" if inf.get("generate") else "—"] \
                if task == "cnn_dailymail" else []
            rows.append([
                f"{s['label']} ({s['name']})", _score(s), *exact, *rouge,
                f"{tta['seconds']:,.0f}" if tta.get("reached") else "not reached",
                str(tta.get("step") or "—"), f"{s['total_train_seconds']:,.0f}",
                f"{s['seconds_per_step']:.3f}", _after_pruning(s),
                f"{s['peak_train_memory_bytes'] / MiB:,.0f}",
                *[_thr(inf, kind, bs) for kind, bs in _kinds(sizes)], *generate,
                _mib(inf.get("fresh_memory", {}).get("peak_memory_bytes")),
                _mib(inf.get("peak_memory_bytes")),
                f"{s['params_non_embedding']:,} ({100 * s['params_kept']:.2f}%)",
                f"{s['wall_seconds'] / 60:.1f}" if s.get("wall_seconds") else "—"])
        dev_rows = next((s["inference"]["dev"][sizes[0]]["samples"] for s in summaries.values()
                         if s["task"] == task and s.get("inference", {}).get("dev", {}).get(sizes[0])), None)
        note = (f"\n- Inference: fixed = batch × {_inf_seq_len(summaries, task)} tokens of random ids; "
                f"dev = the real dev set ({dev_rows:,} {'windows' if task == 'squad_v2' else 'rows'}, "
                f"dynamic padding); each the median over rounds in one process"
                f"{_fixed_noise(summaries, task)}. "
                f"Inf mem = weights + forward peak at {_inf_shape(summaries, task)}, one fresh process per "
                f"pass; one-process = the same models measured one after another in one process "
                f"(on CPU, peak RSS there carries allocator history).\n"
                if dev_rows else "")
        out.append(f"### {TASK_TITLES[task]}\n\n" + _render(rows) + note)
    return "\n".join(out)


def _after_pruning(s: dict) -> str:
    """APT's s/step after its last pruning point, and its ratio to FT's whole-run s/step."""
    sec = s.get("seconds_per_step_after_pruning")
    ratio = s.get("relative", {}).get("step_after_pruning_vs_ft")
    if sec is None:
        return "—"
    return f"{sec:.3f} ({ratio:.2f}×)" if ratio is not None else f"{sec:.3f}"


def _kinds(sizes: list[str]) -> list[tuple[str, str]]:
    return [(kind, bs) for kind in ("fixed", "dev") for bs in sizes]


def _mib(value: float | None) -> str:
    return f"{value / MiB:,.0f}" if value else "—"


def _thr(inf: dict, kind: str, bs: str) -> str:
    f = inf.get(kind, {}).get(bs)
    return "—" if f is None else f"{f['samples_per_s']:,.1f}"


def table4(summaries: dict[str, dict], tasks: list[str]) -> str:
    eff = efficiency_task(summaries, tasks)
    rows_spec = [("apt", "APT")] + [(n, lbl) for n, lbl, _ in ABLATIONS]
    rows_spec += [(k.split("/")[1], s["label"]) for k, s in summaries.items()
                  if k.split("/")[1] in ("apt-kurtosis", "apt-no-kurtosis") and s["task"] == eff]
    head = ["Method", "SST-2", "paper", "MNLI", "paper", "Train time", "paper", "Train mem", "paper",
            "Params kept"]
    rows = [head, ["---"] * len(head)]
    for name, label in rows_spec:
        p = paper.TABLE4.get(name, (None,) * 4)
        e = summaries.get(f"{eff}/{name}")
        rows.append([label, _score(summaries.get(f"sst2/{name}")), _num(p[0]),
                     _score(summaries.get(f"mnli/{name}")), _num(p[1]), _tta_pct(e), _pct(p[2]),
                     _pct(_rel(e, "train_memory_pct")), _pct(p[3]),
                     _kept(e)])
    notes = [f"Train time is TTA as % of FT in this run, measured on {TASK_TITLES[eff]}.",
             *_threshold_notes(summaries, tasks)]
    return _render(rows) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def sweep_points(summaries: dict[str, dict], tasks: list[str]) -> list[dict[str, Any]]:
    """One point per (method, sparsity): relative accuracy, inference speed-up, memory reduction."""
    eff = efficiency_task(summaries, tasks)
    names = sorted({k.split("/")[1] for k in summaries})
    points = []
    for name in names:
        e = summaries.get(f"{eff}/{name}")
        method = METHODS.get(e["method"]) if e is not None else None
        if method is None or not (method.prunes or method.name == "ft"):  # FT: the reference
            continue
        if e["method"] == "apt" and e["overrides"].keys() - {"sparsity"}:
            continue  # ablations are not sweep points
        inf_pct = _inf_time_pct(summaries, e)
        mem_pct = _rel(e, "inf_memory_pct")
        points.append({"name": name, "method": e["method"], "label": e["label"],
                       "sparsity_target": e["sparsity_target"] or 0.0, "params_kept": e["params_kept"],
                       "scores": {t: summaries[f"{t}/{name}"]["score"] for t in tasks
                                  if f"{t}/{name}" in summaries},
                       "relative_accuracy": relative_accuracy(summaries, name, tasks),
                       "speedup": 100 / inf_pct if inf_pct else None,
                       "memory_reduction": 100 / mem_pct if mem_pct else None})
    return sorted(points, key=lambda p: (p["method"], p["sparsity_target"]))


def sweep_table(points: list[dict], tasks: list[str]) -> str:
    head = ["Method", "target sparsity", "kept (measured)", *[TASK_TITLES[t] for t in tasks],
            "relative accuracy", "inference speed-up", "inference memory reduction"]
    rows = [head, ["---"] * len(head)]
    for p in points:
        rows.append([p["label"], _pct(100 * p["sparsity_target"], 0), _pct(100 * p["params_kept"], 2),
                     *[f"{100 * p['scores'][t]:.2f}" if t in p["scores"] else "—" for t in tasks],
                     "—" if p["relative_accuracy"] is None else f"{p['relative_accuracy']:.4f}",
                     "—" if p["speedup"] is None else f"{p['speedup']:.2f}×",
                     "—" if p["memory_reduction"] is None else f"{p['memory_reduction']:.2f}×"])
    task_names = " + ".join(TASK_TITLES[t] for t in tasks)
    notes = [f"Relative accuracy = ({task_names}) / FT's ({task_names}) in this run. Speed-up and "
             "memory reduction are against dense FT at batch 128 × 128 tokens: speed measured in one "
             "process, memory in one fresh process per pass."]
    if set(tasks) != {"sst2", "mnli"}:
        notes.insert(0, f"**Relative accuracy here uses {task_names} only; the paper's (paper §5.5) is "
                        "(SST-2 + MNLI) / FT's. Run the sweep on both tasks to compare with it.**")
    paper_points = "; ".join(f"{name} {speed:.2f}× faster, {mem:.2f}× less memory"
                             for name, (speed, mem) in paper.FIGURE3_BASELINES.items())
    notes.append(f"Paper (RoBERTa-base, Figure 3 baselines at 60%): {paper_points}. At LoRA+Prune's "
                 "accuracy, APT is 21.8% faster in inference and 7% more memory-efficient.")
    return _render(rows) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _threshold_notes(summaries: dict[str, dict], tasks: list[str]) -> list[str]:
    notes = []
    for task in tasks:
        ft = summaries.get(f"{task}/ft")
        if ft and "tta" in ft:
            notes.append(f"{TASK_TITLES[task]} TTA threshold: 97% of FT's best dev score "
                         f"{100 * ft['tta']['best']:.2f} = {100 * ft['tta']['threshold']:.2f}; "
                         "training seconds exclude evaluation and include prerequisite runs "
                         "(LoRA for LoRA+Prune, the FT teacher for the CoFi methods).")
    return notes


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _render(rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
