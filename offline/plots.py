"""Offline figures (matplotlib with the mplhep style, Agg backend): exclusion in (m_A', eps), y vs m_chi,
E_ECAL vs E_HCAL with the signal box, the cut flow and the incoming-momentum spectrum. Every function takes
arrays/dicts and an output path, writes the figure there and returns the path."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mplhep
import numpy as np
from numpy.typing import ArrayLike

_LABEL = "NA64-like"
MASS_SCAN_RANGE_MEV = (1.0, 1000.0)  #: m_A' axis of the exclusion plot
SPARSE_BIN_EVENTS = 2  #: E_ECAL-E_HCAL bins with at most this many events are drawn as markers


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


def _masses_axis(ax: plt.Axes, lo_mev: float, hi_mev: float) -> None:
    ax.set_xscale("log")
    ax.set_xlim(lo_mev, hi_mev)


def plot_exclusion(
    masses_mev: ArrayLike,
    eps_90: ArrayLike,
    path: str | Path,
    label: str = "90% CL upper limit",
    info: str = "",
    mass_range_mev: tuple[float, float] = MASS_SCAN_RANGE_MEV,
    simulated_mev: Sequence[float] = (),
) -> Path:
    """eps_90(m_A') in log-log axes over ``mass_range_mev`` (MeV), the excluded region above the curve
    shaded; ``info`` (exposure, observed events) goes in the legend, the experiment label above the axes;
    ``simulated_mev``: masses whose signal efficiency was simulated (marked on the curve)."""
    m, eps = _finite_curve(masses_mev, eps_90)
    fig, ax = _new_axes()
    top = 1.0 if eps.min() < 1.0 else float(eps.max()) * 30.0  # eps > 1 is no coupling to exclude
    ax.fill_between(m, eps, top, color="C0", alpha=0.25, lw=0, label="excluded (90% CL)")
    ax.plot(m, eps, color="C0", lw=2, marker="o" if m.size < 8 else None, label=label)
    if len(simulated_mev):
        ms = np.asarray(simulated_mev, dtype=float)
        ax.plot(ms, np.exp(np.interp(np.log(ms), np.log(m), np.log(eps))), "s", color="C1", ms=8,
                label="efficiency simulated", zorder=3)  # fmt: skip
    _masses_axis(ax, *mass_range_mev)
    ax.set(yscale="log", ylim=(float(eps.min()) / 10.0, top), xlabel=r"$m_{A'}$ [MeV]")
    ax.set_ylabel(r"kinetic mixing $\epsilon$")  # a lone rotated epsilon reads as omega
    ax.legend(loc="lower right", title=info or None, fontsize=14, title_fontsize=14)
    mplhep.label.exp_text(_LABEL, r"invisible mode, $A' \to \chi\bar\chi$", ax=ax, loc=0, fontsize=16)
    return _finish(fig, path)


def plot_y_vs_mchi(
    m_chi_mev: ArrayLike,
    y90_by_alpha_d: Mapping[float, ArrayLike],
    path: str | Path,
    info: str = "",
    mass_ratio: float = 3.0,
) -> Path:
    """y_90 = eps_90^2 alpha_D (m_chi/m_A')^4 vs m_chi (MeV) for each alpha_D, log-log (the region above
    each curve is excluded for that alpha_D)."""
    fig, ax = _new_axes()
    lo, hi = math.inf, 0.0
    for i, (alpha_d, y) in enumerate(sorted(y90_by_alpha_d.items(), reverse=True)):
        m, yy = _finite_curve(m_chi_mev, y)
        ax.plot(m, yy, color=f"C{i}", lw=2, marker="o" if m.size < 8 else None, label=rf"$\alpha_D = {alpha_d:g}$")
        lo, hi = min(lo, float(yy.min())), max(hi, float(yy.max()))
        xlo, xhi = float(m.min()), float(m.max())
    ax.set(xscale="log", yscale="log", ylim=(lo / 10.0, hi * 100.0), xlim=(xlo, xhi))
    ax.set_xlabel(r"$m_\chi$ [MeV]")
    ax.set_ylabel(r"$y = \epsilon^2 \alpha_D (m_\chi/m_{A'})^4$")
    title = rf"90% CL, $m_{{A'}} = {mass_ratio:g}\,m_\chi$" + (f"\n{info}" if info else "")
    ax.legend(loc="upper left", title=title, fontsize=14, title_fontsize=14)
    mplhep.label.exp_text(_LABEL, "excluded above the curves", ax=ax, loc=0, fontsize=16)
    return _finish(fig, path)


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle of the E_ECAL-E_HCAL plane (GeV), lower edges included, upper excluded."""

    name: str
    x0: float
    y0: float
    width: float
    height: float

    def count(self, e_ecal: np.ndarray, e_hcal: np.ndarray) -> int:
        in_x = (e_ecal >= self.x0) & (e_ecal < self.x0 + self.width)
        return int((in_x & (e_hcal >= self.y0) & (e_hcal < self.y0 + self.height)).sum())


def box_and_sidebands(
    box_ecal_max_gev: float, box_hcal_max_gev: float, e_ecal_hi: float, e_hcal_hi: float
) -> list[Region]:
    """The signal box and the side bands A (E_ECAL < box edge, E_HCAL above the HCAL cut) and C (E_ECAL above
    the box edge, E_HCAL below the cut) of offline/selection.py, drawn up to the plot edges (GeV)."""
    return [
        Region("signal box", 0.0, 0.0, box_ecal_max_gev, box_hcal_max_gev),
        Region("side band A", 0.0, box_hcal_max_gev, box_ecal_max_gev, e_hcal_hi - box_hcal_max_gev),
        Region("side band C", box_ecal_max_gev, 0.0, e_ecal_hi - box_ecal_max_gev, box_hcal_max_gev),
    ]


_REGION_STYLE = {"signal box": ("red", None), "side band A": ("C1", "//"), "side band C": ("C3", "\\\\")}


def sparse_events(
    e_ecal: np.ndarray,
    e_hcal: np.ndarray,
    counts: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    sparse_max: int,
) -> np.ndarray:
    """Mask of the events inside the histogram range whose bin holds at most ``sparse_max`` events."""
    ix = np.clip(np.searchsorted(x_edges, e_ecal, side="right") - 1, 0, counts.shape[0] - 1)
    iy = np.clip(np.searchsorted(y_edges, e_hcal, side="right") - 1, 0, counts.shape[1] - 1)
    inside = (e_ecal >= x_edges[0]) & (e_ecal <= x_edges[-1]) & (e_hcal >= y_edges[0]) & (e_hcal <= y_edges[-1])
    return inside & (counts[ix, iy] <= sparse_max)


def plot_ecal_vs_hcal(
    e_ecal_gev: ArrayLike,
    e_hcal_gev: ArrayLike,
    path: str | Path,
    box_ecal_max_gev: float = 50.0,
    box_hcal_max_gev: float = 1.0,
    bins: int | Sequence[int] = (120, 60),
    ranges: Sequence[Sequence[float]] = ((0.0, 120.0), (0.0, 60.0)),
    sparse_max: int = SPARSE_BIN_EVENTS,
) -> Path:
    """E_ECAL vs E_HCAL (GeV): a 2D histogram (log colour scale) where bins hold more than ``sparse_max``
    events, one marker per event elsewhere (so single events stay visible); the signal box and the side
    bands (:func:`box_and_sidebands`) drawn, their legend entries carrying the number of plotted events
    inside. E_HCAL on a symlog axis (linear below 1 GeV), so the box, only ``box_hcal_max_gev`` tall, is
    readable next to the hadronic showers."""
    e_ecal, e_hcal = np.asarray(e_ecal_gev, dtype=float), np.asarray(e_hcal_gev, dtype=float)
    if e_ecal.shape != e_hcal.shape:
        raise ValueError("E_ECAL and E_HCAL arrays must have the same shape")
    counts, x_edges, y_edges = np.histogram2d(e_ecal, e_hcal, bins=bins, range=ranges)
    fig, ax = _new_axes()
    dense = np.ma.masked_where(counts <= sparse_max, counts)
    norm = matplotlib.colors.LogNorm(vmin=1, vmax=max(2.0, counts.max()))
    mesh = ax.pcolormesh(x_edges, y_edges, dense.T, norm=norm, cmap="viridis")
    if (counts > sparse_max).any():
        fig.colorbar(mesh, ax=ax, label=f"events per bin (> {sparse_max})")
    sparse = sparse_events(e_ecal, e_hcal, counts, x_edges, y_edges, sparse_max)
    label = f"one event (bins with <= {sparse_max})"
    ax.plot(e_ecal[sparse], e_hcal[sparse], "o", ms=4, color="black", mfc="none", label=label)
    x_hi, y_hi = float(x_edges[-1]), float(y_edges[-1])
    for r in box_and_sidebands(box_ecal_max_gev, box_hcal_max_gev, x_hi, y_hi):
        colour, hatch = _REGION_STYLE[r.name]
        label = f"{r.name} ({r.count(e_ecal, e_hcal)})"
        patch = matplotlib.patches.Rectangle((r.x0, r.y0), r.width, r.height, fill=False, ec=colour, hatch=hatch)
        patch.set(label=label, lw=2.5 if hatch is None else 1.5, alpha=1.0 if hatch is None else 0.6)
        ax.add_patch(patch)
    ax.set_yscale("symlog", linthresh=1.0, linscale=1.0)
    ax.set(xlim=(x_edges[0], x_hi), ylim=(y_edges[0], y_hi), xlabel=r"$E_{ECAL}$ [GeV]", ylabel=r"$E_{HCAL}$ [GeV]")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, fontsize=13, frameon=False, borderaxespad=0.0)
    return _finish(fig, path)


def plot_cutflow(cutflow: Mapping[str, float], path: str | Path) -> Path:
    """Horizontal bar chart of events surviving each cut (in order, top to bottom), log scale, each bar
    annotated with the count and the fraction kept by that step (readable with a dozen cuts)."""
    if not cutflow:
        raise ValueError("empty cut flow")
    names, counts = list(cutflow), np.asarray(list(cutflow.values()), dtype=float)
    fig, ax = _new_axes()
    y = np.arange(len(names))
    bars = ax.barh(y, np.maximum(counts, 0.5), color="C0")
    previous = np.concatenate([[counts[0]], counts[:-1]])
    for bar, n, prev in zip(bars, counts, previous):
        frac = n / prev if prev > 0 else 0.0
        ax.annotate(
            f" {n:.3g}  (x{frac:.3g})",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            ha="left",
            va="center",
            fontsize=11,
        )
    ax.set_yticks(y, names, fontsize=14)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="events", xlim=(0.3, 300.0 * max(counts.max(), 1.0)))
    return _finish(fig, path)


def plot_momentum(
    edges: ArrayLike,
    spectra: Mapping[str, ArrayLike],
    window_gev: tuple[float, float],
    path: str | Path,
    info: str = "",
) -> Path:
    """Incoming-momentum spectra (events per bin, one step curve per label, bin ``edges`` in GeV) with the
    selection's momentum window shaded; log scale (the bremsstrahlung tail)."""
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2:
        raise ValueError("edges must be a 1D array of at least 2 values")
    fig, ax = _new_axes()
    ax.axvspan(*window_gev, color="C2", alpha=0.15, label=f"window {window_gev[0]:g}-{window_gev[1]:g} GeV")
    top = 1.0
    for i, (label, counts) in enumerate(spectra.items()):
        c = np.asarray(counts, dtype=float)
        if c.shape != (e.size - 1,):
            raise ValueError(f"{label}: {c.size} counts for {e.size - 1} bins")
        ax.stairs(c, e, color=f"C{i}", linewidth=1.5, label=f"{label} ({c.sum():.0f})")
        top = max(top, float(c.max()))
    ax.set(xlabel="incoming momentum p [GeV]", ylabel="events per bin", yscale="log", ylim=(0.5, 3.0 * top))
    ax.set_xlim(e[0], e[-1])
    ax.legend(loc="upper left", fontsize=12, title=info or None, title_fontsize=12)
    return _finish(fig, path)
