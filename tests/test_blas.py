"""minicnn.blas: OpenBLAS's thread count and kernel name."""
import pytest

from minicnn.kernels import blas


def test_blas_thread_count_round_trips():
    before = blas.set_blas_threads(1)
    if before is None:
        pytest.skip("no OpenBLAS thread control in this NumPy build")
    try:
        assert blas.set_blas_threads(before) == 1
    finally:
        blas.set_blas_threads(before)


def test_blas_kernels_name_the_core_and_an_environment_override(monkeypatch):
    name = blas.corename()
    if name is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert blas.kernels() == f"{name} kernels, forced by OPENBLAS_CORETYPE=Haswell"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert blas.kernels() == f"{name} kernels"


def test_slow_kernels_note_only_when_the_environment_holds_back_an_avx512_cpu(monkeypatch):
    monkeypatch.setattr(blas, "corename", lambda: "Haswell")
    monkeypatch.setattr(blas, "cpu_flags", lambda: blas.AVX512_FLAGS | {"avx2"})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    note = blas.slow_kernels_note()
    assert note is not None and "OPENBLAS_CORETYPE=Haswell" in note and "Haswell kernels" in note
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert blas.slow_kernels_note() is None                  # OpenBLAS chose for itself
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(blas, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert blas.slow_kernels_note() is None                  # no AVX-512 to miss
    monkeypatch.setattr(blas, "cpu_flags", lambda: blas.AVX512_FLAGS)
    monkeypatch.setattr(blas, "corename", lambda: "SkylakeX")
    assert blas.slow_kernels_note() is None                  # already AVX-512 kernels
