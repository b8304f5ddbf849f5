"""Plots for runs and comparisons: the paper's Figure 6 view (Forget Quality and Model Utility
against training progress) and Figure 5 view (Forget Quality against Model Utility)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fq(values) -> np.ndarray:
    """Forget Quality on a log axis: missing values are NaN, zeros are clipped to 1e-30."""
    return np.array([np.nan if v is None else max(v, 1e-30) for v in values], dtype=float)


def plot_run(history: list[dict], curves: dict[str, tuple[str, str]], out: Path, title: str = "") -> Path:
    """One run: each curve (label -> (history key, "log" | "linear")) against steps, and the first
    against the second (for TOFU: Forget Quality against Model Utility)."""
    plt = _plt()
    steps = [h["step"] for h in history]
    series = {label: (_fq([h[key] for h in history]) if scale == "log"
                      else np.array([np.nan if h[key] is None else h[key] for h in history], dtype=float), scale)
              for label, (key, scale) in curves.items()}
    pair = list(series)[:2] if len(series) >= 2 else []
    fig, axes = plt.subplots(1, len(series) + bool(pair), figsize=(4 * (len(series) + bool(pair)), 3.4), squeeze=False)
    axes = axes[0]
    for ax, (label, (values, scale)) in zip(axes, series.items(), strict=False):
        ax.plot(steps, values, "o-")
        ax.set(xlabel="step", ylabel=label, yscale=scale, title=label)
        if label == "Forget Quality":
            ax.axhline(0.05, color="grey", ls=":", lw=1)
    if pair:
        (y, yscale), (x, _) = series[pair[0]], series[pair[1]]
        ax = axes[-1]
        ax.plot(x, y, "o-")
        for h, xi, yi in zip(history, x, y, strict=True):
            ax.annotate(str(h.get("epoch", "")), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=pair[1], ylabel=pair[0], yscale=yscale, title=f"{pair[0]} vs {pair[1]} (labels: epoch)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_methods(curves: dict[str, dict], out_curves: Path, out_tradeoff: Path, target_mu: float | None = None) -> None:
    """Several methods, each {"epoch": [...], "mu": [[seed values]...], "fq": [[...]...]}: mean over
    seeds with min-max bands against epochs, and mean FQ against mean MU."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, c in curves.items():
        epochs = np.array(c["epoch"])
        for ax, key in ((axes[0], "fq"), (axes[1], "mu")):
            vals = np.array([_fq(row) if key == "fq" else np.array(row, dtype=float) for row in c[key]])
            mean = np.exp(np.nanmean(np.log(vals), axis=1)) if key == "fq" else np.nanmean(vals, axis=1)
            line, = ax.plot(epochs, mean, "o-", ms=3, label=name)
            ax.fill_between(epochs, np.nanmin(vals, axis=1), np.nanmax(vals, axis=1), color=line.get_color(), alpha=0.15)
    axes[0].set(xlabel="epoch", ylabel="Forget Quality (geometric mean)", yscale="log", title="Forget Quality")
    axes[0].axhline(0.05, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="epoch", ylabel="Model Utility", title="Model Utility")
    if target_mu:
        axes[1].axhline(target_mu, color="black", ls="--", lw=1, label="target model")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_curves, dpi=130)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 4))
    for name, c in curves.items():
        mu = np.nanmean(np.array(c["mu"], dtype=float), axis=1)
        fq = np.exp(np.nanmean(np.log(np.array([_fq(r) for r in c["fq"]])), axis=1))
        ax.plot(mu, fq, "o-", ms=3, label=name)
    ax.set(xlabel="Model Utility (mean over seeds)", ylabel="Forget Quality (geometric mean)", yscale="log",
           title="Forget Quality vs Model Utility")
    ax.axhline(0.05, color="grey", ls=":", lw=1)
    if target_mu:
        ax.axvline(target_mu, color="black", ls="--", lw=1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_tradeoff, dpi=130)
    plt.close(fig)
