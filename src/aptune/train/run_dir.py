"""Output folders that appear only when finished: write to a hidden temporary sibling, then rename.

A crash leaves at most a `.<name>.partial-*` folder, never one that looks like a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AptuneError

RUN_MARKER = "aptune_run.json"


def is_aptune_run(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


class RunDir:
    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False) -> None:
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
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=parent))
        except OSError as exc:
            raise AptuneError(f"cannot write to {parent} ({exc.strerror})",
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
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
