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


def plot_run(history: list[dict], out: Path, title: str = "") -> Path:
    """One run: FQ and MU against steps, and FQ against MU."""
    plt = _plt()
    steps = [h["step"] for h in history]
    mu = np.array([h["model_utility"] for h in history])
    fq = _fq([h["forget_quality"] for h in history])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(steps, fq, "o-")
    axes[0].set(xlabel="step", ylabel="Forget Quality (KS p-value)", yscale="log", title="Forget Quality")
    axes[0].axhline(0.05, color="grey", ls=":", lw=1)
    axes[1].plot(steps, mu, "o-")
    axes[1].set(xlabel="step", ylabel="Model Utility", title="Model Utility")
    axes[2].plot(mu, fq, "o-")
    for h, x, y in zip(history, mu, fq, strict=True):
        axes[2].annotate(str(h.get("epoch", "")), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[2].set(xlabel="Model Utility", ylabel="Forget Quality", yscale="log", title="FQ vs MU (labels: epoch)")
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
