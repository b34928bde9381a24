"""Student's t, mean intervals and the paired t test against tables and independent numbers."""

import math

import numpy as np
import pytest

from autorec_jax.studies import stats

# Published two-sided critical values (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
TABLE = [(0.975, 1, 12.7062), (0.975, 4, 2.776445), (0.975, 9, 2.262157),
         (0.995, 30, 2.749996), (0.975, 2, 4.302653), (0.95, 10, 1.812461)]


@pytest.mark.parametrize("p, df, expected", TABLE)
def test_t_quantile_matches_published_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=5e-5 if df == 1 else 5e-7)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, abs=5e-5)


def test_t_quantile_inverts_the_cdf_and_tends_to_the_normal():
    for df in (1, 2.5, 7, 40):
        for p in (1e-6, 0.01, 0.3, 0.5, 0.8, 0.999):
            assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, rel=1e-10)
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_t_cdf_matches_closed_forms_for_one_and_two_degrees_of_freedom():
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 4.0, 1e4):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)),
                                                  abs=1e-13)
    # Cauchy quantile: tan(pi (p - 1/2)), far in the tail.
    assert stats.t_quantile(1 - 1e-7, 1) == pytest.approx(math.tan(math.pi * (0.5 - 1e-7)),
                                                          rel=1e-8)


def _t_pdf(x, df):
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


@pytest.mark.parametrize("df", [3, 4.5, 9, 30])
def test_t_cdf_matches_numerical_integration_of_the_pdf(df):
    for t in (0.25, 1.0, 2.2, 3.7):
        x = np.linspace(0.0, t, 20001)  # Simpson's rule on [0, t], then symmetry
        y = _t_pdf(x, df)
        h = x[1] - x[0]
        integral = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
        assert stats.t_cdf(t, df) == pytest.approx(0.5 + integral, abs=1e-12)
        assert stats.t_cdf(-t, df) == pytest.approx(0.5 - integral, abs=1e-12)


def test_t_quantile_agrees_with_monte_carlo():
    draws = np.random.default_rng(0).standard_t(4, size=400_000)
    assert np.mean(draws <= stats.t_quantile(0.9, 4)) == pytest.approx(0.9, abs=3e-3)


def test_mean_ci_uses_the_sample_std_and_the_t_quantile():
    values = [0.91, 0.90, 0.895, 0.905, 0.899]
    ci = stats.mean_ci(values)
    std = math.sqrt(sum((v - 0.9018) ** 2 for v in values) / 4)  # ddof = 1
    assert ci["mean"] == pytest.approx(0.9018)
    assert ci["std"] == pytest.approx(std)
    assert ci["half_width"] == pytest.approx(2.776445 * std / math.sqrt(5), rel=1e-6)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((0.9018 - ci["half_width"],
                                                           0.9018 + ci["half_width"]))
    assert ci["n"] == 5 and ci["note"] is None
    wider = stats.mean_ci(values, level=0.99)
    assert wider["half_width"] > ci["half_width"]


def test_mean_ci_of_one_value_is_nan_with_a_note_not_a_crash():
    ci = stats.mean_ci([0.9])
    assert ci["mean"] == 0.9 and ci["n"] == 1
    assert all(math.isnan(ci[k]) for k in ("std", "ci_low", "ci_high", "half_width"))
    assert "n=1" in ci["note"]


def test_mean_ci_refuses_empty_and_non_finite_values():
    with pytest.raises(ValueError, match="empty"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_ci([0.9, float("nan")])
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci([0.9, 1.0], level=95)


# Student's sleep data (Cushny & Peebles); R: t.test(extra ~ group, data = sleep,
# paired = TRUE) gives t = -4.0621, df = 9, p-value = 0.002833, 95% CI [-2.4598858,
# -0.7001142], mean of the differences -1.58.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_matches_the_textbook_sleep_example():
    result = stats.paired_t(SLEEP_1, SLEEP_2)
    assert result["mean_diff"] == pytest.approx(-1.58)
    assert result["t"] == pytest.approx(-4.0621, abs=5e-5)
    assert result["df"] == 9 and result["n"] == 10
    assert result["p_value"] == pytest.approx(0.002833, abs=5e-7)
    assert result["ci_low"] == pytest.approx(-2.4598858, abs=5e-8)
    assert result["ci_high"] == pytest.approx(-0.7001142, abs=5e-8)
    swapped = stats.paired_t(SLEEP_2, SLEEP_1)
    assert swapped["t"] == pytest.approx(-result["t"])
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_paired_t_p_value_matches_monte_carlo_under_the_null():
    rng = np.random.default_rng(1)
    t_obs = stats.paired_t([1.0, 2.0, 4.0, 3.5], [0.5, 1.0, 3.9, 1.2])["t"]
    null = rng.standard_normal((200_000, 4))
    t_null = null.mean(1) / (null.std(1, ddof=1) / 2.0)
    expected = np.mean(np.abs(t_null) >= abs(t_obs))
    assert stats.paired_t([1.0, 2.0, 4.0, 3.5], [0.5, 1.0, 3.9, 1.2])["p_value"] == (
        pytest.approx(expected, abs=3e-3))


def test_paired_t_with_one_pair_or_zero_variance_is_defined():
    one = stats.paired_t([0.9], [0.8])
    assert one["mean_diff"] == pytest.approx(0.1) and one["n"] == 1 and "n=1" in one["note"]
    assert math.isnan(one["t"]) and math.isnan(one["p_value"]) and math.isnan(one["ci_low"])
    same = stats.paired_t([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert (same["t"], same["p_value"], same["ci_low"], same["ci_high"]) == (0.0, 1.0, 0, 0)
    assert "identical" in same["note"]
    shifted = stats.paired_t([2.0, 3.0, 5.0], [1.0, 2.0, 4.0])
    assert shifted["t"] == math.inf and shifted["p_value"] == 0.0
    assert shifted["ci_low"] == shifted["ci_high"] == 1.0
    with pytest.raises(ValueError, match="as many"):
        stats.paired_t([1.0, 2.0], [1.0])
