"""PNG plots of a benchmark run: learning curves with the TTA line, the sparsity trade-off (the
paper's Figure 3), and APT's adapter ranks and kept ratio over training."""

from __future__ import annotations

from pathlib import Path

from .tables import TASK_TITLES

COLORS = {"ft": "#444444", "lora": "#8c8c8c", "lora-prune": "#1f77b4", "cofi": "#ff7f0e",
          "cofi-lora": "#9467bd", "apt": "#d62728"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def learning_curves(summaries: dict[str, dict], task: str, path: Path) -> Path:
    """Dev score against training seconds (prerequisites included) for every method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    threshold = None
    for s in summaries.values():
        if s["task"] != task or not s["curve"]:
            continue
        minutes = [c["seconds"] / 60 for c in s["curve"]]
        values = [100 * c["value"] for c in s["curve"]]
        label = s["label"] if s["name"] in COLORS else f"{s['label']} ({s['name']})"
        ax.plot(minutes, values, marker=".", lw=1.2, label=label, color=COLORS.get(s["name"]))
        tta = s.get("tta", {})
        threshold = tta.get("threshold", threshold)
        if tta.get("reached"):
            ax.plot([tta["seconds"] / 60], [100 * tta["value"]], marker="o", ms=9, mfc="none",
                    color=COLORS.get(s["name"], "black"))
    if threshold is not None:
        ax.axhline(100 * threshold, ls="--", color="black", lw=1,
                   label=f"97% of FT's best ({100 * threshold:.1f})")
    ax.set_xlabel("training minutes (evaluation excluded, prerequisites included)")
    ax.set_ylabel(f"{TASK_TITLES[task]} dev score")
    ax.set_title(f"{TASK_TITLES[task]}: dev score over training time (circles: time to 97% of FT)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def tradeoff(points: list[dict], x_key: str, x_label: str, path: Path) -> Path:
    """Relative accuracy against inference speed-up or memory reduction (Figure 3)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for method in ("apt", "lora-prune"):
        line = sorted((p for p in points if p["method"] == method and p[x_key] and p["relative_accuracy"]),
                      key=lambda p: p[x_key])
        if line:
            ax.plot([p[x_key] for p in line], [p["relative_accuracy"] for p in line], marker="o",
                    color=COLORS[method], label=line[0]["label"] + " (sweep)")
            for p in line:
                ax.annotate(f"{100 * p['params_kept']:.0f}%", (p[x_key], p["relative_accuracy"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    for p in points:
        if p["method"] in ("cofi", "cofi-lora", "ft") and p[x_key] and p["relative_accuracy"]:
            ax.scatter([p[x_key]], [p["relative_accuracy"]], marker="s", s=50,
                       color=COLORS[p["method"]], label=p["label"], zorder=3)
    ax.set_xlabel(x_label)
    ax.set_ylabel("relative accuracy (score / FT's)")
    ax.set_title("Accuracy kept against inference efficiency (labels: parameters kept)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def apt_trace(summary: dict, path: Path) -> Path:
    """APT's adapter ranks (min, median, max) and kept ratio over training steps."""
    plt = _pyplot()
    trace = summary["apt_trace"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if trace["ranks"]:
        steps = [r["step"] for r in trace["ranks"]]
        ax.fill_between(steps, [r["min"] for r in trace["ranks"]], [r["max"] for r in trace["ranks"]],
                        step="post", alpha=0.2, color=COLORS["apt"], label="adapter rank, min to max")
        ax.step(steps, [r["median"] for r in trace["ranks"]], where="post", color=COLORS["apt"],
                label="adapter rank, median")
    ax.set_xlabel("training step")
    ax.set_ylabel("adapter rank")
    ax2 = ax.twinx()
    kept = trace["kept"]
    ax2.step([k["step"] for k in kept], [100 * k["kept_ratio"] for k in kept], where="post",
             color="black", ls="--", label="parameters kept (%)")
    ax2.set_ylabel("non-embedding parameters kept (%)")
    ax2.set_ylim(0, 105)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    ax.set_title(f"APT on {TASK_TITLES[summary['task']]} ({summary['name']}): ranks grow while "
                 "the model shrinks")
    return _save(fig, path)


def runtimes(result: dict, path: Path) -> Path:
    """Throughput of the dense and the pruned model in each runtime, one panel per batch size,
    each pruned bar labelled with its speed-up over the dense model in the same runtime."""
    from .backends import RUNTIMES

    plt = _pyplot()
    sizes = sorted({r["batch_size"] for r in result["rows"]})
    by = {(r["model"], r["runtime"], r["batch_size"]): r for r in result["rows"]}
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4.2), squeeze=False)
    x = list(range(len(RUNTIMES)))
    for ax, bs in zip(axes[0], sizes):
        for offset, model, color in ((-0.2, "dense", COLORS["ft"]), (0.2, "pruned", COLORS["apt"])):
            values = [by[(model, rt, bs)]["samples_per_s"] for rt in RUNTIMES]
            bars = ax.bar([i + offset for i in x], values, width=0.4, color=color, label=model)
            if model == "pruned":
                ups = [f"{by[(model, rt, bs)]['speedup_vs_dense']:.2f}x" for rt in RUNTIMES]
                ax.bar_label(bars, labels=ups, fontsize=8)
        ax.set_xticks(x, [title.replace("ONNX Runtime ", "ORT ") for title in RUNTIMES.values()],
                      fontsize=8)
        ax.set_title(f"batch {bs} x {result['rows'][0]['seq_len']} tokens")
        ax.set_ylabel("samples / s")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Inference throughput: dense against pruned, per runtime (labels: pruned / dense)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    tmp.replace(path)
    return path

