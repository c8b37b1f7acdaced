"""PNG plots of an evaluation report: calibration curve and accuracy by prompt length.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no GUI backend, no global
state), so plotting works on headless servers and inside tests. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

from .outputs import atomic_write

COLORS = {"no_tta": "#1f77b4", "tta": "#d62728", "given": "#2ca02c"}
TITLES = {"no_tta": "no TTA", "tta": "TTA (both orders)", "given": "probabilities as given"}


def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", bbox_inches="tight"))


def plot_calibration(report: dict, path: str | Path) -> Path:
    """Reliability diagram of P(A wins): mean predicted P(A) per bin against the observed A-win rate."""
    figure = _figure(6.0, 6.0)
    curve_axes, count_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    curve_axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    bins = report["calibration_bins"]
    width = 1 / bins / max(len(report["variants"]), 1)
    for k, name in enumerate(report["variants"]):
        points = report["calibration"][name]
        ece = report["metrics"][name]["ece"]
        curve_axes.plot(
            [p["mean_p_a"] for p in points],
            [p["a_win_rate"] for p in points],
            marker="o",
            color=COLORS.get(name),
            label=f"{TITLES.get(name, name)} (ECE {ece:.3f})",
        )
        count_axes.bar(
            [p["lo"] + width * (k + 0.5) for p in points],
            [p["n"] for p in points],
            width=width,
            color=COLORS.get(name),
            alpha=0.7,
        )
    curve_axes.set_xlim(0, 1)
    curve_axes.set_ylim(0, 1)
    curve_axes.set_ylabel("observed rate of A winning")
    curve_axes.set_title(f"Calibration of P(A), {bins} equal-width bins")
    curve_axes.legend(loc="upper left", fontsize=8)
    curve_axes.grid(alpha=0.3)
    count_axes.set_xlabel("predicted P(A)")
    count_axes.set_ylabel("rows")
    count_axes.grid(alpha=0.3)
    return _save(figure, Path(path))


def plot_accuracy_by_length(report: dict, path: str | Path) -> Path:
    """Accuracy per prompt-length bucket, one bar per variant, row counts under the bucket names."""
    by_length = report["by_length"]
    figure = _figure(7.0, 4.5)
    axes = figure.subplots()
    names = report["variants"]
    buckets = list(by_length[names[0]])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(buckets))]
        ys = [by_length[name][b]["accuracy"] for b in buckets]
        axes.bar(xs, ys, width=width, color=COLORS.get(name), label=TITLES.get(name, name))
    axes.axhline(0.5, linestyle="--", color="0.6", linewidth=1)
    counts = [by_length[names[0]][b]["n"] for b in buckets]
    axes.set_xticks(range(len(buckets)), [f"{b}\nn={n}" for b, n in zip(buckets, counts, strict=True)])
    axes.set_ylim(0, 1.15)
    axes.set_xlabel("prompt length (tokens, template included)")
    axes.set_ylabel("accuracy")
    axes.set_title("Accuracy by prompt length")
    axes.legend(loc="upper right", ncol=len(names), fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, Path(path))
