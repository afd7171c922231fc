"""Fresh processes without paying for the imports each time: fork them from a warm interpreter.

Why: the bench runs every training job and every inference-memory pass in its own process, so
that one job's heap cannot inflate another's peak memory. A new interpreter spends about 9 s
importing torch and transformers (`python -X importtime -c "import aptune.export"`: 8.6 s on
2 CPU cores), which the smoke suite paid 12 times. The server here imports them once and forks
one child per request. A child is as fresh as a new interpreter for what the bench measures: the
server has allocated no tensors, started no thread pool and touched no accelerator before it
forks (it only imports), and each measurement inside the child starts from its own baseline
(train/memory.py resets the high-water mark after loading).

One request at a time: the child's stdout and stderr go, merged, to the server's stdout, and the
server ends each request with one control line carrying the child's exit code.

The server is `python -c "from aptune.bench.fork_server import _serve; _serve()"`, reading
requests as JSON lines on stdin.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from typing import Callable

# What a child of the bench imports anyway: the CLI, the trainers and the model loading.
PRELOAD = ("torch", "aptune.cli", "aptune.pipeline", "aptune.export", "aptune.bench.fresh_memory")
_EXIT = "\x1eaptune-fork-server exit "  # starts the control line that closes a request
_SERVER_THREADS = os.environ.get("OMP_NUM_THREADS")  # as the server's OpenMP read it at import
# Not `-m aptune.bench.fork_server`: the package imports this module before runpy would run it.
_SERVER_MAIN = "from aptune.bench.fork_server import _serve; _serve()"


class ForkServer:
    """Runs `python -m MODULE ARGV...` in children forked from one warm interpreter."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_module(self, module: str, argv: list[str], on_line: Callable[[str], None],
                   env: dict[str, str] | None = None) -> int:
        """Run the module as __main__ with argv in a forked child, passing each line of its
        output (stdout and stderr merged) to on_line; returns its exit code."""
        proc = self._start()
        request = {"module": module, "argv": [str(a) for a in argv], "cwd": os.getcwd(),
                   "env": dict(os.environ if env is None else env)}
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            text, marker, code = line.partition(_EXIT)  # a last line without "\n" carries the marker
            if text:
                on_line(text)
            if marker:
                return int(code)
        self._proc = None  # the server died (killed, out of memory): the next request starts another
        return proc.wait() or 1

    def close(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # end of requests: the server exits
            self._proc.wait()
            self._proc = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-c", _SERVER_MAIN],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, bufsize=1,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self._proc


def _child(request: dict) -> None:
    """In the forked child: become `python -m MODULE ARGV...` with the request's env; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C, a job must not
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(1, 2)
        os.chdir(request["cwd"])
        threads = request["env"].get("OMP_NUM_THREADS")
        os.environ.clear()
        os.environ.update(request["env"])
        if threads and threads != _SERVER_THREADS:  # OpenMP read the variable when torch loaded
            import torch

            torch.set_num_threads(int(threads))
        sys.argv = [request["module"], *request["argv"]]
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception, then the exit code
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (ValueError, OSError):  # the module closed it (json.tool closes stdout)
                pass
        os._exit(code)


def _serve() -> None:
    from ..cpu_heap import fix_mmap_threshold

    fix_mmap_threshold()  # as the `aptune` command does, before torch allocates (cpu_heap.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the running child, which saves
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        os.write(1, f"{_EXIT}{os.waitstatus_to_exitcode(status)}\n".encode())


