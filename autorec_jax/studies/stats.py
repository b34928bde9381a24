"""Small-sample statistics for repeated runs: Student's t, mean confidence intervals, paired t.

Pure NumPy and `math` (no SciPy): the t CDF comes from the regularized incomplete beta
function (a continued fraction, Numerical Recipes' `betacf`), its inverse from bisection.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-15        # relative accuracy of the continued fraction
_MAX_TERMS = 10_000  # continued-fraction terms; convergence takes O(sqrt(max(a, b))) of them
_TINY = 1e-300      # keeps the modified Lentz recurrence away from division by zero


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and x in [0, 1], got {a}, {b}, {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); beyond that use
    # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method (NR 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"betacf did not converge for a={a}, b={b}, x={x}")


def _check_df(df: float) -> None:
    if not (isinstance(df, (int, float, np.integer, np.floating)) and df > 0
            and math.isfinite(df)):
        raise ValueError(f"degrees of freedom must be a finite number > 0, got {df!r}")


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail P(|T| >= |t|) of Student's t with `df` degrees of freedom."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    # P(|T| >= t) = I_x(df/2, 1/2) with x = df / (df + t^2): no cancellation in the tails.
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    tail = t_sf2(t, df) / 2.0
    if math.isnan(tail):
        return math.nan
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The inverse of `t_cdf`: the t with P(T <= t) = p, for 0 < p < 1.

    Bisection on the tail probability (monotone in t), so it cannot diverge; the bracket
    grows by doubling, and 200 halvings reach the float resolution of any bracket.
    """
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p!r}")
    if p == 0.5:
        return 0.0
    tail = min(p, 1.0 - p)  # one-sided tail the quantile leaves beyond it
    low, high = 0.0, 1.0
    while t_sf2(high, df) / 2.0 > tail:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if t_sf2(mid, df) / 2.0 > tail:
            low = mid
        else:
            high = mid
    t = 0.5 * (low + high)
    return t if p > 0.5 else -t


def _values(values, name: str) -> np.ndarray:
    array = np.asarray(values, np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values: {array.tolist()}")
    return array


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean and its two-sided Student-t confidence interval.

    Args:
      values: n finite numbers (e.g. one test RMSE per split), any shape.
      level: the interval's coverage.

    Returns:
      {mean, std (sample, ddof=1), n, ci_low, ci_high, half_width, level, note}.
      half_width = t_{(1+level)/2, n-1} * std / sqrt(n). With n = 1 the spread is unknown:
      std, the interval and half_width are NaN and `note` says so (otherwise note is None).

    Raises:
      ValueError: no values, or a non-finite one.
    """
    _check_level(level)
    x = _values(values, "values")
    n, mean = x.size, float(np.mean(x))
    if n == 1:
        return {"mean": mean, "std": math.nan, "n": 1, "ci_low": math.nan,
                "ci_high": math.nan, "half_width": math.nan, "level": level,
                "note": "n=1: no spread to estimate; std and the interval are undefined (NaN)"}
    std = float(np.std(x, ddof=1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half,
            "half_width": half, "level": level, "note": None}


def paired_t(a, b, level: float = 0.95) -> dict:
    """Paired two-sided t test and interval for the mean of a - b.

    Args:
      a, b: n finite numbers each, paired by position (the same split in both).
      level: the interval's coverage.

    Returns:
      {mean_diff, std_diff (ddof=1), n, df (n-1), ci_low, ci_high, half_width, t, p_value,
      level, note}, with t = mean_diff / (std_diff / sqrt(n)) and p_value = P(|T_df| >= |t|).
      n = 1: std_diff, the interval, t and p_value are NaN and `note` says why.
      Zero variance (every difference equals the same d): the interval collapses to [d, d];
      d = 0 gives t = 0 and p_value = 1 (no evidence of any difference, e.g. a compared
      with itself), d != 0 gives t = +-inf and p_value = 0; `note` names the case.

    Raises:
      ValueError: different lengths, no values, or a non-finite one.
    """
    _check_level(level)
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired_t needs as many a as b values, got {x.size} and {y.size}")
    d = x - y
    n, mean = d.size, float(np.mean(d))
    base = {"mean_diff": mean, "n": n, "df": n - 1, "level": level}
    if n == 1:
        return {**base, "std_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "half_width": math.nan, "t": math.nan, "p_value": math.nan,
                "note": "n=1: one pair gives no spread; the test and interval are undefined"}
    std = float(np.std(d, ddof=1))
    if std == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        return {**base, "std_diff": 0.0, "ci_low": mean, "ci_high": mean, "half_width": 0.0,
                "t": t, "p_value": p,
                "note": "zero variance: every difference is " + (
                    "0 (identical results)" if mean == 0.0 else f"{mean!r}")}
    se = std / math.sqrt(n)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * se
    t = mean / se
    return {**base, "std_diff": std, "ci_low": mean - half, "ci_high": mean + half,
            "half_width": half, "t": t, "p_value": t_sf2(t, n - 1), "note": None}
