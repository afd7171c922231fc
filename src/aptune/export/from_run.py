"""`aptune export`: a saved run's model as a folder that other runtimes open.

The folder holds the graph, the tokenizer, the config (label names) and `aptune_export.json`:
the run it came from, its maximum length and task (so `aptune predict --backend onnx` tokenises
as training did), and the verification against PyTorch. It is written to a temporary sibling and
renamed, so a failed export leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import AptuneError
from ..predict import MANIFEST, batches_of, run_settings, torch_backend
from ..tasks import Example, resolve_data_dir
from ..train.outputs import model_inputs
from . import onnx as onnx_export
from . import transformers_folder
from .pruned import load_for_inference, require_classifier

FORMATS = ("onnx", "transformers")
QUANTIZATIONS = ("int8",)


def verification_batches(settings, model, tokenizer, data_dir: str | None, rows: int,
                         batch_size: int = 32) -> tuple[list[dict[str, torch.Tensor]], str]:
    """The run's first `rows` dev rows (with labels) when its data can be read; otherwise random
    token rows of two lengths, some padded. Returns the batches and where they came from."""
    if settings.task is not None:
        try:
            settings.task.adopt_labels(model.config)  # the model's label ids, whatever the files say now
            dev = settings.task.load("dev", resolve_data_dir(data_dir), None, settings.data_seed,
                                     settings.options)
            examples = dev.examples[:rows]
            return list(batches_of(examples, tokenizer, model.config, settings.max_length, batch_size)), \
                f"the first {len(examples):,} {settings.task.name} dev rows"
        except AptuneError:
            pass  # no data here: random rows still check the graph
    g = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    examples = [Example((" ".join(tokenizer.convert_ids_to_tokens(
        torch.randint(999 if vocab > 2000 else 5, vocab, (n,), generator=g).tolist())),), -1)
        for n in [8, 40] * (max(rows, 2) // 2)]
    return list(batches_of(examples, tokenizer, model.config, settings.max_length, batch_size)), \
        f"{len(examples)} random-token rows (no dev data found)"


def compare(candidate: Callable[[dict], Any], references: list[np.ndarray],
            batches: list[dict]) -> dict[str, Any]:
    """The candidate on every batch against the reference's logits (computed once, in order): the
    largest |logit difference|, how often they pick the same label, and each one's accuracy when
    the batches carry labels."""
    worst, rows, same, right, right_reference = 0.0, 0, 0, 0, 0
    for batch, ref in zip(batches, references):
        got = np.asarray(candidate(model_inputs(batch)))  # (B, n_labels), like ref
        worst = max(worst, float(np.abs(got - ref).max()))
        same += int((got.argmax(-1) == ref.argmax(-1)).sum())
        rows += len(ref)
        if "labels" in batch:
            gold = np.asarray(batch["labels"])
            right += int((got.argmax(-1) == gold).sum())
            right_reference += int((ref.argmax(-1) == gold).sum())
    labelled = bool(batches) and "labels" in batches[0]
    return {"max_abs_logit_diff": worst, "rows": rows, "same_label": same,
            "accuracy": right / rows if labelled else None,
            "accuracy_reference": right_reference / rows if labelled else None}


def export_run(model_dir: str | Path, output: str | Path | None = None, fmt: str = "onnx",
               quantize: str | None = None, data_dir: str | None = None, verify_rows: int = 256,
               opset: int = 18, say: Callable[[str], None] = print, benchmark: bool = False,
               dense: str | None = None, benchmark_rounds: int = 5) -> dict[str, Any]:
    if benchmark and fmt != "onnx":
        raise AptuneError(f"--benchmark times ONNX Runtime, so it needs --format onnx (got {fmt})",
                          "drop --benchmark, or export with --format onnx")
    if benchmark_rounds <= 0:
        raise AptuneError("--benchmark-rounds must be positive", "pass e.g. --benchmark-rounds 5")
    if fmt not in FORMATS:
        raise AptuneError(f"unknown export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    if quantize is not None and (quantize not in QUANTIZATIONS or fmt != "onnx"):
        raise AptuneError(f"unknown --quantize {quantize!r} for --format {fmt}",
                          "--quantize int8 applies to --format onnx")
    if verify_rows <= 0:
        raise AptuneError("--verify-rows must be positive", "pass e.g. --verify-rows 256")
    if fmt == "onnx":
        onnx_export.require_onnx()
    model, tokenizer, path = load_for_inference(model_dir)
    require_classifier(model, "aptune export")
    settings = run_settings(path, None)
    run = path.parent if (path.parent / "config.yaml").is_file() else path
    final = Path(output).expanduser() if output else run / fmt
    batches, source = verification_batches(settings, model, tokenizer, data_dir, verify_rows)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        report = {"format": fmt, "source": str(path),
                  "run": {"task": settings.task.name if settings.task else None,
                          "max_length": settings.max_length, "data_seed": settings.data_seed,
                  **(settings.options or {})}}
        writer = _onnx if fmt == "onnx" else _transformers
        report.update(writer(model, tokenizer, tmp, batches, source, quantize, opset, say))
        if benchmark:
            from .benchmark import benchmark_runtimes

            every_dev_row = verification_batches(settings, model, tokenizer, data_dir, 10**9)
            report["benchmark"] = benchmark_runtimes(model, run, dense, *every_dev_row, tmp,
                                                     benchmark_rounds, say)
        (tmp / MANIFEST).write_text(json.dumps(report, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backend = "--backend onnx " if fmt == "onnx" else ""
    say(f"export: {final} (predict with: aptune predict --model-dir {final} {backend}--text ...)")
    return {**report, "output": str(final)}


def _onnx(model, tokenizer, folder: Path, batches: list, source: str, quantize: str | None, opset: int,
          say) -> dict[str, Any]:
    t0 = time.perf_counter()
    onnx_path = onnx_export.export_onnx(model, batches[0], folder / onnx_export.ONNX_FILE, opset)
    say(f"export: {onnx_export.ONNX_FILE} written in {time.perf_counter() - t0:.1f} s "
        f"({onnx_path.stat().st_size / 2**20:,.1f} MiB)")
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    fp32 = onnx_export.session(onnx_path)
    reference = [torch_backend(model).logits(model_inputs(b)) for b in batches]  # PyTorch's, once
    check = compare(lambda b: onnx_export.onnx_logits(fp32, b), reference, batches)
    _refuse_if_different(check, onnx_export.MAX_DIFF, "ONNX graph", source)
    accuracy_onnx, accuracy_torch = check.pop("accuracy"), check.pop("accuracy_reference")
    report = {"opset": opset, "inputs": onnx_export.input_names(batches[0]),
              "verification": {"on": source, **check, "accuracy_torch": accuracy_torch,
                               "accuracy_onnx": accuracy_onnx}}
    say(f"export: ONNX Runtime against PyTorch on {source}: max |logit diff| "
        f"{check['max_abs_logit_diff']:.2e}, same label on {check['same_label']:,}/{check['rows']:,}")
    if quantize == "int8":
        q_path = onnx_export.quantize_int8(onnx_path, folder / onnx_export.INT8_FILE)
        q = onnx_export.session(q_path)
        int8_check = compare(lambda b: onnx_export.onnx_logits(q, b), reference, batches)
        int8_check.pop("accuracy_reference")
        report["int8"] = {**int8_check, "file": onnx_export.INT8_FILE,
                          "mib": round(q_path.stat().st_size / 2**20, 2)}
        int8 = report["int8"]
        say(f"export: int8 {int8['mib']:,.1f} MiB; same label as PyTorch on {int8['same_label']:,}/"
            f"{int8['rows']:,}" + (f"; accuracy {int8['accuracy']:.4f} "
                                   f"(fp32 {report['verification']['accuracy_onnx']:.4f})"
                                   if int8["accuracy"] is not None else ""))
    return report


def _transformers(model, tokenizer, folder: Path, batches: list, source: str, quantize, opset,
                  say) -> dict[str, Any]:
    remote = transformers_folder.write_folder(model, tokenizer, folder)
    stock = torch_backend(transformers_folder.load_stock(folder)).logits
    check = compare(stock, [torch_backend(model).logits(model_inputs(b)) for b in batches], batches)
    del check["accuracy"], check["accuracy_reference"]  # same label everywhere is what matters
    _refuse_if_different(check, transformers_folder.MAX_DIFF, "stock-transformers model", source)
    say(f"export: stock transformers ({'trust_remote_code=True' if remote else 'stock layout'}) against "
        f"aptune on {source}: max |logit diff| {check['max_abs_logit_diff']:.2e}")
    return {"trust_remote_code": remote, "verification": {"on": source, **check}}


def _refuse_if_different(check: dict, limit: float, what: str, source: str) -> None:
    if not check["max_abs_logit_diff"] <= limit:
        raise AptuneError(f"the {what}'s logits differ from aptune's by {check['max_abs_logit_diff']:.2e} "
                          f"(more than {limit:g}) on {source}",
                          "this is a bug; please report it with the model folder")


def export_model(model_dir: str | Path, fmt: str = "onnx", output: str | Path | None = None,
                 quantize: str | None = None, data_dir: str | None = None, verify_rows: int = 256,
                 opset: int = 18, say: Callable[[str], None] = lambda _: None, benchmark: bool = False,
                 dense: str | None = None, benchmark_rounds: int = 5) -> dict[str, Any]:
    """The public API of `aptune export`: export a run's model (`fmt` "onnx" or "transformers"),
    verify it against aptune's, and return the manifest (with "output", the folder written).
    `benchmark=True` also times it against `dense` in PyTorch and ONNX Runtime fp32/int8."""
    return export_run(model_dir, output, fmt, quantize, data_dir, verify_rows, opset, say, benchmark,
                      dense, benchmark_rounds)
