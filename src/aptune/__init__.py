"""aptune: fine-tune a pretrained language model and make it smaller and faster in one run.

The public API, re-exported flat and loaded on first use (so that `import aptune.config`, the
CLI's `--help` and recipe listing do not load torch):

    from aptune import APTConfig, get_apt_model, load_pruned
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "APTConfig": "aptune.apt.config",
    "APTModel": "aptune.api",
    "get_apt_model": "aptune.api",
    "AptuneError": "aptune.errors",
    "TrainConfig": "aptune.config",
    "Structure": "aptune.structure",
    "load_pruned": "aptune.export",
    "export_model": "aptune.export.from_run",
    "save_pruned": "aptune.export",
    "LoRALinear": "aptune.lora",
    "inject_lora": "aptune.lora",
    "merge_and_unload": "aptune.lora",
    "print_trainable_parameters": "aptune.lora",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aptune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
