"""The training state, saved and restored exactly: safetensors for tensors, JSON for the rest.

A checkpoint folder holds `tensors.safetensors` (the model's state, the optimizer's moments, the
best weights so far, torch's RNG state) and `state.json` (the loop's counters and timers, the
history, the optimizer's hyperparameters, Python's and NumPy's RNG states, the run's config). It
is written to `checkpoint.tmp/` and renamed over `checkpoint/`, so a kill at any moment leaves
either the old checkpoint or the new one. No pickle anywhere (docs/protocol.md#checkpoints).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import AptuneError

FOLDER = "checkpoint"
STATE = "state.json"
TENSORS = "tensors.safetensors"
FORMAT = 1
RESTART_FIX = "start the run again without --resume (pass --overwrite)"  # what every mismatch says


def section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, with it stripped: one part of a checkpoint."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _inner(optimizer):
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


def trainer_state(trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able state) that decide the rest of the run."""
    tensors = {f"model.{k}": v.detach() for k, v in trainer.unwrapped_model.state_dict().items()}
    moments, optimizer_groups = optimizer_state(trainer.optimizer)
    tensors.update({f"optimizer.{k}": v for k, v in moments.items()})
    if trainer._best_state is not None:
        tensors.update({f"best.{k}": v for k, v in trainer._best_state.items()})
    callbacks = []
    for index, callback in enumerate(trainer.callbacks):  # a method's state outside the loop
        part, state = callback.checkpoint_state(trainer)
        tensors.update({f"callback.{index}.{k}": v for k, v in part.items()})
        callbacks.append(state)
    # Every process's random streams (one collective call when there are several); the rest of
    # the state is identical on every process, so the main process's copy is the one written.
    ranks = _gather_rng(trainer.accelerator, _rng_state())
    for rank, (torch_state, _, _, cuda) in enumerate(ranks):
        prefix = "rng" if rank == 0 else f"rng.rank{rank}"
        tensors[f"{prefix}.torch"] = torch_state
        tensors.update({f"{prefix}.cuda.{i}": s for i, s in enumerate(cuda)})
    tensors = _unshared(tensors)
    meta = {
        "format": FORMAT,
        "step": trainer.step, "epoch": trainer.epoch, "batches_in_epoch": trainer.batches_in_epoch,
        "samples_seen": trainer.samples_seen, "train_seconds": trainer.train_seconds,
        "phase_seconds": trainer.phase_seconds,
        "wall_seconds": trainer.wall_seconds(), "peak_train_memory_bytes": trainer.peak_so_far(),
        "history": trainer.history, "best_metric": trainer.best_metric, "best_step": trainer.best_step,
        "best_eval": trainer.best_eval, "has_best_state": trainer._best_state is not None,
        "loss_window": trainer.loss_window, "callbacks": callbacks,
        "optimizer_groups": optimizer_groups,
        "rng_python": ranks[0][1], "rng_numpy": ranks[0][2],
        "rng_other_ranks": [{"python": python, "numpy": numpy} for _, python, numpy, _ in ranks[1:]],
        "num_processes": trainer.accelerator.num_processes,
    }
    return tensors, meta


def _rng_state() -> tuple[torch.Tensor, list, list, list[torch.Tensor]]:
    """(torch, Python as JSON, NumPy as JSON, CUDA per device) random states of this process."""
    np_state = np.random.get_state()
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return (torch.get_rng_state(), _jsonable(random.getstate()),
            [np_state[0], np_state[1].tolist(), *np_state[2:]], cuda)


def _gather_rng(accelerator, state) -> list:
    """Every process's `_rng_state()`, in rank order (this process's alone when it is the only one)."""
    if accelerator.num_processes == 1:
        return [state]
    from accelerate.utils import gather_object

    return gather_object([state])  # in memory over the process group; nothing is written pickled


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer's state as tensors ("<param index>.<name>") and its JSON-able param groups."""
    state = _inner(optimizer).state_dict()
    tensors = {f"{index}.{key}": torch.as_tensor(value).detach()
               for index, values in state["state"].items() for key, value in values.items()}
    return tensors, state["param_groups"]


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    """The inverse of optimizer_state, into an optimizer over the same parameters (ValueError or
    KeyError when they differ)."""
    states: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        states.setdefault(int(index), {})[name] = value
    _inner(optimizer).load_state_dict({"state": states, "param_groups": groups})


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage (safetensors refuses shared storage, e.g.
    tied weights); only the tensors that need it are copied."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.cpu().contiguous()
        pointer = value.untyped_storage().data_ptr()
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def write_checkpoint(run_folder: Path, trainer, config: dict[str, Any],
                     prerequisite: dict[str, Any] | None = None) -> Path:
    """Write the trainer's state under `run_folder/checkpoint`, atomically. `prerequisite` is the
    summary of the finished run this one started from, which a resumed run must find unchanged."""
    if not trainer.accelerator.is_main_process:  # its part: its random states, for the main one
        _gather_rng(trainer.accelerator, _rng_state())
        return run_folder / FOLDER
    tensors, meta = trainer_state(trainer)
    meta["config"], meta["prerequisite"] = config, prerequisite
    tmp, final, old = (run_folder / f"{FOLDER}.tmp", run_folder / FOLDER, run_folder / f"{FOLDER}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / TENSORS))
    (tmp / STATE).write_text(json.dumps(meta, default=float) + "\n")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _folder(run_folder: Path) -> Path:
    """The checkpoint folder to read: `checkpoint/`, or `checkpoint.old/` when a kill fell
    between write_checkpoint's two renames."""
    folder = run_folder / FOLDER
    if not (folder / STATE).is_file() and (run_folder / f"{FOLDER}.old" / STATE).is_file():
        return run_folder / f"{FOLDER}.old"
    return folder


def read_checkpoint_state(run_folder: Path) -> dict[str, Any]:
    """The JSON half of the checkpoint (config, step, history), without loading any tensor."""
    folder = _folder(run_folder)
    try:
        meta = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        raise AptuneError(f"{run_folder} holds no checkpoint",
                          "start the run again without --resume") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AptuneError(f"the checkpoint in {folder} is damaged ({type(exc).__name__})",
                          RESTART_FIX) from None
    if meta.get("format") != FORMAT:
        raise AptuneError(f"the checkpoint in {folder} has format {meta.get('format')}, this aptune "
                          f"reads {FORMAT}", "resume it with the aptune version that wrote it")
    return meta


def read_checkpoint(run_folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = read_checkpoint_state(run_folder)
    folder = _folder(run_folder)
    try:
        tensors = load_file(str(folder / TENSORS))
    except FileNotFoundError:
        raise AptuneError(f"the checkpoint in {folder} lacks {TENSORS}",
                          RESTART_FIX) from None
    except Exception as exc:  # noqa: BLE001 - a damaged header surfaces as several types
        raise AptuneError(f"the checkpoint in {folder} is damaged ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]})",
                          RESTART_FIX) from None
    return tensors, meta


def checkpoint_step(run_folder: Path) -> int | None:
    """The step of the checkpoint in `run_folder`, or None."""
    try:
        return int(json.loads((_folder(run_folder) / STATE).read_text())["step"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def restore_trainer(trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put the saved state back into a freshly built trainer (same model, method and data)."""
    fix = RESTART_FIX
    saved_processes, processes = meta.get("num_processes", 1), trainer.accelerator.num_processes
    if saved_processes != processes:
        raise AptuneError(f"the checkpoint was written by {saved_processes} process(es), this run has "
                          f"{processes}", f"resume it with {saved_processes} process(es), e.g. torchrun "
                          f"--nproc_per_node {saved_processes} -m aptune.cli train --resume ...")
    saved_callbacks = meta.get("callbacks", [])
    if len(saved_callbacks) != len(trainer.callbacks):
        raise AptuneError("the checkpoint was written by another method's loop", fix)
    device = next(trainer.unwrapped_model.parameters()).device
    try:
        for index, (callback, state) in enumerate(zip(trainer.callbacks, saved_callbacks)):
            # First: a method that reshaped the model (APT's compaction, rank growth) rebuilds the
            # shapes, so that the model's tensors and the optimizer's moments fit them.
            callback.restore_checkpoint_state(trainer, section(tensors, f"callback.{index}."), state)
        model = trainer.unwrapped_model
        missing, unexpected = model.load_state_dict(section(tensors, "model."), strict=False)
        if missing or unexpected:
            raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        best = ({k: v.to(device) for k, v in section(tensors, "best.").items()}
                if meta["has_best_state"] else None)
        params = dict(trainer.unwrapped_model.named_parameters())
        load_optimizer_state(trainer.optimizer, section(tensors, "optimizer."), meta["optimizer_groups"])
        if best is not None and any(params[k].shape != v.shape for k, v in best.items()):
            raise ValueError("best weights of another shape")
    except AptuneError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise AptuneError(f"the checkpoint does not match this run's model, method state or optimizer "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", fix) from None
    trainer._best_state = best
    for name in ("step", "epoch", "batches_in_epoch", "samples_seen", "train_seconds", "history",
                 "best_metric", "best_step", "best_eval", "loss_window"):
        setattr(trainer, name, meta[name])
    trainer.phase_seconds = meta.get("phase_seconds", {})
    trainer.resumed_wall_seconds = meta["wall_seconds"]
    trainer.resumed_peak_bytes = meta["peak_train_memory_bytes"]
    rank = trainer.accelerator.process_index
    prefix = "rng" if rank == 0 else f"rng.rank{rank}"
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith(f"{prefix}.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    other = meta["rng_other_ranks"][rank - 1] if rank > 0 else None
    python, numpy = (other["python"], other["numpy"]) if other else (meta["rng_python"], meta["rng_numpy"])
    trainer.pending_rng = (tensors[f"{prefix}.torch"], python, numpy, cuda)


def set_rng(state) -> None:
    torch_state, python_state, numpy_state, cuda_states = state
    torch.set_rng_state(torch_state)
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tupled(python_state))
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
