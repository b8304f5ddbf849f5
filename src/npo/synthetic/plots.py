"""Figures 3, 4 and 9 of the paper from `npo.synthetic.Curves`, as PNG files.

Uses matplotlib's object API (`Figure`, Agg canvas) rather than pyplot: no global state, no
backend selection, safe in tests and headless runs. Lines are means over seeds; the shaded band is
the min–max range over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from npo.synthetic.experiment import Curves

FIGURE4_METHODS = ("GA", "GA+RT", "IDK+RT", "DPO+RT", "NPO", "NPO+RT")
COLORS = {"GA": "#d62728", "GA+RT": "#ff7f0e", "IDK+RT": "#8c564b", "DPO+RT": "#9467bd",
          "NPO": "#1f77b4", "NPO+RT": "#2ca02c", "NPO+KL": "#17becf", "DPO+KL": "#e377c2"}
LABELS = {"forget_distance": "forget distance  KL(π_retr ‖ π_θ)",
          "retain_distance": "retain distance  KL(π_retr ‖ π_θ)",
          "forget_kl": "forget KL  KL(π_ref ‖ π_θ)"}
BAND_NOTE = "mean over {n} seeds; band: min–max"


def _style(name: str) -> dict:
    return {"color": COLORS.get(name, "0.3"), "ls": "--" if name.endswith("+KL") else "-", "lw": 1.6}


def _band(ax, curves: Curves, metric: str, name: str, band: bool = True, **style) -> None:
    """Mean line and (optionally) min–max band of one method."""
    j = curves.names.index(name)
    s = curves.summary(metric)
    ax.plot(curves.steps, s["mean"][:, j], label=name, **style)
    if band:
        ax.fill_between(curves.steps, s["min"][:, j], s["max"][:, j], color=style["color"], alpha=0.12, lw=0)


def _panel(ax, curves: Curves, metric: str, names: Sequence[str], log: bool, title: str) -> None:
    for name in names:
        if name in curves.names:
            _band(ax, curves, metric, name, **_style(name))
    ax.set(xlabel="unlearning step", ylabel=LABELS[metric], title=title, xlim=(0, curves.steps[-1]))
    if log:
        _log(ax, "y")
    ax.grid(alpha=0.3, which="both" if log else "major", lw=0.5)


def _log(ax, axes: str) -> None:
    """Log scale without minor-tick labels (they collide on ranges under a decade)."""
    for name in axes:
        getattr(ax, f"set_{name}scale")("log")
        getattr(ax, f"{name}axis").set_minor_formatter(NullFormatter())


def _alpha(curves: Curves) -> str:
    return f"α = {curves.alpha:g}"


def _save(fig, path: Path, note: str, top: float = 1.0) -> Path:
    fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def figure4(main: Curves, alpha0: Curves | None, path: Path, names: Sequence[str] = FIGURE4_METHODS) -> Path:
    """Figure 4: forget and retain distance vs steps, their trade-off, and the α = 0 forget distance."""
    n_panels = 4 if alpha0 is not None else 3
    fig = Figure(figsize=(4.6 * n_panels, 4.2))
    axes = fig.subplots(1, n_panels)
    _panel(axes[0], main, "forget_distance", names, True, f"(a) forget distance, {_alpha(main)}")
    _panel(axes[1], main, "retain_distance", names, True, f"(b) retain distance, {_alpha(main)}")
    ax = axes[2]
    fd, rd = main.summary("forget_distance")["mean"], main.summary("retain_distance")["mean"]
    for name in names:
        if name in main.names:
            j = main.names.index(name)
            ax.plot(fd[:, j], rd[:, j], label=name, **_style(name))
            ax.plot(fd[-1, j], rd[-1, j], "o", ms=4, color=_style(name)["color"])
    ax.plot(fd[0, 0], rd[0, 0], "k*", ms=10, label="π_ref (start)")
    _log(ax, "xy")
    ax.set(xlabel=LABELS["forget_distance"], ylabel=LABELS["retain_distance"],
           title=f"(c) trade-off (means; dot = last step), {_alpha(main)}")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    if alpha0 is not None:
        _panel(axes[3], alpha0, "forget_distance", names, True, f"(d) forget distance, {_alpha(alpha0)}")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    return _save(fig, path, BAND_NOTE.format(n=len(main.seeds)), top=0.93)


def figure9(studies: Sequence[Curves], path: Path) -> Path:
    """Figure 9: forget KL to the reference vs steps, all methods (KL-regularised ones dashed)."""
    fig = Figure(figsize=(5.2 * len(studies), 4.2))
    axes = fig.subplots(1, len(studies), squeeze=False)
    for ax, curves in zip(axes[0], studies, strict=True):
        _panel(ax, curves, "forget_kl", curves.names, False, f"forget KL to π_ref, {_alpha(curves)}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path, BAND_NOTE.format(n=len(studies[0].seeds)))


def figure3(sweep: Curves, path: Path) -> Path:
    """Figure 3: NPO at decreasing β approaches GA's forget-distance curve (same learning rate).
    Means only: six overlapping min–max bands would hide the ordering in β."""
    fig = Figure(figsize=(7.4, 4.4))
    ax = fig.subplots()
    npo = [n for n in sweep.names if n != "GA"]
    shades = colormaps["viridis"](np.linspace(0.0, 0.85, len(npo)))
    for name, color in zip(npo, shades, strict=True):
        _band(ax, sweep, "forget_distance", name, band=False, color=color, ls="-", lw=1.6)
    if "GA" in sweep.names:
        _band(ax, sweep, "forget_distance", "GA", band=False, color="#d62728", ls="--", lw=1.8)
    lr = sweep.methods[0].lr
    _log(ax, "y")
    ax.set(xlabel="unlearning step", ylabel=LABELS["forget_distance"], xlim=(0, sweep.steps[-1]),
           title=f"NPO → GA as β → 0 (lr {lr:g}, {_alpha(sweep)})")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path, f"mean over {len(sweep.seeds)} seeds (spread in curves.csv)")
