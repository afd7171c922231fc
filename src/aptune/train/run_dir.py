"""Output folders that appear only when finished: write to a hidden sibling, then rename.

The sibling is `.<name>.partial-run`. A failure removes it, unless it holds a checkpoint
(train/checkpoint.py): then it stays for `aptune train --resume`. A crash never leaves a folder
that looks like a finished run.
"""

from __future__ import annotations

import json
import os
import shutil

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from pathlib import Path
from typing import Any

from ..errors import AptuneError

RUN_MARKER = "aptune_run.json"


def is_aptune_run(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def unfinished_folder(output_dir: str | os.PathLike) -> Path:
    """Where a run writes until it finishes (and where its checkpoints wait for --resume)."""
    final = Path(output_dir).expanduser().resolve()
    return final.with_name(f".{final.name}.partial-run")


class OutputLock:
    """An exclusive lock on one --output-dir (`.<name>.lock` beside it), held from the start of a
    run to its end, so that two runs never write the same unfinished folder. The kernel drops it
    when the process dies, even by SIGKILL, so a killed run never leaves a stale lock."""

    def __init__(self, final: Path) -> None:
        self.path = final.with_name(f".{final.name}.lock")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AptuneError(f"cannot write to {final.parent} ({exc.strerror})",
                              "choose an --output-dir in a folder you can write to") from None
        if fcntl is None:  # no flock (Windows): runs are not protected from each other
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise AptuneError(f"another aptune run is writing to {final} right now",
                              "wait for it to finish, or choose another --output-dir") from None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class RunDir:
    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> None:
        from .checkpoint import checkpoint_step

        self.final = Path(output_dir).expanduser().resolve()
        if self.final.exists():
            if not self.final.is_dir():
                raise AptuneError(f"output path {self.final} exists and is a file",
                                  "choose another --output-dir")
            if any(self.final.iterdir()) and not is_aptune_run(self.final) and not overwrite:
                raise AptuneError(
                    f"output folder {self.final} exists and is not an aptune run",
                    "choose another --output-dir, or pass --overwrite to replace it",
                )
        self.tmp = unfinished_folder(self.final)
        self._lock = OutputLock(self.final)  # before anything in the unfinished folder is read
        try:
            self._prepare(resume, overwrite, checkpoint_step(self.tmp) if self.tmp.is_dir() else None)
        except BaseException:
            self._lock.release()
            raise

    def _prepare(self, resume: bool, overwrite: bool, step: int | None) -> None:
        if resume:
            if step is None:
                raise AptuneError(f"{self.final} has no unfinished run with a checkpoint to resume",
                                  "start the run without --resume")
            return
        if step is not None and not overwrite:
            raise AptuneError(f"{self.final} has an unfinished run (checkpoint at step {step})",
                              f"continue it with: aptune train --resume {self.final}   (or pass "
                              "--overwrite to start over)")
        try:
            shutil.rmtree(self.tmp, ignore_errors=True)  # a run that failed before its first checkpoint
            self.tmp.mkdir(mode=0o700)
        except OSError as exc:
            raise AptuneError(f"cannot write to {self.final.parent} ({exc.strerror})",
                              "choose an --output-dir in a folder you can write to") from None

    def path(self, *parts: str) -> Path:
        return self.tmp.joinpath(*parts)

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path(name)
        target.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return target

    def finish(self, marker: dict[str, Any]) -> Path:
        """Mark the run complete and move it into place, replacing an earlier run there."""
        self.write_json(RUN_MARKER, marker)
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private; a finished run is an ordinary folder
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        # A finished run needs no checkpoint; removed only now, so a kill before the rename can
        # still resume.
        for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old", "stages"):
            shutil.rmtree(self.final / name, ignore_errors=True)
        self._lock.release()
        return self.final

    def has_checkpoint(self) -> bool:
        from .checkpoint import checkpoint_step

        return checkpoint_step(self.tmp) is not None

    def abandon(self) -> None:
        """A failed run: remove its folder, unless a checkpoint there can resume it."""
        if not self.has_checkpoint():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._lock.release()
