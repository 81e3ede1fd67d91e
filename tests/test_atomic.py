"""Tests for minicnn.atomic: content, failure leaves the old file, no temp files, fsyncs, mode."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from minicnn.core import atomic
from minicnn.core.atomic import atomic_write, atomic_write_bytes


def test_target_gets_the_content(tmp_path):
    path = tmp_path / "out.bin"
    assert atomic_write(path, lambda f: f.write(b"hello")) == path
    assert path.read_bytes() == b"hello"
    atomic_write_bytes(str(path), b"again")                 # replaces; str paths work too
    assert path.read_bytes() == b"again"
    assert os.listdir(tmp_path) == ["out.bin"]              # no temp file left after success


def test_failing_callback_leaves_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half of the new cont")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_interrupt_is_cleaned_up_and_reraised(tmp_path):
    def interrupted(f):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.bin", interrupted)
    assert os.listdir(tmp_path) == []                       # no target, no temp file


def test_temp_file_is_hidden_beside_the_target(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.npz", lambda f: seen.extend(os.listdir(tmp_path)))
    [name] = seen                                           # while writing: only the temp file
    assert name.startswith(".m.npz.") and name.endswith(".tmp")
    assert os.listdir(tmp_path) == ["m.npz"]


def test_fsyncs_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd")
                      else fd)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert len(synced) == 2
    if os.path.isdir("/proc/self/fd"):                      # Linux: check what was synced
        assert os.path.basename(synced[0]).startswith(".out.bin.")   # the temp file
        assert synced[1] == str(tmp_path)                  # then the folder


def test_folder_fsync_failure_is_ignored(tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def fsync_refusing_folders(fd):
        calls.append(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError("fsync on a folder not supported")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync_refusing_folders)
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert len(calls) == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_permissions(tmp_path):
    old_umask = os.umask(0o077)                              # mode is set, not umask-filtered
    try:
        path = atomic_write_bytes(tmp_path / "out.bin", b"x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    atomic_write_bytes(path, b"y", mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_relative_path_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_bytes("plain.txt", b"z")
    assert (tmp_path / "plain.txt").read_bytes() == b"z"


def test_imports_nothing_from_minicnn():
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location("
            f"'atomic_alone', {atomic.__file__!r}); m = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(m); "
            "print(sorted(k for k in sys.modules if k.startswith('minicnn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_write_removes_leftovers_of_an_earlier_killed_write(tmp_path):
    target = tmp_path / "last.npz"
    stale = [tmp_path / ".last.npz.abcd1234.tmp", tmp_path / ".last.npz.zz_9qq00.tmp"]
    keep = [tmp_path / ".last.npz.not-random.tmp", tmp_path / ".model.npz.abcd1234.tmp",
            tmp_path / "last.npz.abcd1234.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half")
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
