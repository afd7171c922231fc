"""Classification scores: accuracy, macro-F1 and the per-class report, from predicted and gold ids."""

from __future__ import annotations

from typing import Any

import numpy as np


def per_class_scores(predictions: np.ndarray, labels: np.ndarray,
                     names: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per label: precision, recall and F1 (0 where undefined) and its gold support."""
    rows = []
    for i, name in enumerate(names):
        predicted, gold = predictions == i, labels == i  # (N,) each
        hits = int((predicted & gold).sum())
        precision = hits / int(predicted.sum()) if predicted.any() else 0.0
        recall = hits / int(gold.sum()) if gold.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": name, "precision": precision, "recall": recall, "f1": f1,
                     "support": int(gold.sum()), "predicted": int(predicted.sum())})
    return rows


def classification_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, and macro-F1 over the labels that occur in the gold or the predicted ids (the
    usual convention: a label absent from both has no F1 to average)."""
    present = np.union1d(np.unique(labels), np.unique(predictions))
    rows = per_class_scores(predictions, labels, tuple(str(i) for i in range(int(present.max()) + 1)))
    f1 = [rows[int(i)]["f1"] for i in present]
    return {"accuracy": float((predictions == labels).mean()), "macro_f1": float(np.mean(f1))}


def format_per_class(rows: list[dict[str, Any]]) -> str:
    """The per-class report as aligned text lines."""
    width = max(8, *(len(r["label"]) for r in rows))
    lines = [f"{'label':<{width}}  precision  recall      f1  support"]
    for r in rows:
        lines.append(f"{r['label']:<{width}}  {r['precision']:>9.4f}  {r['recall']:>6.4f}  "
                     f"{r['f1']:>6.4f}  {r['support']:>7,}")
    return "\n".join(lines)
