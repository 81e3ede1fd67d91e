"""Tests of minicnn.cuda_kernels.

Two levels:

* NVRTC compile checks, which need no GPU: every CUDA source in
  ``KERNEL_SOURCES`` is compiled for the H100 (compute_90) through CuPy's
  NVRTC bindings, with the options ``cupy.RawModule`` passes (its include
  directories: the ``__half`` units include ``<cuda_fp16.h>``), and the PTX
  must define every expected kernel entry; the ``__half`` entries must do
  their arithmetic in float (no f16 instruction). The wrappers' choice of
  instantiation and the float16 GPU checks are in tests/test_cuda_half.py.
* Numerical checks against naive NumPy references, which run only where
  CuPy sees a GPU; the backward kernels (col2im, pooling backward) are also
  run twice on the same input and must give bit-identical results (they are
  gathers without atomics; tests/test_cuda_determinism.py checks the rule
  and emulates them without a GPU).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from minicnn.kernels import cuda as cuda_kernels

ARCH_OPTION = "--gpu-architecture=compute_90"


# --------------------------------------------------------------------------
# NVRTC access (no GPU needed)
# --------------------------------------------------------------------------


def _load_nvrtc():
    """Return CuPy's NVRTC bindings with the NVRTC library loaded, or skip."""
    try:
        # The nvidia-cuda-nvrtc wheel puts libnvrtc.so.* under
        # site-packages/nvidia/cu13/lib; cuda-pathfinder (a CuPy dependency)
        # finds it there. Loading it explicitly first makes the later
        # dlopen by soname inside CuPy succeed even if CuPy's own lookup
        # would not.
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvrtc")
    except Exception:
        pass  # fall back to CuPy's own lookup below
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception as exc:
        pytest.skip(f"cupy_backends.cuda.libs.nvrtc not importable: {exc!r}")
    try:
        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(
            f"NVRTC shared library cannot be loaded ({exc!r}); "
            "pip install nvidia-cuda-nvrtc"
        )
    return nvrtc


@pytest.fixture(scope="module")
def nvrtc():
    return _load_nvrtc()


# Options CuPy's compiler adds after cupy.RawModule's (compiler._compile_with_cache_cuda and
# _compile_using_nvrtc_no_warning), besides the architecture.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def _raw_module_options(unit):
    """The NVRTC options cupy.RawModule compiles ``unit`` with: minicnn's, behind CuPy's
    include directories (its own headers, CCCL and the CUDA include directory, where
    <cuda_fp16.h> is), then CuPy's additions. A ``__half`` unit is skipped where CuPy finds no
    CUDA include directory (cupy.RawModule could not compile it there either)."""
    try:
        from cupy._core import core
        options = core.assemble_cupy_compiler_options(tuple(cuda_kernels.NVRTC_OPTIONS))
    except Exception as exc:
        if unit.endswith(cuda_kernels.HALF_UNIT_SUFFIX):
            pytest.skip(f"CuPy finds no CUDA include directory for <cuda_fp16.h>: {exc!r}")
        options = tuple(cuda_kernels.NVRTC_OPTIONS)
    return (*options, *CUPY_ADDED_OPTIONS)


def _compile(nvrtc, source, name, name_expressions=(), options=()):
    """Compile ``source`` to PTX; return (ptx text, {expression: lowered})."""
    prog = nvrtc.createProgram(source, name, (), ())
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, [ARCH_OPTION, *options])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(
                f"{name} failed to compile:\n{nvrtc.getProgramLog(prog)}"
            ) from exc
        ptx = nvrtc.getPTX(prog)
        if isinstance(ptx, bytes):
            ptx = ptx.decode()
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in name_expressions}
        return ptx, lowered
    finally:
        nvrtc.destroyProgram(prog)


def test_every_compilation_unit_is_listed():
    assert set(cuda_kernels.KERNEL_SOURCES) == set(
        cuda_kernels.KERNEL_NAME_EXPRESSIONS
    )
    assert cuda_kernels.KERNEL_SOURCES, "no kernel sources registered"
    for unit, exprs in cuda_kernels.KERNEL_NAME_EXPRESSIONS.items():
        assert exprs, f"unit {unit!r} declares no kernels"
        for expr in exprs:
            assert expr.split("<")[0] in cuda_kernels.KERNEL_SOURCES[unit]


@pytest.mark.parametrize("unit", sorted(cuda_kernels.KERNEL_SOURCES))
def test_kernel_source_compiles_for_compute_90(nvrtc, unit):
    exprs = cuda_kernels.KERNEL_NAME_EXPRESSIONS[unit]
    ptx, lowered = _compile(
        nvrtc, cuda_kernels.KERNEL_SOURCES[unit], f"{unit}.cu", exprs,
        _raw_module_options(unit),
    )
    assert ptx.strip(), f"empty PTX for {unit}"
    assert ".target sm_90" in ptx
    for expr, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, f"{expr} ({mangled}) missing from PTX"


def test_every_kernel_has_a_float_double_and_half_instantiation():
    half = cuda_kernels.HALF_UNIT_SUFFIX
    for unit, source in cuda_kernels.KERNEL_SOURCES.items():
        if unit.endswith(half):
            continue
        kernels = {e.split("<")[0] for e in cuda_kernels.KERNEL_NAME_EXPRESSIONS[unit]}
        assert kernels == set(re.findall(r"__global__ void (\w+)\(", source))
        assert set(cuda_kernels.KERNEL_NAME_EXPRESSIONS[unit]) == {
            f"{k}<{t}>" for k in kernels for t in ("float", "double")}
        assert set(cuda_kernels.KERNEL_NAME_EXPRESSIONS[unit + half]) == {
            f"{k}<__half>" for k in kernels}
        # the half unit is the same source behind <cuda_fp16.h>; float and double need no
        # header at all, so they compile where CuPy finds no CUDA include directory
        assert cuda_kernels.KERNEL_SOURCES[unit + half].endswith(source)
        assert "#include <cuda_fp16.h>" in cuda_kernels.KERNEL_SOURCES[unit + half]
        assert "#include" not in source


def _entry_bodies(ptx, lowered):
    """{name expression: the PTX text of its .entry}."""
    bodies = {}
    for expr, mangled in lowered.items():
        start = ptx.index(f".entry {mangled}(")
        end = ptx.find(".entry ", start + 1)
        bodies[expr] = ptx[start:end if end >= 0 else None]
    return bodies


# Kernels that sum elements (and must do it in float for __half); im2col only copies and max
# pooling forward only compares.
SUMMING_KERNELS = {"col2im_nhwc", "maxpool_backward_nhwc", "avgpool_forward_nhwc",
                   "avgpool_backward_nhwc"}


@pytest.mark.parametrize("unit", [u for u in sorted(cuda_kernels.KERNEL_SOURCES)
                                  if u.endswith(cuda_kernels.HALF_UNIT_SUFFIX)])
def test_half_kernels_compute_in_float(nvrtc, unit):
    """The __half entries load halves, convert them to float (cvt.f32.f16), sum and compare in
    float, and round to half once (cvt.rn.f16.f32): no f16 arithmetic in the PTX."""
    exprs = cuda_kernels.KERNEL_NAME_EXPRESSIONS[unit]
    ptx, lowered = _compile(nvrtc, cuda_kernels.KERNEL_SOURCES[unit], f"{unit}.cu", exprs,
                            _raw_module_options(unit))
    for expr, body in _entry_bodies(ptx, lowered).items():
        arithmetic = re.findall(r"\b(?:add|sub|mul|div|fma|min|max|setp|neg)(?:\.\w+)*\.f16x?2?\b",
                                body)
        assert not arithmetic, f"{expr}: half arithmetic {sorted(set(arithmetic))}"
        kernel = expr.split("<")[0]
        if kernel in SUMMING_KERNELS:
            assert re.search(r"\badd(?:\.\w+)*\.f32\b", body), f"{expr}: no float sum"
        if kernel != "im2col_nhwc":
            assert re.search(r"\bcvt(?:\.\w+)*\.f32\.f16\b", body), f"{expr}: no half->float"
            assert re.search(r"\bcvt\.rn(?:\.\w+)*\.f16\.f32\b", body), f"{expr}: no rounding"
    # the float instantiations of the same unit do no conversion at all: float stays float
    base = unit[:-len(cuda_kernels.HALF_UNIT_SUFFIX)]
    exprs = cuda_kernels.KERNEL_NAME_EXPRESSIONS[base]
    ptx, lowered = _compile(nvrtc, cuda_kernels.KERNEL_SOURCES[base], f"{base}.cu", exprs,
                            _raw_module_options(base))
    for expr, body in _entry_bodies(ptx, lowered).items():
        if expr.endswith("<float>"):
            assert not re.search(r"\bcvt(?:\.\w+)*\.f(16|64)\.f32\b", body), expr


def test_broken_kernel_fails_to_compile(nvrtc):
    broken = (
        'extern "C" __global__ void broken(float* y) '
        "{ y[threadIdx.x] = undeclared_identifier_xyz; }"
    )
    with pytest.raises(RuntimeError) as info:
        _compile(nvrtc, broken, "broken.cu")
    assert "undeclared_identifier_xyz" in str(info.value)
    assert "error" in str(info.value)


def test_module_imports_without_touching_cupy():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MINICNN_BACKEND"}
    root = str(Path(cuda_kernels.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    code = (
        "import sys, minicnn.kernels.cuda; "
        "assert 'cupy' not in sys.modules, 'cupy imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_wrappers_validate_arguments_before_launching():
    """Argument errors surface on the host, so they are testable without a GPU."""
    cupy = pytest.importorskip("cupy")
    with pytest.raises(TypeError, match="cupy.ndarray"):
        cuda_kernels.im2col_nhwc(np.zeros((1, 4, 4, 1), np.float32),
                                 3, 3, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="larger than padded input"):
        cuda_kernels._output_size(4, 7, 1, 1, 1, "height")
    with pytest.raises(ValueError, match="stride"):
        cuda_kernels._output_size(4, 3, 0, 1, 1, "height")
    with pytest.raises(ValueError, match="padding must be smaller"):
        cuda_kernels._check_pool_padding(2, 2, 2, 0)
    assert cuda_kernels._output_size(7, 3, 2, 1, 2, "height") == 3
    assert cupy is not None


def test_pool_output_size_with_ceil_mode_is_the_layers():
    """The wrappers size ceil_mode outputs as the layers do (PyTorch's rule: ceil, less a last
    window starting in the right padding), with and without dilation; no GPU needed."""
    from minicnn.layers.pooling import pool_output_size
    for size, k, s, d, ceil in itertools.product(range(1, 12), range(1, 5), range(1, 4), (1, 2),
                                                 (False, True)):
        for p in range(k // 2 + 1):
            want = pool_output_size(size, k, s, p, d, ceil)
            if want < 1:
                continue
            assert cuda_kernels._output_size(size, k, s, p, d, "h", ceil) == want
    assert cuda_kernels._output_size(4, 2, 2, 1, 1, "h", True) == 3   # a 4th would start at 5


# --------------------------------------------------------------------------
# NumPy references (naive, independent of the kernels' index math)
# --------------------------------------------------------------------------


def out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def ref_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw):
    n, h, w, c = x.shape
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    xp[:, ph:ph + h, pw:pw + w] = x
    cols = np.zeros((n, ho, wo, kh, kw, c), x.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        cols[:, :, :, i, j] = xp[:, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                 j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return cols


def ref_col2im(cols, h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    n, ho, wo, _, _, c = cols.shape
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), cols.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        xp[:, i * dh:i * dh + sh * (ho - 1) + 1:sh,
           j * dw:j * dw + sw * (wo - 1) + 1:sw] += cols[:, :, :, i, j]
    return xp[:, ph:ph + h, pw:pw + w]


def _windows(x, kh, kw, sh, sw, ph, pw, fill):
    """(N, Ho, Wo, kh*kw, C) windows of x padded with ``fill``."""
    n, h, w, c = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    xp = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, x.dtype)
    xp[:, ph:ph + h, pw:pw + w] = x
    win = np.empty((n, ho, wo, kh * kw, c), x.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        win[:, :, :, i * kw + j] = xp[:, i:i + sh * (ho - 1) + 1:sh,
                                      j:j + sw * (wo - 1) + 1:sw]
    return win


def ref_maxpool(x, kh, kw, sh, sw, ph, pw):
    win = _windows(x, kh, kw, sh, sw, ph, pw, -np.inf)
    return win.max(axis=3), win.argmax(axis=3).astype(np.int32)


def ref_maxpool_backward(dy, argmax, h, w, kh, kw, sh, sw, ph, pw):
    n, ho, wo, c = dy.shape
    dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dy.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        dxp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += (
            dy * (argmax == i * kw + j))
    return dxp[:, ph:ph + h, pw:pw + w]


def ref_avgpool(x, kh, kw, sh, sw, ph, pw):
    return _windows(x, kh, kw, sh, sw, ph, pw, 0).sum(axis=3) / (kh * kw)


def ref_avgpool_backward(dy, h, w, kh, kw, sh, sw, ph, pw):
    n, ho, wo, c = dy.shape
    dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dy.dtype)
    for i, j in itertools.product(range(kh), range(kw)):
        dxp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += dy
    return dxp[:, ph:ph + h, pw:pw + w] / (kh * kw)


def test_references_are_adjoint():
    """<im2col(x), g> == <x, col2im(g)>: the references agree with each other."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    for geom in CONV_CASES:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom
        cols = ref_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw)
        g = rng.standard_normal(cols.shape)
        back = ref_col2im(g, 7, 6, kh, kw, sh, sw, ph, pw, dh, dw)
        assert np.isclose((cols * g).sum(), (x * back).sum())


# --------------------------------------------------------------------------
# GPU checks against the references
# --------------------------------------------------------------------------


def _gpu_cupy():
    try:
        import cupy
    except Exception as exc:
        pytest.skip(f"cupy not importable: {exc!r}")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        pytest.skip(f"no usable GPU: {exc!r}")
    if count < 1:
        pytest.skip("no GPU visible to CuPy")
    return cupy


@pytest.fixture(scope="module")
def cp():
    return _gpu_cupy()


DTYPES = [np.float32, np.float64]

# ((kh, kw), (sh, sw), (ph, pw), (dh, dw))
CONV_CASES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 3), (3, 2), (2, 1), (1, 1)),
    ((3, 2), (1, 2), (2, 0), (2, 1)),
    ((3, 3), (2, 1), (1, 2), (2, 2)),
    ((5, 5), (3, 3), (2, 2), (1, 1)),
]

# ((kh, kw), (sh, sw), (ph, pw)); padding < kernel always.
POOL_CASES = [
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (2, 2), (1, 1)),  # overlapping windows with padding
    ((3, 3), (1, 1), (1, 1)),
    ((2, 3), (1, 2), (1, 2)),
    ((3, 2), (3, 1), (2, 0)),
    ((1, 1), (2, 2), (0, 0)),
]

SHAPES = [(2, 7, 6, 3), (1, 9, 11, 5), (3, 5, 5, 1)]


def _assert_bit_identical(a, b):
    """Two device arrays hold the same bytes (not merely close values)."""
    a, b = a.get(), b.get()
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), "kernel result differs between two runs"


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {
        "rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", CONV_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_im2col_col2im_match_numpy(cp, shape, geom, dtype):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom
    n, h, w, c = shape
    if out_size(h, kh, sh, ph, dh) < 1 or out_size(w, kw, sw, pw, dw) < 1:
        pytest.skip("window larger than padded input")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    cols = cuda_kernels.im2col_nhwc(cp.asarray(x), kh, kw, sh, sw, ph, pw, dh, dw)
    expected = ref_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw)
    assert cols.dtype == dtype and cols.shape == expected.shape
    np.testing.assert_array_equal(cp.asnumpy(cols), expected)

    g = rng.standard_normal(expected.shape).astype(dtype)
    back = cuda_kernels.col2im_nhwc(cp.asarray(g), h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_allclose(
        cp.asnumpy(back), ref_col2im(g, h, w, kh, kw, sh, sw, ph, pw, dh, dw),
        **_tol(dtype))
    again = cuda_kernels.col2im_nhwc(cp.asarray(g), h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    _assert_bit_identical(back, again)


def test_im2col_col2im_reuse_out_buffers(cp):
    rng = np.random.default_rng(2)
    x = cp.asarray(rng.standard_normal((2, 6, 6, 4)).astype(np.float32))
    buf = cp.full((2, 3, 3, 3, 3, 4), cp.nan, dtype=cp.float32)
    cols = cuda_kernels.im2col_nhwc(x, 3, 3, 2, 2, 1, 1, 1, 1, out=buf)
    assert cols is buf
    np.testing.assert_array_equal(
        cp.asnumpy(cols), ref_im2col(cp.asnumpy(x), 3, 3, 2, 2, 1, 1, 1, 1))
    xbuf = cp.full((2, 6, 6, 4), cp.nan, dtype=cp.float32)
    back = cuda_kernels.col2im_nhwc(cols, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, out=xbuf)
    assert back is xbuf
    np.testing.assert_allclose(
        cp.asnumpy(back),
        ref_col2im(cp.asnumpy(cols), 6, 6, 3, 3, 2, 2, 1, 1, 1, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        cuda_kernels.im2col_nhwc(x, 3, 3, 1, 1, 1, 1, 1, 1, out=buf)


def test_im2col_accepts_non_contiguous_input(cp):
    rng = np.random.default_rng(3)
    x_nchw = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    x_view = cp.asarray(x_nchw).transpose(0, 2, 3, 1)  # NHWC view, not contiguous
    cols = cuda_kernels.im2col_nhwc(x_view, 3, 3, 1, 1, 1, 1, 1, 1)
    np.testing.assert_array_equal(
        cp.asnumpy(cols), ref_im2col(x_nchw.transpose(0, 2, 3, 1), 3, 3, 1, 1, 1, 1, 1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_matches_numpy(cp, shape, geom, dtype, ties):
    (kh, kw), (sh, sw), (ph, pw) = geom
    n, h, w, c = shape
    if out_size(h, kh, sh, ph) < 1 or out_size(w, kw, sw, pw) < 1:
        pytest.skip("window larger than padded input")
    rng = np.random.default_rng(4)
    if ties:  # few distinct values: many windows hold several maxima
        x = rng.integers(-2, 2, size=shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    y, arg = cuda_kernels.maxpool_forward_nhwc(cp.asarray(x), kh, kw, sh, sw, ph, pw)
    y_ref, arg_ref = ref_maxpool(x, kh, kw, sh, sw, ph, pw)
    assert y.dtype == dtype and arg.dtype == np.int32
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    np.testing.assert_array_equal(cp.asnumpy(arg), arg_ref)

    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = cuda_kernels.maxpool_backward_nhwc(cp.asarray(dy), arg, h, w, kh, kw, sh, sw, ph, pw)
    assert dx.dtype == dtype and dx.shape == shape
    np.testing.assert_allclose(
        cp.asnumpy(dx), ref_maxpool_backward(dy, arg_ref, h, w, kh, kw, sh, sw, ph, pw),
        **_tol(dtype))
    y2, arg2 = cuda_kernels.maxpool_forward_nhwc(cp.asarray(x), kh, kw, sh, sw, ph, pw)
    _assert_bit_identical(y, y2)
    _assert_bit_identical(arg, arg2)
    dx2 = cuda_kernels.maxpool_backward_nhwc(cp.asarray(dy), arg2, h, w, kh, kw, sh, sw, ph, pw)
    _assert_bit_identical(dx, dx2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_avgpool_matches_numpy(cp, shape, geom, dtype):
    (kh, kw), (sh, sw), (ph, pw) = geom
    n, h, w, c = shape
    if out_size(h, kh, sh, ph) < 1 or out_size(w, kw, sw, pw) < 1:
        pytest.skip("window larger than padded input")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    y = cuda_kernels.avgpool_forward_nhwc(cp.asarray(x), kh, kw, sh, sw, ph, pw)
    np.testing.assert_allclose(
        cp.asnumpy(y), ref_avgpool(x, kh, kw, sh, sw, ph, pw), **_tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = cuda_kernels.avgpool_backward_nhwc(cp.asarray(dy), h, w, kh, kw, sh, sw, ph, pw)
    np.testing.assert_allclose(
        cp.asnumpy(dx), ref_avgpool_backward(dy, h, w, kh, kw, sh, sw, ph, pw),
        **_tol(dtype))
    dx2 = cuda_kernels.avgpool_backward_nhwc(cp.asarray(dy), h, w, kh, kw, sh, sw, ph, pw)
    _assert_bit_identical(dx, dx2)


def test_maxpool_reuses_buffers_and_rejects_bad_padding(cp):
    x = cp.asarray(np.random.default_rng(6).standard_normal((1, 4, 4, 2)).astype(np.float32))
    y_buf = cp.empty((1, 2, 2, 2), cp.float32)
    a_buf = cp.empty((1, 2, 2, 2), cp.int32)
    y, arg = cuda_kernels.maxpool_forward_nhwc(x, 2, 2, 2, 2, 0, 0, out=y_buf, argmax=a_buf)
    assert y is y_buf and arg is a_buf
    with pytest.raises(ValueError):
        cuda_kernels.maxpool_forward_nhwc(x, 2, 2, 2, 2, 2, 0)


def test_large_grid_stride(cp):
    """More elements than one launch's threads: the grid-stride loop covers them."""
    n = cuda_kernels._MAX_BLOCKS * cuda_kernels._BLOCK // (4 * 4 * 3) + 7
    x = cp.arange(n * 4 * 4 * 3, dtype=cp.float32).reshape(n, 4, 4, 3) % 97
    y, _ = cuda_kernels.maxpool_forward_nhwc(x, 1, 1, 1, 1, 0, 0)
    assert bool((y == x).all())


def test_backward_kernels_are_bit_identical_across_runs(cp):
    """Overlapping windows (up to nine contributions per pixel) over many thread blocks: three
    runs of each backward kernel give the same bytes, as a resumed run needs."""
    rng = np.random.default_rng(7)
    n, h, w, c = 64, 16, 16, 8
    cols = cp.asarray(rng.standard_normal((n, 16, 16, 3, 3, c)).astype(np.float32))
    runs = [cuda_kernels.col2im_nhwc(cols, h, w, 3, 3, 1, 1, 1, 1, 1, 1) for _ in range(3)]
    for other in runs[1:]:
        _assert_bit_identical(runs[0], other)
    x = cp.asarray(rng.integers(-2, 2, size=(n, h, w, c)).astype(np.float32))  # many ties
    y, arg = cuda_kernels.maxpool_forward_nhwc(x, 3, 3, 1, 1, 1, 1)
    dy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    runs = [cuda_kernels.maxpool_backward_nhwc(dy, arg, h, w, 3, 3, 1, 1, 1, 1)
            for _ in range(3)]
    runs += [cuda_kernels.avgpool_backward_nhwc(dy, h, w, 3, 3, 1, 1, 1, 1) for _ in range(3)]
    for first, other in ((runs[0], runs[1]), (runs[0], runs[2]), (runs[3], runs[4]),
                         (runs[3], runs[5])):
        _assert_bit_identical(first, other)


# MaxPool2D / AvgPool2D options on the GPU against the same layers on NumPy (which
# tests/test_pooling_options.py checks against PyTorch and tests/reference.py).
POOL_OPTION_CASES = [
    ("max", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max", dict(kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=2, ceil_mode=True)),
    ("max", dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("max", dict(kernel_size=3, stride=1, padding=0, dilation=(2, 1))),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("avg", dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1), ceil_mode=True,
                 count_include_pad=False)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, kwargs", POOL_OPTION_CASES)
def test_pool_options_match_the_numpy_layers(cp, kind, kwargs, dtype):
    from minicnn.layers.pooling import AvgPool2D, MaxPool2D
    make = MaxPool2D if kind == "max" else AvgPool2D
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    host, device = make(**kwargs), make(**kwargs)
    y = host.forward(x)
    y_gpu = device.forward(cp.asarray(x))
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y, **_tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = host.backward(dy)
    dx_gpu = device.backward(cp.asarray(dy))
    np.testing.assert_allclose(cp.asnumpy(dx_gpu), dx, **_tol(dtype))
    device.forward(cp.asarray(x))
    _assert_bit_identical(dx_gpu, device.backward(cp.asarray(dy)))
