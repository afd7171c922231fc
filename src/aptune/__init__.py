"""aptune: fine-tune a pretrained language model and make it smaller and faster in one run."""

from __future__ import annotations

from .config import TrainConfig
from .errors import AptuneError
from .lora import LoRALinear, inject_lora, merge_and_unload, print_trainable_parameters

__version__ = "0.1.0"

__all__ = ["AptuneError", "LoRALinear", "TrainConfig", "inject_lora", "merge_and_unload",
           "print_trainable_parameters", "__version__"]
