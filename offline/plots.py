"""Offline figures (matplotlib with the mplhep style, Agg backend): exclusion in (m_A', eps), y vs m_chi,
E_ECAL vs E_HCAL with the signal box, and the cut flow. Every function takes arrays/dicts and an output
path, writes the figure there and returns the path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplhep
import numpy as np
from numpy.typing import ArrayLike

_LABEL = "NA64-like"


def _finish(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _new_axes() -> tuple[plt.Figure, plt.Axes]:
    plt.style.use(mplhep.style.ROOT)
    return plt.subplots(figsize=(8, 6))


def _finite_curve(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("x and y must be 1D arrays of the same, non-zero length")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    order = np.argsort(x[keep])
    return x[keep][order], y[keep][order]


def plot_exclusion(
    masses_mev: ArrayLike, eps_90: ArrayLike, path: str | Path, label: str = "90% CL upper limit", title: str = ""
) -> Path:
    """Excluded region above eps_90(m_A') in log-log axes (m_A' in MeV)."""
    m, eps = _finite_curve(masses_mev, eps_90)
    fig, ax = _new_axes()
    ax.plot(m, eps, color="C0", lw=2, label=label)
    ax.fill_between(m, eps, eps.max() * 10, color="C0", alpha=0.25)
    ax.set(xscale="log", yscale="log", xlabel=r"$m_{A'}$ [MeV]", ylabel=r"$\epsilon$", title=title)
    ax.legend(loc="lower right")
    mplhep.label.exp_text(_LABEL, "invisible mode", ax=ax, loc=0)
    return _finish(fig, path)


def plot_y_vs_mchi(m_chi_mev: ArrayLike, y90_by_alpha_d: Mapping[float, ArrayLike], path: str | Path) -> Path:
    """y_90 = eps_90^2 alpha_D (m_chi/m_A')^4 vs m_chi (MeV) for each alpha_D, log-log."""
    fig, ax = _new_axes()
    for i, (alpha_d, y) in enumerate(sorted(y90_by_alpha_d.items(), reverse=True)):
        m, yy = _finite_curve(m_chi_mev, y)
        ax.plot(m, yy, color=f"C{i}", lw=2, label=rf"$\alpha_D = {alpha_d:g}$, $m_{{A'}} = 3 m_\chi$")
    ax.set(xscale="log", yscale="log", xlabel=r"$m_\chi$ [MeV]", ylabel=r"$y = \epsilon^2 \alpha_D (m_\chi/m_{A'})^4$")
    ax.legend(loc="upper left")
    return _finish(fig, path)


def plot_ecal_vs_hcal(
    e_ecal_gev: ArrayLike,
    e_hcal_gev: ArrayLike,
    path: str | Path,
    box_ecal_max_gev: float = 50.0,
    box_hcal_max_gev: float = 1.0,
    bins: int | Sequence[int] = (120, 60),
    ranges: Sequence[Sequence[float]] = ((0.0, 120.0), (0.0, 60.0)),
) -> Path:
    """2D histogram of E_ECAL vs E_HCAL (GeV, log colour scale) with the signal box drawn."""
    e_ecal, e_hcal = np.asarray(e_ecal_gev, dtype=float), np.asarray(e_hcal_gev, dtype=float)
    if e_ecal.shape != e_hcal.shape:
        raise ValueError("E_ECAL and E_HCAL arrays must have the same shape")
    counts, x_edges, y_edges = np.histogram2d(e_ecal, e_hcal, bins=bins, range=ranges)
    fig, ax = _new_axes()
    masked = np.ma.masked_equal(counts, 0)
    norm = matplotlib.colors.LogNorm(vmin=1, vmax=max(1.0, counts.max()))
    mesh = ax.pcolormesh(x_edges, y_edges, masked.T, norm=norm, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="events")
    ax.add_patch(matplotlib.patches.Rectangle((0, 0), box_ecal_max_gev, box_hcal_max_gev, fill=False, ec="red", lw=2))
    ax.annotate(
        "signal box", (box_ecal_max_gev, box_hcal_max_gev), color="red", xytext=(5, 5), textcoords="offset points"
    )
    ax.set(xlabel=r"$E_{ECAL}$ [GeV]", ylabel=r"$E_{HCAL}$ [GeV]")
    return _finish(fig, path)


def plot_cutflow(cutflow: Mapping[str, float], path: str | Path) -> Path:
    """Bar chart of events surviving each cut (in order), log scale, annotated with the count and the
    fraction kept by that step."""
    if not cutflow:
        raise ValueError("empty cut flow")
    names, counts = list(cutflow), np.asarray(list(cutflow.values()), dtype=float)
    fig, ax = _new_axes()
    bars = ax.bar(np.arange(len(names)), np.maximum(counts, 0.5), color="C0")
    previous = np.concatenate([[counts[0]], counts[:-1]])
    for bar, n, prev in zip(bars, counts, previous):
        frac = n / prev if prev > 0 else 0.0
        ax.annotate(
            f"{n:.3g}\n(x{frac:.3g})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=10,
        )
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set(yscale="log", ylabel="events", ylim=(0.3, 30.0 * max(counts.max(), 1.0)))
    return _finish(fig, path)
