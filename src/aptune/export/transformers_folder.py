"""A folder that stock transformers opens without aptune (`aptune export --format transformers`).

A dense model needs nothing special: it is written in the stock layout. A pruned one (layers of
different sizes) is written as aptune saves it, plus `aptune_modeling.py` (templates/, torch and
transformers only) and an `auto_map` entry in config.json, so that
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` builds each
layer at its kept size and loads the weights strictly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import AptuneError
from ..structure import recorded_structure
from .pruned import save_pruned

TEMPLATE = Path(__file__).parent / "templates" / "aptune_modeling.py"
CLASSES = {"bert": "AptunePrunedBertForSequenceClassification",
           "roberta": "AptunePrunedRobertaForSequenceClassification"}
MAX_DIFF = 1e-5  # the same tensors in the same modules: any difference is a bug


def write_folder(model: nn.Module, tokenizer, folder: Path) -> bool:
    """Write the folder; returns whether it needs `trust_remote_code` (a pruned model)."""
    if recorded_structure(model) is None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return False
    model_type = model.config.model_type
    if model_type not in CLASSES:
        raise AptuneError(f"the transformers export covers {', '.join(CLASSES)} models, not {model_type}",
                          "export to ONNX instead (--format onnx)")
    save_pruned(model, folder, tokenizer)
    shutil.copy(TEMPLATE, folder / TEMPLATE.name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": f"aptune_modeling.{CLASSES[model_type]}"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def load_stock(folder: Path) -> nn.Module:
    """The folder opened the way a user without aptune opens it."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def compare(stock: nn.Module, model: nn.Module, batches: Iterable[dict]) -> dict:
    worst, rows = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            diff = (stock(**inputs).logits - model.eval()(**inputs).logits).abs().max()  # (B, n_labels)
            worst, rows = max(worst, float(diff)), rows + len(inputs["input_ids"])
    return {"max_abs_logit_diff": worst, "rows": rows}
