"""The bench's fork server: children forked from one warm interpreter behave like `python -m`."""

from __future__ import annotations

import pytest

from aptune.bench.fork_server import ForkServer


@pytest.fixture(scope="module")
def server():
    with ForkServer() as warm:
        yield warm


def run(server: ForkServer, module: str, *argv: str) -> tuple[int, str]:
    lines: list[str] = []
    code = server.run_module(module, list(argv), lines.append)
    return code, "".join(lines)


def test_a_child_runs_in_the_callers_folder_with_its_output_and_exit_code(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.json").write_text('{"a": 1}')
    code, out = run(server, "json.tool", "in.json")  # a relative path: the request's cwd
    assert code == 0 and '"a": 1' in out
    code, out = run(server, "json.tool", "missing.json")
    assert code == 2 and "missing.json" in out  # argparse's error, on stderr, merged in order


def test_the_aptune_command_through_the_server(server, monkeypatch):
    code, out = run(server, "aptune", "recipes")
    assert code == 0 and "cpu/sst2-apt" in out
    monkeypatch.setenv("APTUNE_DATA_DIR", "/nonexistent")  # each request carries the caller's env
    code, out = run(server, "aptune", "train", "--task", "no-such-task")
    assert code == 2 and "aptune: error" in out and "Traceback" not in out


def test_a_dead_server_is_replaced_on_the_next_request(server):
    server._proc.kill()
    server._proc.wait()
    code, out = run(server, "aptune", "recipes")
    assert code == 0 and "cpu/sst2-apt" in out
