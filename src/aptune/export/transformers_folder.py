"""A folder that stock transformers opens without aptune (`aptune export --format transformers`).

A dense model needs nothing special: it is written in the stock layout. A pruned one (layers of
different sizes) is written as aptune saves it, plus its family's modelling code as
`aptune_modeling.py` (`ArchSpec.remote_code`; torch and transformers only) and an `auto_map` entry
in config.json, so that
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` builds each
layer at its kept size and loads the weights strictly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from torch import nn

from .. import arch
from ..errors import AptuneError
from ..structure import recorded_structure
from .pruned import save_pruned

MODELLING_FILE = "aptune_modeling.py"  # its name inside the exported folder
MAX_DIFF = 1e-5  # the same tensors in the same modules: any difference is a bug


def write_folder(model: nn.Module, tokenizer, folder: Path) -> bool:
    """Write the folder; returns whether it needs `trust_remote_code` (a pruned model)."""
    if recorded_structure(model) is None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return False
    model_type = model.config.model_type
    source, classes = arch.get_spec(model).remote_code or (None, {})
    if model_type not in classes:
        raise AptuneError(f"no stock-transformers export for pruned {model_type} models yet",
                          "export to ONNX instead (--format onnx)")
    save_pruned(model, folder, tokenizer)
    shutil.copy(Path(arch.__file__).parent / source, folder / MODELLING_FILE)
    config = json.loads((folder / "config.json").read_text())
    entry = f"{Path(MODELLING_FILE).stem}.{classes[model_type]}"
    config["auto_map"] = {"AutoModelForSequenceClassification": entry}
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
    except Exception as exc:  # noqa: BLE001 - a folder transformers cannot open, whatever the cause
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise AptuneError(f"stock transformers cannot open the exported folder ({reason})",
                          "please report it with the model folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
