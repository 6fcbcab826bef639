"""How often do the drift statistics fire on unchanged data, and how often do they catch a known shift?

Seeded trials with known truth. Each trial draws a fresh reference (m rows, the champion's training snapshot)
and a current window (n rows, streamed in 64k batches through FeatureAccumulator), then runs every statistic
at the monitors' false_alarm_rate (``--false-alarm-rate``, default 0.05):
- numeric: a lognormal feature (like a card amount); shifts: mean +0.1 std, mean +0.25 std, scale x1.1
  (every amount 10% larger: lognormal's scale parameter);
- categorical: 4 categories, shares 40/30/20/10%; shift: the 30% category +5 points (others shrink in proportion).
"null" rows (no change) give the false-alarm rate, with its Wilson 95% interval; shift columns give power.
Then a monitor of 8 unchanged features per kind with tests=8 (Bonferroni): its family-wise false-alarm rate.

    python scripts/bench_drift.py [--trials 200] [--family-trials 100] [--quick] [--workers 2] [--reference 50000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ct_pipeline.domain.drift import (  # noqa: E402
    CATEGORICAL_STATISTICS,
    NUMERIC_STATISTICS,
    FeatureAccumulator,
    FeatureReference,
)

SIZES = (200, 1_000, 100_000)
BATCH = 65_536
FAMILY = 8
MU, SIGMA = 3.5, 1.0  # lognormal amount: median ~33
STD = math.sqrt((math.exp(SIGMA**2) - 1) * math.exp(2 * MU + SIGMA**2))
SHARES = np.array([0.4, 0.3, 0.2, 0.1])
LABELS = np.array(["card", "transfer", "cash", "crypto"])
SCENARIOS = {
    "numeric": ("null", "mean +0.1 std", "mean +0.25 std", "scale x1.1"),
    "categorical": ("null", "share +5 pts"),
}


def draw(kind: str, scenario: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "numeric":
        x = rng.lognormal(MU, SIGMA, rows)
        if scenario == "mean +0.1 std":
            return x + 0.1 * STD
        if scenario == "mean +0.25 std":
            return x + 0.25 * STD
        if scenario == "scale x1.1":
            return x * 1.1
        return x
    shares = SHARES
    if scenario == "share +5 pts":
        shares = SHARES.copy()
        others = np.arange(len(shares)) != 1
        shares[others] *= (1 - (SHARES[1] + 0.05)) / SHARES[others].sum()
        shares[1] = SHARES[1] + 0.05
    return LABELS[rng.choice(len(shares), size=rows, p=shares)]


def one_feature(
    kind: str, scenario: str, n: int, m: int, rng: np.random.Generator, tests: int, alpha: float
) -> dict[str, bool]:
    reference = FeatureReference.build("f", draw(kind, "null", m, rng), kind=kind)
    accumulator = FeatureAccumulator(reference, seed=int(rng.integers(2**31)))
    current = draw(kind, scenario, n, rng)
    for start in range(0, n, BATCH):
        accumulator.update(current[start : start + BATCH])
    return {s: accumulator.result(s, alpha, tests).drifted for s in reference.statistics}


def trial(job: tuple) -> tuple:
    key, seed, alpha = job
    kind, scenario, n, m, features = key
    rng = np.random.default_rng(seed)
    fired: dict[str, bool] = {}
    for _ in range(features):
        for statistic, drifted in one_feature(kind, scenario, n, m, rng, features, alpha).items():
            fired[statistic] = fired.get(statistic, False) or drifted
    return key, fired


def wilson(hits: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    p = hits / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="50 trials (25 for the 8-feature monitor)")
    parser.add_argument("--family-trials", type=int, default=None, help="8-feature monitor trials (default trials/2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference", type=int, default=50_000, help="reference rows m")
    parser.add_argument("--seed", type=int, default=20_240_601)
    parser.add_argument("--false-alarm-rate", type=float, default=0.05, help="the monitors' false_alarm_rate")
    opts = parser.parse_args()
    trials = 50 if opts.quick else opts.trials
    family_trials = 25 if opts.quick else opts.family_trials or max(1, trials // 2)
    m = opts.reference
    keys: list[tuple] = []
    for kind, scenarios in SCENARIOS.items():
        for n in SIZES:
            keys += [(kind, scenario, n, m, 1) for scenario in scenarios]
        keys += [(kind, "null", n, n, 1) for n in SIZES[:2]]  # small reference: m = n
    family_keys = [(kind, "null", n, m, FAMILY) for kind in SCENARIOS for n in SIZES]
    alpha = opts.false_alarm_rate
    jobs = [(key, opts.seed + 7919 * i + j, alpha) for i, key in enumerate(keys) for j in range(trials)]
    jobs += [
        (key, opts.seed + 104_729 * (i + 1) + j, alpha)
        for i, key in enumerate(family_keys)
        for j in range(family_trials)
    ]
    started = time.perf_counter()
    tally: dict[tuple, dict[str, int]] = {}
    runs: dict[tuple, int] = {}
    with ProcessPoolExecutor(max_workers=opts.workers) as pool:
        for key, fired in pool.map(trial, jobs, chunksize=8):
            runs[key] = runs.get(key, 0) + 1
            counts = tally.setdefault(key, {})
            for statistic, drifted in fired.items():
                counts[statistic] = counts.get(statistic, 0) + int(drifted)
    wall = time.perf_counter() - started

    def rate(key: tuple, statistic: str, interval: bool) -> str:
        hits, total = tally[key][statistic], runs[key]
        if not interval:
            return f"{hits / total:.0%}"
        low, high = wilson(hits, total)
        return f"{hits / total:.1%} [{low:.1%}, {high:.1%}]"

    print(
        f"drift benchmark: {trials} trials per cell, reference m={m:,}, false_alarm_rate {alpha:g} "
        f"(goal: <= {alpha:.0%}, and <= 5% in any case)\n"
    )
    for kind, statistics in (("numeric", NUMERIC_STATISTICS), ("categorical", CATEGORICAL_STATISTICS)):
        shifts = SCENARIOS[kind][1:]
        print(f"### {kind} ({'lognormal amount' if kind == 'numeric' else '4 categories 40/30/20/10%'})\n")
        print("| statistic | n | false alarms [95% CI] | " + " | ".join(f"power: {s}" for s in shifts) + " |")
        print("|---|---|---|" + "---|" * len(shifts))
        for statistic in statistics:
            for n in SIZES:
                cells = [rate((kind, s, n, m, 1), statistic, False) for s in shifts]
                null = rate((kind, "null", n, m, 1), statistic, True)
                print(f"| {statistic} | {n:,} | {null} | " + " | ".join(cells) + " |")
            for n in SIZES[:2]:
                null = rate((kind, "null", n, n, 1), statistic, True)
                print(f"| {statistic} | {n:,} (m = n) | {null} | " + " | ".join("" for _ in shifts) + " |")
        print()
    print(f"### monitor of {FAMILY} unchanged features, tests={FAMILY}: family-wise false alarms")
    print(f"({family_trials} trials; goal <= 5%)\n")
    print("| kind | statistic | " + " | ".join(f"n={n:,}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for kind, statistics in (("numeric", NUMERIC_STATISTICS), ("categorical", CATEGORICAL_STATISTICS)):
        for statistic in statistics:
            cells = [rate((kind, "null", n, m, FAMILY), statistic, True) for n in SIZES]
            print(f"| {kind} | {statistic} | " + " | ".join(cells) + " |")
    print(f"\nelapsed {wall:.0f} s on {opts.workers} workers")


if __name__ == "__main__":
    main()
