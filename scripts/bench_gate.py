"""How often does the gate promote a model that is not better, and how often does it catch a real gain?

Seeded trials on synthetic holdouts with known truth (binormal scores, so each model's true AUC is exact):
- equal:  challenger and champion have the same true AUC -> a promotion is a false promotion;
- better: the challenger's true AUC is higher by --gain (default +0.01) -> a promotion is a detection (power).
Both models share most of their noise (correlation --rho), as two models of the same data do. Each trial runs
the gate's own decision: the paired bootstrap (ct_pipeline.steps.gate.scoring.paired_bootstrap) and decide().

    python scripts/bench_gate.py [--trials 200] [--rows 50000] [--resamples 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ct_pipeline.domain.spec import GateSpec
from ct_pipeline.steps.gate.scoring import paired_bootstrap
from ct_pipeline.steps.gate.verdict import decide


def holdout(seed: int, rows: int, prevalence: float, auc_champion: float, auc_challenger: float, rho: float):
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < prevalence).astype(float)
    shared = rng.normal(size=rows)

    def scores(auc: float) -> np.ndarray:
        separation = np.sqrt(2) * norm.ppf(auc)  # binormal, unit variance: AUC = Phi(separation / sqrt(2))
        return separation * y + rho * shared + np.sqrt(1 - rho**2) * rng.normal(size=rows)

    return y, scores(auc_challenger), scores(auc_champion)


def trial(args: tuple) -> dict:
    seed, scenario, opts = args
    gain = opts["gain"] if scenario == "better" else 0.0
    y, challenger, champion = holdout(
        seed, opts["rows"], opts["prevalence"], opts["auc"], opts["auc"] + gain, opts["rho"]
    )
    gate = GateSpec(bootstrap_resamples=opts["resamples"], seed=seed)
    started = time.perf_counter()
    point, low, high = paired_bootstrap(
        "roc_auc", y, challenger, champion, gate.bootstrap_resamples, gate.confidence, gate.seed, maximize=True
    )
    promote, _, _ = decide(gate, point, low, high, "roc_auc")
    return {
        "scenario": scenario,
        "seed": seed,
        "promote": promote,
        "delta": point,
        "ci": [low, high],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--prevalence", type=float, default=0.10)
    parser.add_argument("--auc", type=float, default=0.80, help="champion's true AUC")
    parser.add_argument("--gain", type=float, default=0.01)
    parser.add_argument("--rho", type=float, default=0.8, help="shared-noise weight between the two models")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/gate-bench.json"))
    opts = vars(parser.parse_args())
    jobs = [(10_000 + i, s, opts) for s in ("equal", "better") for i in range(opts["trials"])]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=opts["workers"]) as pool:
        results = list(pool.map(trial, jobs, chunksize=4))
    wall = time.perf_counter() - started
    equal = [r for r in results if r["scenario"] == "equal"]
    better = [r for r in results if r["scenario"] == "better"]
    summary = {
        "settings": {k: v for k, v in opts.items() if k != "out"},
        "false_promotion_rate": sum(r["promote"] for r in equal) / len(equal),
        "power": sum(r["promote"] for r in better) / len(better),
        "mean_delta_better": statistics.fmean(r["delta"] for r in better),
        "gate_seconds_per_trial": {
            "median": statistics.median(r["seconds"] for r in results),
            "max": max(r["seconds"] for r in results),
        },
        "wall_seconds": wall,
    }
    opts["out"].parent.mkdir(parents=True, exist_ok=True)
    opts["out"].write_text(json.dumps({"summary": summary, "trials": results}, indent=2, default=str))
    s = summary
    print(
        f"gate benchmark: {opts['trials']} trials per scenario, {opts['rows']:,} rows, prevalence "
        f"{opts['prevalence']:.0%}, champion AUC {opts['auc']}, {opts['resamples']} resamples, rho {opts['rho']}"
    )
    print("| scenario | promoted | goal |")
    print("|---|---|---|")
    print(f"| equal models (false promotion) | {s['false_promotion_rate']:.1%} | <= 5% |")
    print(f"| challenger +{opts['gain']} AUC (power) | {s['power']:.1%} | >= 80% |")
    print(
        f"gate wall time per trial: median {s['gate_seconds_per_trial']['median']:.2f} s, "
        f"max {s['gate_seconds_per_trial']['max']:.2f} s; whole run {wall:.0f} s on {opts['workers']} workers"
    )
    print(f"details: {opts['out']}")


if __name__ == "__main__":
    main()
