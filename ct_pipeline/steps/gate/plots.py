"""Evidence plots for a gate decision (PNG, matplotlib), committed next to the manifest change."""

from __future__ import annotations

import io

import numpy as np

from ct_pipeline.domain.records import GateDecision
from ct_pipeline.domain.spec import ModelSpec, TaskType


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def delta_plot(spec: ModelSpec, decision: GateDecision) -> bytes:
    """The overall delta with its CI, and each judged slice's delta, against the gate's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if decision.delta is None or decision.ci_low is None or decision.ci_high is None:
        raise ValueError("delta_plot needs a decision that compared champion and challenger")
    labels, points = ["overall"], [decision.delta]
    lows, highs, colours = [decision.ci_low], [decision.ci_high], []
    colours.append("tab:green" if decision.promote else "tab:red")
    for s in decision.slices:
        if s.judged and s.delta is not None:
            labels.append(f"{s.column}={s.value} (n={s.rows:,})")
            points.append(s.delta)
            lows.append(s.delta)
            highs.append(s.delta)
            colours.append("tab:blue" if s.passed else "tab:red")
    y = np.arange(len(labels))[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(labels)))
    err = np.array(
        [[p - lo for p, lo in zip(points, lows, strict=True)], [hi - p for p, hi in zip(points, highs, strict=True)]]
    )
    ax.errorbar(points, y, xerr=err, fmt="none", ecolor="grey", capsize=4)
    ax.scatter(points, y, c=colours, zorder=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    if spec.gate.mode == "superiority" and spec.gate.min_improvement > 0:
        ax.axvline(spec.gate.min_improvement, color="tab:green", linestyle="--", linewidth=0.8, label="min improvement")
    if spec.gate.mode == "non_inferiority":
        ax.axvline(-spec.gate.non_inferiority_margin, color="tab:orange", linestyle="--", linewidth=0.8, label="margin")
    if spec.gate.slices:
        ax.axvline(
            -spec.gate.slices.max_degradation,
            color="tab:red",
            linestyle=":",
            linewidth=0.8,
            label="max slice degradation",
        )
    ax.set_yticks(y, labels)
    ax.set_xlabel(
        f"{decision.metric} improvement of v{decision.challenger.version} over "
        f"v{decision.champion.version if decision.champion else '-'} (CI {spec.gate.confidence:.0%})"
    )
    ax.set_title(f"{spec.name}: challenger vs champion")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def curves_plot(spec: ModelSpec, decision: GateDecision, y, challenger, champion) -> bytes:
    """ROC and precision-recall curves (classification) or residual distributions (regression)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [(f"challenger v{decision.challenger.version}", challenger, "tab:blue")]
    if champion is not None and decision.champion:
        models.append((f"champion v{decision.champion.version}", champion, "tab:grey"))
    if spec.task == TaskType.binary_classification:
        from sklearn.metrics import auc, precision_recall_curve, roc_curve

        fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
        for name, all_scores, colour in models:
            # Broken predictions fail the gate's predictions check; the plot still shows the finite rows.
            finite = np.isfinite(all_scores)
            if not finite.all():
                name = f"{name}, {int((~finite).sum())} non-finite dropped"
            y_ok, scores = np.asarray(y)[finite], all_scores[finite]
            if len(np.unique(y_ok)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y_ok, scores)
            roc_ax.plot(fpr, tpr, color=colour, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
            precision, recall, _ = precision_recall_curve(y_ok, scores)
            pr_ax.plot(recall, precision, color=colour, label=name)
        roc_ax.plot([0, 1], [0, 1], color="black", linewidth=0.6, linestyle=":")
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
        pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall (holdout)")
        roc_ax.legend(fontsize=8)
        pr_ax.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, scores, colour in models:
            ax.hist(scores - y, bins=60, alpha=0.5, color=colour, label=name)
        ax.set(xlabel="prediction - truth", ylabel="rows", title="residuals (holdout)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{spec.name}: {len(y):,} holdout rows")
    return _png(fig)


def gate_plots(spec: ModelSpec, decision: GateDecision, y, challenger, champion) -> dict[str, bytes]:
    plots = {"curves.png": curves_plot(spec, decision, y, challenger, champion)}
    if decision.delta is not None:
        plots["delta_by_slice.png"] = delta_plot(spec, decision)
    return plots
