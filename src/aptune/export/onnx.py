"""The compacted model as an ONNX graph, verified against PyTorch with ONNX Runtime.

`export_onnx` traces the model's logits with dynamic batch and sequence axes (torch.export, the
supported exporter), writes `model.onnx` beside the tokenizer and config, then runs the same
batches through ONNX Runtime and PyTorch and records the largest logit difference. `quantize_int8`
adds ONNX Runtime's dynamic int8 quantisation (weights int8, activations quantised per batch).
The extra packages come with `pip install 'aptune[export]'`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AptuneError

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
MAX_DIFF = 1e-4  # ONNX Runtime's logits may differ from PyTorch's by float32 summation order only


@contextlib.contextmanager
def quiet_exporters():
    """The exporter and the quantiser narrate every phase and warn about optional packages
    (torchvision ops, pre-processing advice); aptune reports what matters itself."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise AptuneError(f"ONNX export needs onnx, onnxruntime and onnxscript ({exc.name} is missing)",
                          "pip install 'aptune[export]'") from None


def input_names(batch: dict) -> list[str]:
    """The graph's inputs: token ids and mask, plus segment ids where the encoded batch has them
    (train.data.encode drops them for models with one segment)."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]


class LogitsOnly(nn.Module):
    """Token ids and mask in, logits out: the signature an ONNX graph carries."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, n_labels)


class LogitsWithSegments(LogitsOnly):
    """The same with segment ids, for models with two segments (BERT)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits  # (B, n_labels)


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int = 18) -> Path:
    """Write `model` as ONNX to `path`, traced on `example` (a padded batch of at least 2 rows)."""
    require_onnx()
    names = input_names(example)
    wrapper = (LogitsWithSegments if "token_type_ids" in names else LogitsOnly)(model.eval()).eval()
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    args = tuple(example[n] for n in names)
    try:
        with torch.no_grad(), quiet_exporters():
            torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"],
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names}, dynamo=True,
                              opset_version=opset, external_data=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails with many exception types
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise AptuneError(f"the ONNX exporter failed ({reason})",
                          "try another --opset, or --format transformers; please report the model") from None
    model.eval()  # tracing may leave modules in training mode
    return path


def session(path: Path):
    """An ONNX Runtime session on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(sess, batch: dict[str, Any]) -> np.ndarray:
    feeds = {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in sess.get_inputs()}
    return sess.run(["logits"], feeds)[0]  # (B, n_labels)


def quantize_int8(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_exporters():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target
