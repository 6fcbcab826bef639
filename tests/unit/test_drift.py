"""Drift statistics against scipy / hand values, the streamed accumulator, calibrated thresholds; realized metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import average_precision_score, mean_absolute_error, roc_auc_score

from ct_pipeline.domain.drift import (
    FeatureAccumulator,
    FeatureReference,
    chi2_homogeneity,
    infer_kind,
    js_divergence,
    ks_statistic,
    merge_groups,
    psi,
    wasserstein,
)
from ct_pipeline.domain.performance import realized_metric


def test_psi_by_hand():
    # p = (.5, .5), q = (.8, .2): (.3) ln(1.6) + (-.3) ln(.4)
    assert psi([50, 50], [80, 20], smoothing=0) == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4))
    assert psi([50, 50], [80, 20]) == pytest.approx(
        (80.5 / 101 - 0.5) * math.log(80.5 / 101 / 0.5) + (20.5 / 101 - 0.5) * math.log(20.5 / 101 / 0.5)
    )
    assert psi([10, 0], [5, 5]) > 0  # an empty bin stays finite with smoothing
    assert psi([30, 70], [30, 70]) == 0


def test_js_divergence_equals_scipy():
    ref, cur = np.array([50, 30, 20, 0]), np.array([40, 30, 10, 20])
    assert js_divergence(ref, cur) == pytest.approx(jensenshannon(ref / 100, cur / 100, base=2) ** 2)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_chi2_homogeneity_equals_scipy_with_empty_columns_dropped():
    ref, cur = np.array([120, 80, 0, 40]), np.array([50, 60, 0, 10])
    expected = stats.chi2_contingency(np.array([[120, 80, 40], [50, 60, 10]]), correction=False)
    statistic, p = chi2_homogeneity(ref, cur)
    assert statistic == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_ks_and_wasserstein_equal_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(0.3, 1.2, size=300)
    d, p = ks_statistic(a, b)
    expected = stats.ks_2samp(a, b)
    assert (d, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a))


def test_infer_kind():
    assert infer_kind(np.array(["a", "b", "a"])) == "categorical"
    assert infer_kind(np.array([0, 1, 1, 2])) == "categorical"
    assert infer_kind(np.array([1.0, 2.0, np.nan, 3.0])) == "categorical"  # integral floats with a null
    assert infer_kind(np.arange(100)) == "numeric"
    assert infer_kind(np.random.default_rng(0).normal(size=50)) == "numeric"


def test_reference_numeric_bins_and_nulls():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.lognormal(size=9_000), np.full(1_000, np.nan)])
    ref = FeatureReference.build("amount", values)
    assert ref.kind == "numeric" and ref.edges is not None and len(ref.edges) == 9
    assert ref.counts.sum() == 9_000 and np.all(np.abs(ref.counts - 900) <= 1)
    assert (ref.rows, ref.nulls, ref.null_rate) == (10_000, 1_000, 0.1)
    assert len(ref.sample) == 9_000
    # a point mass: quantile edges collapse, but no reference bin is left empty
    spiky = FeatureReference.build("spiky", np.concatenate([np.zeros(600), rng.normal(size=400)]), kind="numeric")
    assert np.all(spiky.counts > 0)


def test_accumulator_streaming_equals_one_shot_and_counts_nulls():
    rng = np.random.default_rng(3)
    ref = FeatureReference.build("x", rng.normal(size=5_000))
    current = rng.normal(size=30_000)
    current[::10] = np.nan
    one = FeatureAccumulator(ref, sample_size=1_000, seed=7)
    one.update(current)
    streamed = FeatureAccumulator(ref, sample_size=1_000, seed=7)
    for start in range(0, len(current), 4_096):
        streamed.update(current[start : start + 4_096])
    assert (streamed.n, streamed.nulls) == (one.n, one.nulls) == (27_000, 3_000)
    np.testing.assert_array_equal(streamed.counts, one.counts)
    np.testing.assert_array_equal(streamed.sample, one.sample)
    for statistic in ("psi", "ks", "js", "wasserstein"):
        assert streamed.result(statistic) == one.result(statistic)
    assert one.result("psi").null_rate == pytest.approx(0.1)


def test_bottom_k_sample_is_bounded_and_uniform():
    ref = FeatureReference.build("i", np.arange(10_000.0), kind="numeric")
    acc = FeatureAccumulator(ref, sample_size=2_000, seed=0)
    for start in range(0, 100_000, 7_000):
        acc.update(np.arange(start, min(start + 7_000, 100_000), dtype=float))
    sample = acc.sample
    assert len(sample) == 2_000 and len(np.unique(sample)) == 2_000  # without replacement
    assert acc.n == 100_000
    # uniform over the stream: early and late rows equally likely (deciles ~200 each)
    deciles = np.bincount((sample // 10_000).astype(int), minlength=10)
    assert stats.chisquare(deciles).pvalue > 0.001
    assert abs(sample.mean() - 50_000) < 3 * 28_868 / math.sqrt(2_000)


def test_merge_equals_union_in_counts():
    rng = np.random.default_rng(4)
    ref = FeatureReference.build("x", rng.normal(size=2_000))
    a, b = FeatureAccumulator(ref, 500, seed=1), FeatureAccumulator(ref, 500, seed=2)
    xa, xb = rng.normal(size=3_000), rng.normal(size=1_000)
    a.update(xa)
    b.update(xb)
    a.merge(b)
    whole = FeatureAccumulator(ref, 500)
    whole.update(np.concatenate([xa, xb]))
    np.testing.assert_array_equal(a.counts, whole.counts)
    assert a.n == 4_000 and len(a.sample) == 500


def test_categorical_unseen_categories_and_nulls():
    ref_values = np.array(["a"] * 500 + ["b"] * 300 + ["c"] * 200 + [None] * 100, dtype=object)
    ref = FeatureReference.build("channel", ref_values)
    assert ref.kind == "categorical" and ref.categories == ("a", "b", "c")
    np.testing.assert_array_equal(ref.counts, [500, 300, 200, 0])
    assert ref.nulls == 100
    acc = FeatureAccumulator(ref)
    acc.update(np.array(["a"] * 400 + ["b"] * 300 + ["c"] * 100 + ["z"] * 200 + [None] * 50, dtype=object))
    np.testing.assert_array_equal(acc.counts, [400, 300, 100, 200])  # "z" -> the other bucket
    assert acc.nulls == 50
    result = acc.result("chi2")  # the other bucket (empty in the reference) pools with the rarest category, "c"
    assert result.value == pytest.approx(chi2_homogeneity([500, 300, 200], [400, 300, 300])[0])
    assert result.drifted and result.p_value is not None and result.p_value < 1e-5
    # int codes and their float form (a batch with a NaN) are one category
    codes = FeatureReference.build("code", np.array([1, 2, 2, 3]))
    acc = FeatureAccumulator(codes)
    acc.update(np.array([1.0, 2.0, np.nan]))
    np.testing.assert_array_equal(acc.counts, [1, 1, 0, 0])
    with pytest.raises(ValueError, match="categorical"):
        acc.result("ks")


def test_merge_groups_pools_sparse_bins():
    # 200 current rows: a bin must hold >= 5/200 = 2.5% of the reference
    groups = merge_groups(np.array([100, 1, 1, 100, 100]), n=200, m=302, ordered=True)
    assert len(np.unique(groups)) < 5 and groups[1] == groups[2]
    # the rarest pool: other (0%) + 1% is too thin, so it takes the 19% category too
    categories = merge_groups(np.array([500, 300, 190, 10, 0]), n=200, m=1_000, ordered=False)
    assert categories[2] == categories[3] == categories[4] and len(np.unique(categories)) == 3
    assert len(np.unique(merge_groups(np.array([500, 300, 190, 10, 0]), n=10_000, m=10_000, ordered=False))) == 4


def test_thresholds_shrink_with_n_and_follow_the_chi_square():
    rng = np.random.default_rng(5)
    ref = FeatureReference.build("x", rng.normal(size=50_000))
    thresholds = {}
    for n in (200, 2_000, 20_000):
        acc = FeatureAccumulator(ref)
        acc.update(rng.normal(size=n))
        thresholds[n] = {s: acc.result(s).threshold for s in ("psi", "ks", "js", "wasserstein")}
        assert thresholds[n]["psi"] == pytest.approx(stats.chi2.ppf(0.95, 9) * (1 / n + 1 / 50_000))
        assert thresholds[n]["js"] == pytest.approx(thresholds[n]["psi"] / (8 * math.log(2)))
        assert acc.result("psi", tests=8).threshold > thresholds[n]["psi"]  # Bonferroni: stricter per test
        assert acc.result("psi", min_effect=0.5).threshold == 0.5
    for statistic in ("psi", "ks", "js", "wasserstein"):
        assert thresholds[200][statistic] > thresholds[2_000][statistic] > thresholds[20_000][statistic]


def test_clear_shift_is_detected_and_no_shift_is_not():
    rng = np.random.default_rng(6)
    ref = FeatureReference.build("amount", rng.lognormal(3.5, 1, 50_000))
    same, shifted = FeatureAccumulator(ref), FeatureAccumulator(ref)
    for _ in range(3):
        same.update(rng.lognormal(3.5, 1, 20_000))
        shifted.update(rng.lognormal(3.5, 1, 20_000) * 1.3)
    for statistic in ("psi", "ks", "js", "wasserstein"):
        assert shifted.result(statistic, tests=4).drifted, statistic
        assert not same.result(statistic, tests=4).drifted, statistic
    result = shifted.result("psi").to_dict()
    assert json.loads(json.dumps(result)) == result and result["n"] == 60_000 and result["reference_n"] == 50_000


def test_realized_auc_equals_sklearn_and_ci_contains_it():
    rng = np.random.default_rng(7)
    y = (rng.random(5_000) < 0.2).astype(int)
    scores = np.round(rng.normal(size=5_000) + y, 1)  # rounded: ties exercise the half-credit
    result = realized_metric("roc_auc", y, scores, resamples=300)
    assert result.value == pytest.approx(roc_auc_score(y, scores))
    assert result.ci_low < result.value < result.ci_high and result.ci_high - result.ci_low < 0.06
    assert (result.n, result.positives) == (5_000, int(y.sum()))
    ap = realized_metric("average_precision", y, scores, resamples=200)
    assert ap.value == pytest.approx(average_precision_score(y, scores)) and ap.ci_low < ap.value < ap.ci_high
    target = rng.normal(size=2_000)
    predicted = target + rng.normal(size=2_000)
    mae = realized_metric("mae", target, predicted, resamples=200)
    assert mae.value == pytest.approx(mean_absolute_error(target, predicted))
    assert mae.ci_low < mae.value < mae.ci_high and mae.positives is None


def test_realized_metric_errors_say_why():
    with pytest.raises(ValueError, match="needs both classes: 812 labels, all 0"):
        realized_metric("roc_auc", np.zeros(812), np.random.default_rng(0).random(812))
    with pytest.raises(ValueError, match="none"):
        realized_metric("rmse", np.array([]), np.array([]))
    with pytest.raises(ValueError, match="unknown metric"):
        realized_metric("accuracy", np.array([0, 1]), np.array([0.2, 0.8]))
