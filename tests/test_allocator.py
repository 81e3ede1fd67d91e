"""minicnn.allocator: never applied on import; applied once on request (the CLI requests it
for the commands that run models); the MINICNN_KEEP_FREED_MEMORY=0 opt-out is honoured."""
import os
import subprocess
import sys

import pytest

from minicnn.cli import commands as cli
from minicnn.kernels import allocator

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc tuning is Linux-only")


def run_python(code: str, **env: str) -> list[str]:
    """The whitespace-separated words a fresh interpreter prints running ``code``."""
    environ = {k: v for k, v in os.environ.items() if k != "MINICNN_KEEP_FREED_MEMORY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**environ, **env})
    return out.stdout.split()


def test_import_leaves_the_allocator_alone():
    code = "import minicnn, minicnn.allocator as a, minicnn.cli; print(a._applied)"
    assert run_python(code) == ["False"]


@linux_only
def test_thresholds_set_once_on_request():
    code = ("import minicnn, minicnn.allocator as a; "
            "print(a._applied, a.keep_freed_memory(), a.keep_freed_memory(), a._applied)")
    words = run_python(code)
    if words != ["False", "True", "True", "True"]:   # a Linux libc without mallopt (musl)
        pytest.skip(f"mallopt not available: {' '.join(words)}")
    assert allocator.MMAP_THRESHOLD <= 32 << 20    # glibc refuses larger mmap thresholds


def test_opt_out_respected():
    code = "import minicnn.allocator as a; print(a.keep_freed_memory(), a._applied)"
    assert run_python(code, MINICNN_KEEP_FREED_MEMORY="0") == ["False", "False"]


@pytest.mark.parametrize("command, argv, applied", [
    ("train", [], True), ("evaluate", ["m.npz"], True), ("predict", ["m.npz", "0"], True),
    ("bench", [], True), ("summary", ["--model", "lenet5"], False)])
def test_cli_applies_it_for_commands_that_run_models(monkeypatch, command, argv, applied):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(cli, f"cmd_{command}", lambda args: calls.append(command) or 0)
    assert cli.main([command, *argv]) == 0
    assert calls == (["tuned", command] if applied else [command])   # tuned before it runs


def test_cli_usage_errors_leave_it_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert cli.main([]) == 2
    assert calls == []
