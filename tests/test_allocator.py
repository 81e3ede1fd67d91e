"""minicnn.allocator: glibc's thresholds are raised once, and the opt-out is honoured."""
import subprocess
import sys

import pytest

from minicnn import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_thresholds_set_once_and_opt_out_respected():
    code = "import minicnn, minicnn.allocator as a; print(a._applied, a.keep_freed_memory())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"MINICNN_KEEP_FREED_MEMORY": "0", "PATH": ""})
    assert off.stdout.split() == ["False", "False"]
    if on.stdout.split() != ["True", "True"]:       # a Linux libc without mallopt (musl)
        pytest.skip(f"mallopt not available: {on.stdout.strip()}")
    assert allocator.MMAP_THRESHOLD <= 32 << 20    # glibc refuses larger mmap thresholds
