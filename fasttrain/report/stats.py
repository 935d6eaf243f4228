"""Seeds to statements: mean, standard deviation and 95 % Student-t interval per configuration, and the difference
between two configurations with Welch's t interval and a plain-words verdict (scipy.stats does the statistics)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float | None
    """Sample standard deviation (n - 1); None for one value."""
    half_width: float | None
    """Half the width of the 95 % Student-t interval of the mean; None for one value."""


@dataclass(frozen=True)
class Difference:
    """mean(b) - mean(a) and Welch's 95 % interval of it (unequal variances; None with fewer than 2 values per arm)."""

    n_a: int
    n_b: int
    diff: float
    low: float | None
    high: float | None
    df: float | None
    p_value: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def summarize(values: list[float]) -> Summary:
    """Mean, sd and the Student-t interval's half-width (scipy.stats.t); one value: no spread, no interval."""
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, half)


def difference(a: list[float], b: list[float]) -> Difference:
    """mean(b) - mean(a), with Welch's t-test interval (scipy.stats.ttest_ind, equal_var=False)."""
    from scipy import stats

    diff = sum(b) / len(b) - sum(a) / len(a)
    if len(a) < 2 or len(b) < 2:
        return Difference(len(a), len(b), diff, None, None, None, None)
    if max(a) == min(a) and max(b) == min(b):  # no spread at all (e.g. deterministic reruns): the difference is exact
        return Difference(len(a), len(b), diff, diff, diff, None, 0.0 if diff else 1.0)
    with warnings.catch_warnings():  # near-equal values: scipy warns of precision loss; the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(confidence_level=CONFIDENCE)
    return Difference(len(a), len(b), diff, float(interval.low), float(interval.high), float(result.df),
                      float(result.pvalue))


def verdict(name_a: str, name_b: str, d: Difference, *, scale: float = 100.0, unit: str = "points",
            higher_is_better: bool = True) -> str:
    """Plain words: "B better by 1.8 ± 0.9 points", "no difference detectable with 3 seeds", or one seed's caveat."""
    amount = abs(d.diff) * scale
    seeds = min(d.n_a, d.n_b)
    if d.low is None:
        return (f"{name_b} − {name_a} = {d.diff * scale:+.1f} {unit} from one seed per arm: no interval, "
                f"so no verdict (run ≥ 2 seeds, e.g. `seeds = [0, 1, 2]`)")
    half = (d.high - d.low) / 2 * scale
    if not d.excludes_zero:
        return f"no difference detectable with {seeds} seeds ({name_b} − {name_a} = {d.diff * scale:+.1f} ± {half:.1f} {unit})"
    b_wins = (d.diff > 0) == higher_is_better
    winner = name_b if b_wins else name_a
    word = "better" if higher_is_better else "faster"  # lower is better only for times here
    return f"{winner} {word} by {amount:.1f} ± {half:.1f} {unit}"
