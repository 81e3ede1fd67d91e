"""The error function ``erf``, element-wise, for NumPy and CuPy arrays (NumPy has none, and
SciPy is not a dependency); GELU needs it.

    erf(x) = 2/sqrt(pi) * integral from 0 to x of exp(-t^2) dt,   odd, |erf| < 1

Computed in the input's own dtype to that dtype's rounding (worst error about 4 ulp of
float64, 3 ulp of float32, against ``math.erf``). float64, from two classical expansions of
a = |x|:

* a <= 2: the series with positive terms (no cancellation)
  ``erf(a) = 2/sqrt(pi) * a * exp(-a^2) * sum_n (2 a^2)^n / (1 * 3 * ... * (2n + 1))``;
* a > 2: ``erf(a) = 1 - erfc(a)`` with Laplace's continued fraction
  ``erfc(a) = exp(-a^2) / sqrt(pi) / (a + (1/2) / (a + (2/2) / (a + (3/2) / (a + ...))))``,
  evaluated bottom-up at a fixed depth. Past 2, erfc(a) < 0.005, so its error hardly
  reaches erf's; past 6, erf rounds to 1.

float32 (GELU's hot path) needs fewer operations: ``a * P(a^2)`` for a <= 1 and
``1 - exp(-a^2) * Q(a)`` for 1 < a <= 4 (Q approximates exp(a^2) erfc(a); past 4 erf rounds to
1 in float32), with P and Q interpolated at Chebyshev points from ``math.erf`` on first use.
The elements past the cut (few, for data near 0) are computed apart. On CuPy,
``cupyx.scipy.special.erf`` is used when it imports.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy
from numpy.polynomial import Chebyshev, Polynomial

from minicnn.core import backend

__all__ = ["erf"]

_CUT, _SERIES_TERMS, _FRACTION_DEPTH = 2.0, 30, 40
"""float64: where the series hands over to the continued fraction, and their lengths (the
shortest that reach float64 rounding on a dense grid; the tests check it)."""
_CUT32, _P_DEGREE, _Q_DEGREE, _ONE32 = 1.0, 6, 10, 4.0
"""float32: the cut between P and Q, their degrees, and where erf rounds to 1."""


def _double_factorial_reciprocals(count: int) -> list[float]:
    """1 / (1 * 3 * ... * (2n + 1)) for n = 0 .. count - 1."""
    out, product = [], 1.0
    for n in range(count):
        product *= 2 * n + 1
        out.append(1.0 / product)
    return out


def _series(a: Any, terms: int) -> Any:
    """erf(a) for 0 <= a <= 2 by the positive series (Horner in u = 2 a^2)."""
    c = a.dtype.type
    coefficients = _double_factorial_reciprocals(terms)
    u = a * a
    gauss = backend.get_array_module(a).exp(-u)
    u *= c(2)
    s = u * c(coefficients[-1])
    for k in reversed(coefficients[1:-1]):
        s += c(k)
        s *= u
    s += c(1)
    s *= a
    s *= gauss
    s *= c(2 / math.sqrt(math.pi))
    return s


def _complement(a: Any, depth: int) -> Any:
    """erfc(a) for a >= 2 by the continued fraction at ``depth``."""
    c = a.dtype.type
    xp = backend.get_array_module(a)
    f = a.copy()
    for n in range(depth, 0, -1):
        f = c(n / 2) / f
        f += a
    return xp.exp(-(a * a)) / (f * c(math.sqrt(math.pi)))


@functools.cache
def _float32_polynomials() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Power-basis coefficients (lowest first) of P(t) ~ erf(sqrt t) / sqrt t on [0, 1] and
    Q(a) ~ exp(a^2) erfc(a) on [1, 4], interpolated at Chebyshev points in float64."""
    def p(t: Any) -> Any:
        return numpy.array([math.erf(math.sqrt(v)) / math.sqrt(v) if v > 0 else
                            2 / math.sqrt(math.pi) for v in numpy.atleast_1d(t)])

    def q(a: Any) -> Any:
        return numpy.array([math.exp(v * v) * math.erfc(v) for v in numpy.atleast_1d(a)])

    fits = (Chebyshev.interpolate(p, _P_DEGREE, domain=[0.0, _CUT32 ** 2]),
            Chebyshev.interpolate(q, _Q_DEGREE, domain=[_CUT32, _ONE32]))
    p_coef, q_coef = (tuple(float(v) for v in f.convert(kind=Polynomial).coef) for f in fits)
    return p_coef, q_coef


def _horner(coefficients: tuple[float, ...], t: Any) -> Any:
    c = t.dtype.type
    s = t * c(coefficients[-1])
    for k in reversed(coefficients[1:-1]):
        s += c(k)
        s *= t
    s += c(coefficients[0])
    return s


def _erf_float32(x: Any) -> Any:
    """``x P(x^2)`` everywhere (odd: no sign to restore), then ``1 - exp(-a^2) Q(a)`` with the
    sign of x for the elements past the cut, gathered by flat index (a boolean mask is slower)."""
    xp = backend.get_array_module(x)
    c = x.dtype.type
    p_coef, q_coef = _float32_polynomials()
    with numpy.errstate(over="ignore", invalid="ignore"):    # huge |x|: replaced below
        t = x * x
        out = _horner(p_coef, t)
        out *= x
    if backend.is_cupy_array(x):
        b = xp.clip(xp.abs(x), c(_CUT32), c(_ONE32))
        tail = xp.copysign(c(1) - xp.exp(-(b * b)) * _horner(q_coef, b), x)
        return xp.where(t > c(_CUT32 ** 2), tail, out)
    far = xp.flatnonzero(~(t <= c(_CUT32 ** 2)))          # NaN goes this way too
    if far.size:
        xf = xp.take(x, far)
        b = xp.minimum(xp.abs(xf), c(_ONE32))
        xp.put(out, far, xp.copysign(c(1) - xp.exp(-(b * b)) * _horner(q_coef, b), xf))
    return out


def erf(x: Any) -> Any:
    """The error function of each element of the float array ``x`` (NumPy or CuPy), same
    shape and dtype; float16 is computed in float32 and rounded."""
    xp = backend.get_array_module(x)
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"erf: expected a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if backend.is_cupy_array(x):
        try:
            from cupyx.scipy.special import erf as cupy_erf
        except ImportError:
            pass
        else:
            return cupy_erf(x)
    if x.dtype == xp.float16:
        return erf(x.astype(xp.float32)).astype(xp.float16)
    if x.dtype == xp.float32:
        return _erf_float32(x)
    c = x.dtype.type
    a = xp.abs(x)
    out = _series(xp.minimum(a, c(_CUT)), _SERIES_TERMS)
    far = a > c(_CUT)
    # erfc(10) ~ 2e-45: clipping there changes nothing and keeps a^2 finite
    if backend.is_cupy_array(x):
        tail = _complement(xp.clip(a, c(_CUT), c(10)), _FRACTION_DEPTH)
        out = xp.where(far, c(1) - tail, out)
    elif far.any():                      # only the few elements past the cut
        out[far] = c(1) - _complement(xp.minimum(a[far], c(10)), _FRACTION_DEPTH)
    return xp.copysign(out, x)
