"""The report a person reads in a minute: one PNG (drift per feature against its threshold, the score
distributions, volume per hour) and one self-contained HTML page around it."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from ct_pipeline.domain.monitor_report import MonitorReport
from ct_pipeline.steps.monitor.window import WindowStats


def report_png(report: MonitorReport, stats: WindowStats | None, reference_scores: np.ndarray | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    checks = [c for c in report.drift if c.feature != "prediction"]
    ax = axes[0]
    if checks:
        ratio = [c.value / c.threshold if c.threshold else 0.0 for c in checks]
        colors = ["#d62728" if c.drifted else "#2ca02c" for c in checks]
        ax.barh([f"{c.feature} ({c.statistic})" for c in checks], ratio, color=colors)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("statistic / calibrated threshold (> 1 = drift)")
        ax.invert_yaxis()
    ax.set_title("Feature drift")
    ax = axes[1]
    if stats is not None and stats.score is not None and reference_scores is not None and len(stats.score.sample):
        bins = np.linspace(0, max(1e-9, float(np.nanmax(np.r_[reference_scores, stats.score.sample]))), 40)
        ax.hist(reference_scores, bins=bins, density=True, alpha=0.5, label="gate holdout (reference)")
        ax.hist(stats.score.sample, bins=bins, density=True, alpha=0.5, label="served (window)")
        ax.set_yscale("log")
        ax.legend()
    score = next((c for c in report.drift if c.feature == "prediction"), None)
    ax.set_title(
        "Score" + (f": {score.statistic} {score.value:.3g} (threshold {score.threshold:.3g})" if score else "")
    )
    ax = axes[2]
    if stats is not None and len(stats.per_hour):
        ax.bar(np.arange(len(stats.per_hour)), stats.per_hour, color="#1f77b4")
        ax.set_xlabel(f"hour since {report.window_start:%Y-%m-%d %H:%M} UTC")
    ax.set_title(f"Predictions per hour ({report.predictions:,} in the window)")
    status = f"{len(report.breaches)} breach(es)" if report.breaches else "no breach"
    fig.suptitle(f"{report.model} v{report.version}: {status}", fontweight="bold")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def report_html(report: MonitorReport, png: bytes | None) -> str:
    e = html.escape
    breaches = report.breaches
    banner = (
        f'<p class="bad">{len(breaches)} breach(es): ' + "; ".join(e(f.detail) for f in breaches) + "</p>"
        if breaches
        else '<p class="ok">No breach.</p>'
    )
    retrain = f"<p><b>Retraining requested:</b> {e(report.retrain_reason)}</p>" if report.retrain_reason else ""
    alert = ""
    if report.alert_path is not None:
        state = "pushed to" if report.alert_path.pushed else "DOWN:"
        alert = f"<p>Alert path: {state} {e(report.alert_path.target or '')} {e(report.alert_path.detail)}</p>"
    findings = "".join(
        _row(
            [
                e(f.monitor),
                e(f.kind),
                e(f.subject),
                "BREACH" if f.breached else ("ok" if f.judged else "not judged"),
                e(f.detail),
            ]
        )
        for f in report.findings
    )
    drift = "".join(
        _row(
            [
                e(c.feature),
                c.kind,
                c.statistic,
                f"{c.value:.4g}",
                f"{c.threshold:.4g}",
                "" if c.p_value is None else f"{c.p_value:.3g}",
                f"{c.n:,}",
                f"{c.null_rate:.2%}",
                "DRIFT" if c.drifted else "",
            ]
        )
        for c in report.drift
    )
    perf = ""
    if report.performance is not None:
        perf = f"<h2>Performance</h2><p>{e(report.performance.detail)}</p>"
    image = f'<img alt="report" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>' if png else ""
    drift_header = _row(["feature", "kind", "statistic", "value", "threshold", "p", "n", "nulls", ""], True)
    versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(report.versions_seen.items()))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(report.model)} monitor report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}.bad{{color:#b00;font-weight:bold}}
.ok{{color:#070;font-weight:bold}}</style></head><body>
<h1>{e(report.model)} v{e(report.version or "?")} ({e(report.environment)})</h1>
<p>Window [{report.window_start:%Y-%m-%d %H:%M}, {report.window_end:%Y-%m-%d %H:%M}) UTC: {report.predictions:,}
predictions judged (versions served: {e(versions)}); reference {e(report.reference)} ({report.reference_rows:,} rows).
Generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC.</p>
{banner}{retrain}{alert}{image}
<h2>Monitors</h2><table>{_row(["monitor", "kind", "subject", "status", "detail"], True)}{findings}</table>
<h2>Drift</h2><table>{drift_header}{drift}</table>
{perf}</body></html>"""
