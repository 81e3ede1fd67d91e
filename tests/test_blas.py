"""minicnn.blas: OpenBLAS's thread count and kernel name."""
import pytest

from minicnn import blas


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
