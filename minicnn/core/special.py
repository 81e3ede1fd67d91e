"""The error function ``erf`` and the standard normal CDF ``normal_cdf``, element-wise, for
NumPy and CuPy arrays (NumPy has neither, and SciPy is not a dependency); GELU needs them.

    erf(x) = 2/sqrt(pi) * integral from 0 to x of exp(-t^2) dt,   odd, |erf| < 1
    normal_cdf(x) = (1 + erf(x / sqrt 2)) / 2,  computed without that cancellation in the
                    lower tail (there it is exp(-x^2/2) times a smooth factor)

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
The elements past the cut (few, for data near 0) are gathered and computed apart.

``normal_cdf`` uses the same pieces: ``1/2 + x R(x^2)`` (R is P rescaled) near 0, and
``exp(-x^2/2) * Q(|x| / sqrt 2) / 2`` (or the continued fraction) in the tails, with
exp(-x^2/2) computed from a split of x^2 so its rounding is not amplified. Worst errors:
9 ulp in float32 (down to 1e-35); in float64 a few ulp except between -2.8 and -1, where
``1 + erf`` cancels (up to about 450 ulp, 1e-13 relative). On CuPy, ``erf`` is
``cupyx.scipy.special.erf`` when that imports.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

from minicnn.core import backend

__all__ = ["erf", "normal_cdf", "ignoring_overflow"]

_CUT, _SERIES_TERMS, _FRACTION_DEPTH = 2.0, 30, 40
"""float64: where the series hands over to the continued fraction, and their lengths (the
shortest that reach float64 rounding on a dense grid; the tests check it)."""
_CUT32, _LOW32, _ONE32, _P_DEGREE, _Q_DEGREE = 1.5, 1.0, 4.0, 8, 10
"""float32: P covers a <= _CUT32 (erf's cut); Q covers [_LOW32, _ONE32], from where
normal_cdf's lower tail starts (below it 1/2 + x R would cancel) to where erf rounds to 1;
their degrees (erf reaches 3 ulp with them, normal_cdf 9, on a dense grid)."""


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


def _fraction(a: Any, depth: int) -> Any:
    """exp(a^2) erfc(a) for a >= 2 by the continued fraction at ``depth``."""
    c = a.dtype.type
    f = a.copy()
    for n in range(depth, 0, -1):
        f = c(n / 2) / f
        f += a
    return c(1) / (f * c(math.sqrt(math.pi)))


def _complement(a: Any, depth: int) -> Any:
    """erfc(a) for a >= 2."""
    return backend.get_array_module(a).exp(-(a * a)) * _fraction(a, depth)


def _half_gauss(x: Any) -> Any:
    """exp(-x^2 / 2) to the dtype's rounding for |x| up to 40: x^2 / 2 is split as
    h^2 / 2 (exact: h is x cut to a few bits) + (x - h)(x + h) / 2, so the rounding of x^2,
    which exp would multiply by x^2 / 2, never happens."""
    xp = backend.get_array_module(x)
    c = x.dtype.type
    scale = c(2.0 ** (16 if x.dtype.itemsize >= 8 else 8))
    h = xp.trunc(x * scale) / scale
    return xp.exp(h * h * c(-0.5)) * xp.exp((x - h) * (x + h) * c(-0.5))


def ignoring_overflow(xp: Any) -> contextlib.AbstractContextManager[Any]:
    """``xp.errstate`` ignoring overflow and invalid values where the module has one (NumPy),
    for computations whose inf/NaN elements are replaced afterwards; else nothing."""
    errstate = getattr(xp, "errstate", None)
    return errstate(over="ignore", invalid="ignore") if errstate else contextlib.nullcontext()


def _chebyshev_fit(f: Callable[[float], float], degree: int, lo: float, hi: float,
                   in_unit_variable: bool = False) -> tuple[float, ...]:
    """Power-basis coefficients (lowest first) of the polynomial interpolating f at the
    degree + 1 Chebyshev points of [lo, hi]: in t itself, or with ``in_unit_variable`` in
    u = (2t - lo - hi) / (hi - lo), which spans [-1, 1]. Python floats: done once, on the host."""
    n = degree + 1
    nodes = [math.cos(math.pi * (j + 0.5) / n) for j in range(n)]
    values = [f(lo + (hi - lo) * (u + 1) / 2) for u in nodes]
    cheb = [2 / n * sum(v * math.cos(math.pi * k * (j + 0.5) / n) for j, v in enumerate(values))
            for k in range(n)]
    cheb[0] /= 2
    coefficients = [0.0] * n                   # sum_k cheb[k] T_k(u), T_{k+1} = 2u T_k - T_{k-1}
    previous, current = [1.0], [0.0, 1.0]
    for k in range(n):
        basis = previous if k == 0 else current
        for i, b in enumerate(basis):
            coefficients[i] += cheb[k] * b
        if k >= 1:
            following = [2 * b for b in [0.0] + current]
            for i, b in enumerate(previous):
                following[i] -= b
            previous, current = current, following
    if in_unit_variable:
        return tuple(coefficients)
    scale, shift = 2 / (hi - lo), -(hi + lo) / (hi - lo)          # u = scale * t + shift
    in_t = [coefficients[-1]]
    for a in reversed(coefficients[:-1]):      # Horner on polynomials: in_t (scale t + shift) + a
        times_t = [0.0] + [scale * c for c in in_t]
        in_t = [shift * c for c in in_t] + [0.0]
        in_t = [x + y for x, y in zip(in_t, times_t)]
        in_t[0] += a
    return tuple(in_t)


@functools.cache
def _float32_polynomials() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Power-basis coefficients (lowest first) of P(t) ~ erf(sqrt t) / sqrt t on [0, 1.5^2]
    and of Q ~ exp(a^2) erfc(a) on a in [1, 4] (as a polynomial in u, see ``_q``),
    interpolated at Chebyshev points from ``math.erf``."""
    def p(t: float) -> float:
        return math.erf(math.sqrt(t)) / math.sqrt(t) if t > 0 else 2 / math.sqrt(math.pi)

    def q(a: float) -> float:
        return math.exp(a * a) * math.erfc(a)

    # Q in u in [-1, 1]: in a itself the power basis cancels badly in float32
    return (_chebyshev_fit(p, _P_DEGREE, 0.0, _CUT32 ** 2),
            _chebyshev_fit(q, _Q_DEGREE, _LOW32, _ONE32, in_unit_variable=True))


_Q_SCALE, _Q_SHIFT = 2 / (_ONE32 - _LOW32), (_ONE32 + _LOW32) / (_ONE32 - _LOW32)
"""u = a * _Q_SCALE - _Q_SHIFT maps [_LOW32, _ONE32] onto [-1, 1]."""


def _q(coefficients: tuple[float, ...], a: Any) -> Any:
    """Q(a) ~ exp(a^2) erfc(a) for a in [_LOW32, _ONE32]."""
    c = a.dtype.type
    return _horner(coefficients, a * c(_Q_SCALE) - c(_Q_SHIFT))


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
    with ignoring_overflow(xp):                               # huge |x|: replaced below
        t = x * x
        out = _horner(p_coef, t)
        out *= x
    if backend.is_cupy_array(x):
        b = xp.clip(xp.abs(x), c(_CUT32), c(_ONE32))
        tail = xp.copysign(c(1) - xp.exp(-(b * b)) * _q(q_coef, b), x)
        return xp.where(t > c(_CUT32 ** 2), tail, out)
    far = xp.flatnonzero(~(t <= c(_CUT32 ** 2)))          # NaN goes this way too
    if far.size:
        xf = xp.take(x, far)
        b = xp.minimum(xp.abs(xf), c(_ONE32))
        xp.put(out, far, xp.copysign(c(1) - xp.exp(-(b * b)) * _q(q_coef, b), xf))
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


def _normal_cdf_float32(x: Any) -> Any:
    """``1/2 + x R(x^2)`` (R from P) for -sqrt 2 <= x <= 1.5 sqrt 2; elsewhere, with
    a = |x| / sqrt 2, the tail q = exp(-x^2 / 2) Q(a) / 2 (the continued fraction in float64
    for the rare a > 4) is Phi for x < 0 and 1 - q for x > 0."""
    xp = backend.get_array_module(x)
    c = x.dtype.type
    p_coef, q_coef = _float32_polynomials()
    # Phi(x) - 1/2 = (x / sqrt 2) P(x^2 / 2) / 2: P's coefficients scaled once
    r_coef = tuple(v / 2 ** k / (2 * math.sqrt(2)) for k, v in enumerate(p_coef))
    with ignoring_overflow(xp):                               # huge |x|: replaced below
        t = x * x
        out = _horner(r_coef, t)
        out *= x
    out += c(0.5)
    # the tails: x < -sqrt 2 (below, 1/2 + x R cancels) and x > 1.5 sqrt 2 (past P's range)
    low, high = c(-math.sqrt(2) * _LOW32), c(math.sqrt(2) * _CUT32)
    near = (x >= low) & (x <= high)                       # NaN goes to the tail too
    far = ~near if backend.is_cupy_array(x) else xp.flatnonzero(~near)
    if not backend.is_cupy_array(x) and not far.size:
        return out
    xf = x if backend.is_cupy_array(x) else x.reshape(-1)[far]
    xf = xp.clip(xf, c(-40), c(40))          # Phi is 0 or 1 in float32 long before
    a = xp.abs(xf) * c(math.sqrt(0.5))
    q = _half_gauss(xf) * _q(q_coef, xp.minimum(a, c(_ONE32)))
    q *= c(0.5)
    beyond = a > c(_ONE32)
    if bool(beyond.any()):                   # below -5.6 sigma: float64's continued fraction
        wide = xf[beyond].astype(xp.float64)
        q[beyond] = (0.5 * _half_gauss(wide) *
                     _fraction(xp.abs(wide) * math.sqrt(0.5), _FRACTION_DEPTH)).astype(x.dtype)
    tail = xp.where(xf < 0, q, c(1) - q)
    if backend.is_cupy_array(x):
        return xp.where(far, tail, out)
    if out.flags.c_contiguous:               # setting items: three times faster than put
        out.reshape(-1)[far] = tail
    else:
        xp.put(out, far, tail)
    return out


def normal_cdf(x: Any) -> Any:
    """Phi(x), the standard normal CDF, of each element of the float array ``x`` (NumPy or
    CuPy), same shape and dtype, accurate to the dtype's rounding relative to the value (also
    in the lower tail, down to float64's underflow); float16 is computed in float32."""
    xp = backend.get_array_module(x)
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"normal_cdf: expected a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dtype == xp.float16:
        return normal_cdf(x.astype(xp.float32)).astype(xp.float16)
    if x.dtype == xp.float32:
        return _normal_cdf_float32(x)
    c = x.dtype.type
    out = erf(x * c(math.sqrt(0.5)))
    out += c(1)
    out *= c(0.5)
    low = x < c(-_CUT * math.sqrt(2))              # x / sqrt 2 < -2: 1 + erf would cancel
    if bool(low.any()):
        xl = xp.maximum(x[low], c(-40))           # Phi(-40) underflows float64
        out[low] = c(0.5) * _half_gauss(xl) * _fraction(-xl * c(math.sqrt(0.5)),
                                                         _FRACTION_DEPTH)
    return out
