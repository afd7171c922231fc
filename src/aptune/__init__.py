"""aptune: fine-tune a pretrained language model and make it smaller and faster in one run."""

from __future__ import annotations

from .api import APTConfig, APTModel, get_apt_model
from .config import TrainConfig
from .errors import AptuneError
from .export import load_pruned, save_pruned
from .lora import LoRALinear, inject_lora, merge_and_unload, print_trainable_parameters

__version__ = "0.1.0"

__all__ = ["APTConfig", "APTModel", "AptuneError", "LoRALinear", "TrainConfig", "get_apt_model",
           "inject_lora", "load_pruned", "merge_and_unload", "print_trainable_parameters",
           "save_pruned", "__version__"]
