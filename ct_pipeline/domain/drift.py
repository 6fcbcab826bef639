"""Feature drift between a reference snapshot and a streamed window of logged predictions.

Pure statistics, no I/O. The reference (the champion's training snapshot, up to ~50k rows) is held whole;
the current window (up to millions of rows, in batches) is streamed into bounded memory: bin counts, null
counts and a uniform bottom-k sample for the sample-based statistics (KS, Wasserstein).

Every threshold is the critical value of its statistic at the actual sample sizes and the per-test alpha
(``false_alarm_rate / tests``, Bonferroni), not a fixed cut-off: PSI > 0.1 fires on noise at n=200 and
misses real shifts nowhere near 0.1 at n=10M. Binned statistics (PSI, JS, chi2) share one binning, merged
up front so that every bin expects >= ``MIN_EXPECTED`` rows on both sides, where the chi-square
approximations hold (scripts/bench_drift.py measures the false-alarm rate they give).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

Statistic = Literal["psi", "ks", "chi2", "js", "wasserstein"]
Kind = Literal["numeric", "categorical"]
NUMERIC_STATISTICS: tuple[Statistic, ...] = ("psi", "ks", "js", "wasserstein")
CATEGORICAL_STATISTICS: tuple[Statistic, ...] = ("psi", "chi2", "js")

# Practical floors under the calibrated threshold (threshold = max(critical value, floor)). Zero by default:
# the critical value already bounds false alarms at every n, and a floor is a business choice ("a 0.02 PSI
# is real but not worth a retrain") that only matters at large n, where any real change becomes significant.
# Set one per monitor (``result(min_effect=...)``) when alarms on tiny-but-real shifts become a nuisance.
DEFAULT_MIN_EFFECT: dict[str, float] = {"psi": 0.0, "ks": 0.0, "chi2": 0.0, "js": 0.0, "wasserstein": 0.0}

MIN_EXPECTED = 5.0  # rows a bin must expect on each side before the chi-square approximations are trusted
PSI_SMOOTHING = 0.5  # added to every bin count: a bin empty on one side gives a finite PSI
WASSERSTEIN_CAP = 2_000  # rows per side in the permutation calibration: bounds its cost
WASSERSTEIN_PERMUTATIONS = 200  # at least; 1.5 / alpha for a small alpha, so that p < alpha stays reachable
OTHER = "__other__"  # label of the categorical bucket for values outside the reference categories


# ----------------------------------------------------------------------------------------------------------------
# plain statistics (checked against scipy in tests/unit/test_drift.py)


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, smoothing: float = PSI_SMOOTHING) -> float:
    """Population stability index sum (q - p) ln(q / p) over bins, with ``smoothing`` added to every count."""
    p = np.asarray(ref_counts, dtype=float) + smoothing
    q = np.asarray(cur_counts, dtype=float) + smoothing
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    both = (p > 0) & (q > 0)
    return float(np.sum((q[both] - p[both]) * np.log(q[both] / p[both])))


def js_divergence(ref_counts: np.ndarray, cur_counts: np.ndarray, smoothing: float = 0.0) -> float:
    """Jensen-Shannon divergence in bits (= scipy's ``jensenshannon(p, q, base=2) ** 2`` at smoothing 0)."""
    p = np.asarray(ref_counts, dtype=float) + smoothing
    q = np.asarray(cur_counts, dtype=float) + smoothing
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Pearson chi-square of the 2 x k table (empty columns dropped, no continuity correction) and its p-value."""
    table = np.vstack([np.asarray(ref_counts, dtype=float), np.asarray(cur_counts, dtype=float)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or np.any(rows <= 0):
        return 0.0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def ks_statistic(ref_sample: np.ndarray, cur_sample: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D and p-value (scipy's ``ks_2samp``)."""
    if len(ref_sample) == 0 or len(cur_sample) == 0:
        return 0.0, 1.0
    result = stats.ks_2samp(ref_sample, cur_sample)
    return float(result.statistic), float(result.pvalue)


def wasserstein(ref_sample: np.ndarray, cur_sample: np.ndarray) -> float:
    """Earth mover's distance in units of the reference std, so features of any scale compare."""
    if len(ref_sample) == 0 or len(cur_sample) == 0:
        return 0.0
    distance = float(stats.wasserstein_distance(ref_sample, cur_sample))
    scale = float(np.std(ref_sample))
    return distance / scale if scale > 0 else distance


# ----------------------------------------------------------------------------------------------------------------
# values: nulls, kinds, categories


def _null_mask(values: np.ndarray) -> np.ndarray:
    """NaN and None are nulls (float arrays: NaN; object arrays: None or a float NaN)."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in values), bool, len(values))
    return np.zeros(len(values), dtype=bool)


def _as_float(values: np.ndarray) -> np.ndarray | None:
    """The values as floats, or None when some value is not a number (strings): such a feature is categorical."""
    if values.dtype.kind in "fiub":
        return values.astype(float)
    try:
        return values.astype(float)
    except (TypeError, ValueError):
        return None


def _label(value: Any) -> str:
    """Category label: 3, 3.0 and np.int64(3) are one category (a batch with a NaN turns int codes to float)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique (values, inverse, counts), falling back to string labels for unsortable mixed objects."""
    try:
        return np.unique(values, return_inverse=True, return_counts=True)
    except TypeError:
        return np.unique(np.array([_label(v) for v in values], dtype=object), return_inverse=True, return_counts=True)


def infer_kind(values: np.ndarray, max_categories: int = 20) -> Kind:
    """Few distinct discrete values (ints, bools, strings, integral floats) -> categorical, else numeric.

    Strings are categorical whatever their number (the top ``max_categories`` are kept, the rest is "other").
    """
    values = np.asarray(values)
    present = values[~_null_mask(values)]
    numbers = _as_float(present)
    if numbers is None:
        return "categorical"
    if len(present) == 0:
        return "numeric"
    discrete = values.dtype.kind in "iubOUS" or bool(np.all(np.isfinite(numbers) & (numbers == np.round(numbers))))
    if discrete and len(np.unique(numbers)) <= max_categories:
        return "categorical"
    return "numeric"


def _quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """Interior edges at the reference quantiles, unique, none leaving an empty reference bin."""
    if len(x) == 0 or bins < 2:
        return np.empty(0)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    while len(edges):
        counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
        empty = np.flatnonzero(counts == 0)
        if len(empty) == 0:
            break
        edges = np.delete(edges, min(empty[0], len(edges) - 1))
    return edges


# ----------------------------------------------------------------------------------------------------------------
# reference


@dataclass(frozen=True)
class FeatureReference:
    """One feature of the reference snapshot: its binning, reference bin counts, nulls and (numeric) sample."""

    name: str
    kind: Kind
    edges: np.ndarray | None  # numeric: interior bin edges (reference quantiles, unique); bins = len(edges) + 1
    categories: tuple[str, ...] | None  # categorical: labels; one extra last bucket for everything else
    counts: np.ndarray  # reference non-null rows per bin
    sample: np.ndarray  # numeric: reference non-null values (float), for KS / Wasserstein; categorical: empty
    rows: int  # reference rows, nulls included
    nulls: int

    @classmethod
    def build(
        cls,
        name: str,
        values: np.ndarray,
        kind: str | None = None,
        bins: int = 10,
        max_categories: int = 20,
        sample_size: int = 50_000,
        seed: int = 0,
    ) -> FeatureReference:
        """Reference of ``values`` (NaN / None are nulls); ``kind`` None infers it (:func:`infer_kind`).

        A reference larger than ``sample_size`` keeps a uniform sample of that size for KS / Wasserstein
        (the bin counts use every row).
        """
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"feature {name!r}: expected a 1-D array of values, got shape {values.shape}")
        resolved = infer_kind(values, max_categories) if kind is None else kind
        if resolved not in ("numeric", "categorical"):
            raise ValueError(f"feature {name!r}: kind must be 'numeric' or 'categorical', got {kind!r}")
        nulls_mask = _null_mask(values)
        present = values[~nulls_mask]
        if resolved == "numeric":
            x = _as_float(present)
            if x is None:
                raise ValueError(f"feature {name!r}: numeric kind but some values are not numbers")
            x = x[np.isfinite(x)] if not np.all(np.isfinite(x)) else x
            edges = _quantile_edges(x, bins)
            counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
            if len(x) > sample_size:
                x = np.random.default_rng(seed).choice(x, size=sample_size, replace=False)
            return cls(name, "numeric", edges, None, counts.astype(np.int64), x, len(values), int(nulls_mask.sum()))
        uniques, _, unique_counts = _unique(present)
        by_label: dict[str, int] = {}
        for value, count in zip(uniques, unique_counts, strict=True):
            label = _label(value)
            by_label[label] = by_label.get(label, 0) + int(count)
        ranked = sorted(by_label.items(), key=lambda item: (-item[1], item[0]))
        kept = ranked[:max_categories]
        categories = tuple(label for label, _ in kept)
        counts = np.array([c for _, c in kept] + [sum(c for _, c in ranked[max_categories:])], dtype=np.int64)
        return cls(name, "categorical", None, categories, counts, np.empty(0), len(values), int(nulls_mask.sum()))

    @property
    def null_rate(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0

    @property
    def statistics(self) -> tuple[Statistic, ...]:
        return NUMERIC_STATISTICS if self.kind == "numeric" else CATEGORICAL_STATISTICS

    def bin_index(self, present: np.ndarray) -> np.ndarray:
        """Bin of each non-null value: numeric by the edges, categorical by label (unseen -> the last bucket)."""
        if self.kind == "numeric":
            assert self.edges is not None
            x = _as_float(present)
            if x is None:
                raise ValueError(f"feature {self.name!r}: numeric reference but some current values are not numbers")
            return np.searchsorted(self.edges, x, side="right")
        assert self.categories is not None
        position = {label: i for i, label in enumerate(self.categories)}
        uniques, inverse, _ = _unique(present)
        lookup = np.array([position.get(_label(v), len(self.categories)) for v in uniques], dtype=np.int64)
        return lookup[inverse.ravel()]


# ----------------------------------------------------------------------------------------------------------------
# result


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class DriftResult:
    """One feature, one statistic: the value, its calibrated threshold and the decision."""

    feature: str
    kind: str
    statistic: str
    value: float
    threshold: float  # critical value at these sample sizes and the per-test alpha (or the min_effect floor)
    p_value: float | None
    n: int  # current non-null rows used (KS / Wasserstein: the sample actually compared)
    reference_n: int
    drifted: bool
    null_rate: float
    reference_null_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "statistic": self.statistic,
            "value": _json_float(self.value),
            "threshold": _json_float(self.threshold),
            "p_value": _json_float(self.p_value),
            "n": int(self.n),
            "reference_n": int(self.reference_n),
            "drifted": bool(self.drifted),
            "null_rate": _json_float(self.null_rate),
            "reference_null_rate": _json_float(self.reference_null_rate),
        }


# ----------------------------------------------------------------------------------------------------------------
# calibration helpers


def merge_groups(reference_counts: np.ndarray, n: int, m: int, ordered: bool) -> np.ndarray:
    """Group id of each bin so that every group expects >= MIN_EXPECTED rows in both samples.

    Decided from the reference shares and the sizes only (never the current counts), so merging does not bias
    the test. Numeric bins (``ordered``) merge with their neighbours; categories pool from the rarest up
    (the "other" bucket, empty in the reference, always joins the rarest category).
    """
    counts = np.asarray(reference_counts, dtype=float)
    k = len(counts)
    total = counts.sum()
    if k == 0 or total <= 0 or min(n, m) <= 0:
        return np.zeros(k, dtype=np.int64)
    need = MIN_EXPECTED / min(n, m)
    shares = counts / total
    order = np.arange(k) if ordered else np.argsort(shares, kind="stable")
    groups = np.empty(k, dtype=np.int64)
    group, acc = 0, 0.0
    for i in order:
        groups[i] = group
        acc += shares[i]
        if acc >= need:
            group, acc = group + 1, 0.0
    if acc > 0 and group > 0:  # a short tail joins the group before it
        groups[groups == group] = group - 1
    if ordered:
        return groups
    return groups.max() - groups  # rarest pool last: ids are arbitrary for categories, keep them compact


def _grouped(counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return np.bincount(groups, weights=counts, minlength=int(groups.max()) + 1 if len(groups) else 0)


def _w1_sorted(gaps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """W1 for each row of ``weights`` (+1/na for a row of sample a, -1/nb for b, in pooled sorted order)."""
    return np.abs(np.cumsum(weights, axis=1)[:, :-1]) @ gaps


def wasserstein_permutation(
    ref_sample: np.ndarray, cur_sample: np.ndarray, alpha: float, permutations: int, seed: int = 0
) -> tuple[float, float, float]:
    """(W1 of the two samples, the (1 - alpha) quantile of W1 under random relabelling, permutation p-value).

    Unnormalized: the caller divides all three by one scale, which changes nothing in the test. The
    p-value (1 + #{null >= observed}) / (permutations + 1) is exact at any number of permutations.
    float32 sums: the null needs ~3 digits, and float32 halves the memory traffic that dominates the cost.
    """
    na, nb = len(ref_sample), len(cur_sample)
    pooled = np.concatenate([ref_sample, cur_sample]).astype(float)
    order = np.argsort(pooled, kind="stable")
    gaps = np.diff(pooled[order])
    observed = float(_w1_sorted(gaps, np.where(order < na, 1.0 / na, -1.0 / nb)[None, :])[0])
    scale = float(gaps.sum()) or 1.0  # gaps / range keeps float32 sums well conditioned
    gaps32 = (gaps / scale).astype(np.float32)
    base = np.where(np.arange(na + nb) < na, 1.0 / na, -1.0 / nb).astype(np.float32)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // (na + nb))
    null = [
        _w1_sorted(gaps32, rng.permuted(np.broadcast_to(base, (min(chunk, permutations - s), na + nb)), axis=1))
        for s in range(0, permutations, chunk)
    ]
    distribution = np.concatenate(null).astype(float) * scale
    threshold = float(np.quantile(distribution, 1 - alpha, method="higher"))
    p_value = (1 + int(np.sum(distribution >= observed * (1 - 1e-6)))) / (permutations + 1)
    return observed, threshold, p_value


# ----------------------------------------------------------------------------------------------------------------
# streaming accumulator


class FeatureAccumulator:
    """Streams the current window against one FeatureReference: bin counts, nulls, n, and a uniform bottom-k
    sample (fixed seed) of non-null values for KS/Wasserstein. Memory O(bins + sample_size) whatever the window.

    Bottom-k: every non-null value draws a uniform key; the sample is the ``sample_size`` values with the
    smallest keys, a uniform sample without replacement of everything seen. Keys come from one seeded stream in
    row order, so feeding the window in any batching gives the same sample. Accumulators to be merged (shards
    of one window) need distinct seeds.
    """

    def __init__(self, reference: FeatureReference, sample_size: int = 20_000, seed: int = 0) -> None:
        self.reference = reference
        self.sample_size = sample_size
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._counts = np.zeros(len(reference.counts), dtype=np.int64)
        self._n = 0
        self._nulls = 0
        self._keys = np.empty(0)
        self._values = np.empty(0)

    @property
    def n(self) -> int:
        """Current non-null rows seen."""
        return self._n

    @property
    def nulls(self) -> int:
        return self._nulls

    @property
    def rows(self) -> int:
        return self._n + self._nulls

    @property
    def null_rate(self) -> float:
        return self._nulls / self.rows if self.rows else 0.0

    @property
    def counts(self) -> np.ndarray:
        return self._counts.copy()

    @property
    def sample(self) -> np.ndarray:
        """The bottom-k sample in key order: any prefix of it is a uniform sample too."""
        return self._values[np.argsort(self._keys, kind="stable")]

    def update(self, values: np.ndarray) -> None:
        """Add one batch (NaN / None are nulls)."""
        values = np.asarray(values)
        if values.ndim != 1:
            values = values.ravel()
        mask = _null_mask(values)
        present = values[~mask]
        self._nulls += int(mask.sum())
        if len(present) == 0:
            return
        if self.reference.kind == "numeric":
            x = _as_float(present)
            if x is None:
                raise ValueError(f"feature {self.reference.name!r}: numeric reference but some values are not numbers")
            finite = np.isfinite(x)
            if not finite.all():  # +-inf is no number for binning either: count it as null
                self._nulls += int((~finite).sum())
                x = x[finite]
            present = x
            self._keep_bottom_k(x)
        self._n += len(present)
        self._counts += np.bincount(self.reference.bin_index(present), minlength=len(self._counts))

    def _keep_bottom_k(self, x: np.ndarray) -> None:
        if self.sample_size <= 0:
            return
        keys = self._rng.random(len(x))
        if len(self._keys) >= self.sample_size:
            below = keys < self._keys.max()
            keys, x = keys[below], x[below]
        self._absorb(keys, x)

    def _absorb(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = np.concatenate([self._keys, keys])
        values = np.concatenate([self._values, values])
        if len(keys) > self.sample_size:
            keep = np.argpartition(keys, self.sample_size - 1)[: self.sample_size]
            keys, values = keys[keep], values[keep]
        self._keys, self._values = keys, values

    def merge(self, other: FeatureAccumulator) -> None:
        """Absorb another shard of the same window (same reference; it should have used another seed)."""
        if other.reference is not self.reference and other.reference.name != self.reference.name:
            raise ValueError(f"cannot merge accumulators of {other.reference.name!r} into {self.reference.name!r}")
        if len(other._counts) != len(self._counts):
            raise ValueError(f"feature {self.reference.name!r}: accumulators with different binnings")
        self._counts += other._counts
        self._n += other._n
        self._nulls += other._nulls
        self._absorb(other._keys, other._values)

    # ------------------------------------------------------------------------------------------------------------

    def result(
        self,
        statistic: Statistic,
        false_alarm_rate: float = 0.05,
        tests: int = 1,
        min_effect: float | None = None,
    ) -> DriftResult:
        """The statistic, its critical value at alpha = false_alarm_rate / tests, and whether it drifted."""
        ref = self.reference
        if statistic not in ref.statistics:
            raise ValueError(f"feature {ref.name!r} is {ref.kind}: statistic must be one of {ref.statistics}")
        if not 0 < false_alarm_rate < 1 or tests < 1:
            raise ValueError(f"need 0 < false_alarm_rate < 1 and tests >= 1, got {false_alarm_rate}, {tests}")
        alpha = false_alarm_rate / tests
        floor = DEFAULT_MIN_EFFECT.get(statistic, 0.0) if min_effect is None else min_effect
        if statistic in ("psi", "js", "chi2"):
            value, critical, p_value, n, m = self._binned(statistic, alpha)
        elif statistic == "ks":
            value, critical, p_value, n, m = self._ks(alpha)
        else:
            value, critical, p_value, n, m = self._wasserstein(alpha)
        threshold = max(critical, floor)
        drifted = bool(n > 0 and m > 0 and value > threshold and (p_value is None or p_value < alpha))
        return DriftResult(
            feature=ref.name,
            kind=ref.kind,
            statistic=statistic,
            value=value,
            threshold=threshold,
            p_value=p_value,
            n=n,
            reference_n=m,
            drifted=drifted,
            null_rate=self.null_rate,
            reference_null_rate=ref.null_rate,
        )

    def results(self, false_alarm_rate: float = 0.05, tests: int = 1) -> dict[str, DriftResult]:
        """Every statistic of this feature's kind."""
        return {s: self.result(s, false_alarm_rate, tests) for s in self.reference.statistics}

    def _binned(self, statistic: Statistic, alpha: float) -> tuple[float, float, float, int, int]:
        ref_counts = self.reference.counts.astype(float)
        n, m = self._n, int(ref_counts.sum())
        groups = merge_groups(ref_counts, n, m, ordered=self.reference.kind == "numeric")
        ref_g, cur_g = _grouped(ref_counts, groups), _grouped(self._counts.astype(float), groups)
        keep = (ref_g + cur_g) > 0
        ref_g, cur_g = ref_g[keep], cur_g[keep]
        dof = len(ref_g) - 1
        if dof < 1 or n == 0 or m == 0:
            return 0.0, math.inf, 1.0, n, m
        if statistic == "chi2":
            value, p_value = chi2_homogeneity(ref_g, cur_g)
            return value, float(stats.chi2.ppf(1 - alpha, dof)), p_value, n, m
        # Under H0 both divergences are ~ a multiple of the two-sample chi-square X^2 ~ chi2(dof):
        # PSI ~ X^2 (1/n + 1/m), JSD (nats) ~ X^2 (1/n + 1/m) / 8 (second-order Taylor expansion).
        scale = 1.0 / n + 1.0 / m
        if statistic == "js":
            scale /= 8 * math.log(2)
            # smoothed like PSI: unsmoothed, its higher-order terms put false alarms at ~5.7% for n = 200
            value = js_divergence(ref_g, cur_g, PSI_SMOOTHING)
        else:
            value = psi(ref_g, cur_g)
        critical = float(stats.chi2.ppf(1 - alpha, dof)) * scale
        return value, critical, float(stats.chi2.sf(value / scale, dof)), n, m

    def _ks(self, alpha: float) -> tuple[float, float, float, int, int]:
        ref_sample, cur_sample = self.reference.sample, self._values
        n, m = len(cur_sample), len(ref_sample)
        if n == 0 or m == 0:
            return 0.0, math.inf, 1.0, n, m
        value, p_value = ks_statistic(ref_sample, cur_sample)
        effective = round(n * m / (n + m))
        return value, float(stats.kstwo.ppf(1 - alpha, max(effective, 1))), p_value, n, m

    def _wasserstein(self, alpha: float) -> tuple[float, float, float, int, int]:
        ref_sample = self.reference.sample
        cur_sample = self.sample[:WASSERSTEIN_CAP]  # key order: the prefix is a uniform subsample
        if len(ref_sample) > WASSERSTEIN_CAP:
            rng = np.random.default_rng(self.seed)
            ref_sample = ref_sample[rng.choice(len(ref_sample), WASSERSTEIN_CAP, replace=False)]
        n, m = len(cur_sample), len(ref_sample)
        if n == 0 or m == 0:
            return 0.0, math.inf, 1.0, n, m
        permutations = max(WASSERSTEIN_PERMUTATIONS, math.ceil(1.5 / alpha))
        observed, critical, p_value = wasserstein_permutation(ref_sample, cur_sample, alpha, permutations, self.seed)
        scale = float(np.std(self.reference.sample)) or 1.0
        return observed / scale, critical / scale, p_value, n, m


def accumulate(
    reference: FeatureReference, batches: Any, sample_size: int = 20_000, seed: int = 0
) -> FeatureAccumulator:
    """Convenience: stream an iterable of batches into a new accumulator."""
    accumulator = FeatureAccumulator(reference, sample_size, seed)
    for batch in batches:
        accumulator.update(np.asarray(batch))
    return accumulator


__all__ = [
    "CATEGORICAL_STATISTICS",
    "DEFAULT_MIN_EFFECT",
    "NUMERIC_STATISTICS",
    "DriftResult",
    "FeatureAccumulator",
    "FeatureReference",
    "Statistic",
    "accumulate",
    "chi2_homogeneity",
    "infer_kind",
    "js_divergence",
    "ks_statistic",
    "psi",
    "wasserstein",
    "wasserstein_permutation",
]
