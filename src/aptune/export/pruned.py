"""Saving and loading models whose layers differ in size (docs/method.md#saving-pruned-models).

The saved config.json is the *dense* config plus an `aptune_structure` block holding, in the
original numbering, the kept hidden dimensions and each layer's kept heads and neurons
(aptune.structure). Loading builds the dense skeleton, cuts it to that structure, then loads the
safetensors weights strictly. No pickle is involved anywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..arch import get_spec
from ..errors import AptuneError
from ..models import auto_class, head_of, load_config, load_tokenizer
from ..structure import recorded_structure
from ..surgery import compact


def save_pruned(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write config.json (dense config + structure) and model.safetensors into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in seen:  # a tied weight (T5's shared embedding) is stored once; see _tied_aliases
            continue
        seen.add(id(v))
        state[k] = v.detach().contiguous().cpu()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]  # what load_pruned builds (its head)
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_pruned(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by aptune (pruned or dense) from safetensors only."""
    from transformers import AutoConfig

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise AptuneError(f"{folder} lacks config.json or model.safetensors",
                          "pass a model folder written by aptune")
    config = AutoConfig.from_pretrained(folder)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - a corrupt header or truncated file
        raise AptuneError(f"cannot read {weights}: it looks corrupt ({exc})",
                          "re-export the model, or restore the folder from a good copy") from None
    # The head is read from the weights: a config saved before aptune recorded it may name the
    # architecture of the checkpoint that training started from.
    head = "question-answering" if "qa_outputs.weight" in state else head_of(config)
    model = auto_class(head).from_config(config)
    model.config.architectures = [type(model).__name__]
    structure = recorded_structure(model)
    if structure is not None:  # in the original numbering, i.e. the dense skeleton's
        compact(model, get_spec(model), structure)
    missing, unexpected = model.load_state_dict(state, strict=False)
    aliases = _tied_aliases(model, state)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))
               and k not in aliases]
    if missing or unexpected:
        raise AptuneError(
            f"{weights} does not match its recorded structure (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})",
            "the folder mixes files from different runs; re-export the model")
    return model.to(device).eval()


def _tied_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """Names of parameters that share a tensor with one stored under another name."""
    names: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        names.setdefault(id(v), []).append(k)
    return {k for group in names.values() if any(n in state for n in group)
            for k in group if k not in state}


def require_classifier(model: nn.Module, command: str) -> None:
    """`aptune predict` and `aptune export` take sentence-classification models only (so far)."""
    if head_of(model.config) != "sequence-classification":
        raise AptuneError(f"{command} takes sentence-classification models; this one is a "
                          f"{head_of(model.config)} model",
                          "score it with `aptune eval`, or load it in Python with aptune.load_pruned")


def load_for_inference(model_dir: str | Path):
    """A saved aptune model (a run folder or its model/ folder), loaded from safetensors only.

    Returns (model, tokenizer, the model folder).
    """
    path = Path(model_dir).expanduser()
    if (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise AptuneError(f"{model_dir} holds no saved model (no config.json)",
                          "pass an aptune run folder or the model/ folder inside it")
    if not any(path.glob("*.safetensors")):
        raise AptuneError(f"{path} has no .safetensors weights",
                          "aptune loads safetensors only; re-save the model with save_pretrained")
    load_config(str(path))
    try:
        model = load_pruned(path)
    except AptuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files surface as many exception types
        raise AptuneError(f"cannot load the model in {path}: it looks corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "re-run training, or restore the folder from a good copy") from None
    return model, load_tokenizer(str(path)), path
