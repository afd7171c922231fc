"""User-facing errors: one message that names the problem and one that names the fix."""

from __future__ import annotations


class AptuneError(Exception):
    """An error caused by the user's input. The CLI prints it without a traceback."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
