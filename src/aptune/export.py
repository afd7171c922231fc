"""Saving and loading models whose layers differ in size (apt-method.md §11.3, pitfall P11).

The saved config.json is the *dense* config plus an `aptune_structure` block holding, in the
original numbering, the kept hidden dimensions and each layer's kept heads and neurons. Loading
builds the dense skeleton, cuts it to that structure, then loads the safetensors weights strictly.
No pickle is involved anywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .arch import ArchSpec, get_spec
from .errors import AptuneError
from .masks import Masks
from .surgery import compact

STRUCTURE_KEY = "aptune_structure"


def compose(previous: dict | None, current: dict) -> dict:
    """Kept indices in the original numbering after a compaction that kept `current`."""
    if previous is None:
        return current
    pick = lambda orig, idx: [orig[i] for i in idx]  # noqa: E731
    out = {"hidden": pick(previous["hidden"], current["hidden"]),
           "heads": [pick(o, c) for o, c in zip(previous["heads"], current["heads"])],
           "neurons": [pick(o, c) for o, c in zip(previous["neurons"], current["neurons"])]}
    empty = current.get("empty_sublayer", previous.get("empty_sublayer"))
    if empty:
        out["empty_sublayer"] = empty
    return out


def masks_from_structure(model: nn.Module, spec: ArchSpec, structure: dict) -> Masks:
    masks = Masks.ones_like(model, spec)
    masks.hidden = _indicator(masks.hidden, structure["hidden"])
    masks.head = [_indicator(m, k) for m, k in zip(masks.head, structure["heads"])]
    masks.neuron = [_indicator(m, k) for m, k in zip(masks.neuron, structure["neurons"])]
    return masks


def _indicator(like: torch.Tensor, idx: list[int]) -> torch.Tensor:
    out = torch.zeros_like(like)
    out[torch.as_tensor(idx, dtype=torch.long)] = 1
    return out


def record_structure(model: nn.Module, structure: dict) -> None:
    setattr(model.config, STRUCTURE_KEY, structure)


def save_pruned(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write config.json (dense config + structure) and model.safetensors into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_pruned(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by aptune (pruned or dense) from safetensors only."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise AptuneError(f"{folder} lacks config.json or model.safetensors",
                          "pass a model folder written by aptune")
    config = AutoConfig.from_pretrained(folder)
    structure = getattr(config, STRUCTURE_KEY, None)
    model = AutoModelForSequenceClassification.from_config(config)
    if structure:
        spec = get_spec(model)
        compact(model, spec, masks_from_structure(model, spec, structure),
                structure.get("empty_sublayer", "identity"))
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - a corrupt header or truncated file
        raise AptuneError(f"cannot read {weights}: it looks corrupt ({exc})",
                          "re-export the model, or restore the folder from a good copy") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise AptuneError(
            f"{weights} does not match its recorded structure (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})",
            "the folder mixes files from different runs; re-export the model")
    return model.to(device).eval()
