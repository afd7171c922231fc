"""Getting a trained model out of aptune.

    pruned.py  save and load of models whose layers differ in size (aptune's own format), and the
               loader that `aptune eval` and `aptune predict` use
    onnx.py    an ONNX graph with dynamic batch and sequence axes, verified against PyTorch with
               ONNX Runtime, optionally quantised to int8 (`aptune export --format onnx`)
    transformers_folder.py  a folder stock transformers opens without aptune; a pruned model
               ships its family's modelling code (`aptune export --format transformers`)
    from_run.py  `aptune export`: a run's model to one of those folders, verified, written
               atomically with aptune_export.json
"""

from __future__ import annotations

from .pruned import load_for_inference, load_pruned, require_classifier, save_pruned

__all__ = ["load_for_inference", "load_pruned", "require_classifier", "save_pruned"]
