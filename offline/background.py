"""Background in the signal box from a side-band fit (docs/physics.md 6.6).

The side-band spectrum (energies in GeV) is histogrammed in the fit range and fitted with an extended
binned Poisson likelihood (iminuit ``ExtendedBinnedNLL``) by f(E) = exp(p0 + p1 E) [events/GeV]; the fit
function integrated over the signal-box range gives n_b, with the statistical error propagated from the
fit covariance. The systematic error is the largest change of n_b when the shape is replaced by
exp(p0 + p1 E + p2 E^2) or a power law exp(p0) E^p1, or when either end of the fit range is moved.
Pure functions: no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from iminuit import Minuit
from iminuit.cost import ExtendedBinnedNLL
from numpy.typing import ArrayLike, NDArray

Shape = Literal["exp", "exp2", "power"]
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _log_density(shape: Shape) -> Callable[..., NDArray[np.float64]]:
    if shape == "exp":
        return lambda e, p0, p1: p0 + p1 * e
    if shape == "exp2":
        return lambda e, p0, p1, p2: p0 + p1 * e + p2 * e * e
    if shape == "power":
        return lambda e, p0, p1: p0 + p1 * np.log(e)
    raise ValueError(f"unknown shape {shape!r}; use exp, exp2 or power")


_N_PARAMS: dict[str, int] = {"exp": 2, "exp2": 3, "power": 2}


def density(energy_gev: ArrayLike, shape: Shape, params: ArrayLike) -> NDArray[np.float64]:
    """Fit function f(E) [events/GeV] of the given shape at energies [GeV]."""
    return np.exp(_log_density(shape)(np.asarray(energy_gev, dtype=float), *np.asarray(params, dtype=float)))


def integral(lo_gev: float, hi_gev: float, shape: Shape, params: ArrayLike, n_sub: int = 64) -> float:
    """Integral of f over [lo, hi] GeV (events), Gauss-Legendre on ``n_sub`` sub-intervals."""
    edges = np.linspace(lo_gev, hi_gev, n_sub + 1)
    return float(np.sum(_bin_integrals(edges, shape, params)))


def _bin_integrals(edges: NDArray, shape: Shape, params: ArrayLike) -> NDArray[np.float64]:
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = mid[:, None] + half[:, None] * _GL_NODES
    return half * (density(nodes, shape, params) @ _GL_WEIGHTS)


@dataclass(frozen=True)
class SidebandFit:
    """One fit: shape, fit range [GeV], parameters with errors and covariance, fit quality."""

    shape: Shape
    fit_range_gev: tuple[float, float]
    params: tuple[float, ...]
    errors: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    chi2: float
    ndf: int
    valid: bool


@dataclass(frozen=True)
class BackgroundEstimate:
    """Expected background in the signal box: ``n_b`` +/- ``stat_err`` (fit) +/- ``syst_err`` (shape and
    range variations), with the nominal fit and the n_b of every variation."""

    n_b: float
    stat_err: float
    syst_err: float
    box_range_gev: tuple[float, float]
    fit: SidebandFit
    variations: dict[str, float] = field(default_factory=dict)

    @property
    def chi2_ndf(self) -> float:
        """chi^2/ndf of the nominal fit (Baker-Cousins likelihood chi^2)."""
        return self.fit.chi2 / self.fit.ndf if self.fit.ndf > 0 else float("nan")

    def as_json(self) -> dict:
        return {
            "n_b": self.n_b,
            "stat_err": self.stat_err,
            "syst_err": self.syst_err,
            "box_range_gev": list(self.box_range_gev),
            "chi2": self.fit.chi2,
            "ndf": self.fit.ndf,
            "chi2_ndf": self.chi2_ndf,
            "fit": {
                "shape": self.fit.shape,
                "range_gev": list(self.fit.fit_range_gev),
                "params": list(self.fit.params),
                "errors": list(self.fit.errors),
                "valid": self.fit.valid,
            },
            "variations": self.variations,
        }


def _start_values(counts: NDArray, edges: NDArray, shape: Shape) -> list[float]:
    centres = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)
    x = np.log(centres) if shape == "power" else centres
    y = np.log((counts + 0.5) / widths)
    slope, offset = np.polyfit(x, y, 1, w=np.sqrt(counts + 0.5))
    return [float(offset), float(slope)] + ([0.0] if shape == "exp2" else [])


def fit_sideband(
    energies_gev: ArrayLike, fit_range_gev: tuple[float, float], n_bins: int = 40, shape: Shape = "exp"
) -> SidebandFit:
    """Extended binned likelihood fit of the side-band energies [GeV] inside ``fit_range_gev``."""
    lo, hi = map(float, fit_range_gev)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bad fit range {fit_range_gev}")
    if shape == "power" and lo <= 0:
        raise ValueError("the power-law shape needs a fit range above 0 GeV")
    energies = np.asarray(energies_gev, dtype=float)
    if energies.ndim != 1:
        raise ValueError("side-band energies must be a 1D array")
    edges = np.linspace(lo, hi, n_bins + 1)
    counts, _ = np.histogram(energies, bins=edges)
    n_par = _N_PARAMS[_check_shape(shape)]
    if counts.sum() < n_par + 1:
        raise ValueError(f"only {counts.sum()} side-band events in {fit_range_gev} GeV: too few to fit")

    def scaled_cdf(xe: NDArray, *params: float) -> NDArray[np.float64]:
        return np.concatenate([[0.0], np.cumsum(_bin_integrals(xe, shape, params))])

    cost = ExtendedBinnedNLL(counts, edges, scaled_cdf)
    minuit = Minuit(cost, *_start_values(counts, edges, shape), name=[f"p{i}" for i in range(n_par)])
    minuit.migrad()
    minuit.hesse()
    return SidebandFit(
        shape=shape,
        fit_range_gev=(lo, hi),
        params=tuple(float(v) for v in minuit.values),
        errors=tuple(float(v) for v in minuit.errors),
        covariance=tuple(tuple(float(c) for c in row) for row in np.asarray(minuit.covariance)),
        chi2=float(minuit.fval),
        ndf=int(n_bins - n_par),
        valid=bool(minuit.valid),
    )


def _check_shape(shape: str) -> str:
    if shape not in _N_PARAMS:
        raise ValueError(f"unknown shape {shape!r}; use exp, exp2 or power")
    return shape


def box_integral(fit: SidebandFit, box_range_gev: tuple[float, float]) -> tuple[float, float]:
    """Integral of the fitted function over the box [GeV] and its error from the fit covariance
    (numerical gradient)."""
    lo, hi = map(float, box_range_gev)
    if not lo < hi:
        raise ValueError(f"bad box range {box_range_gev}")
    params = np.array(fit.params)
    value = integral(lo, hi, fit.shape, params)
    grad = np.empty_like(params)
    for i in range(len(params)):
        step = 1e-6 * max(1.0, abs(params[i]))
        up, down = params.copy(), params.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (integral(lo, hi, fit.shape, up) - integral(lo, hi, fit.shape, down)) / (2 * step)
    variance = float(grad @ np.array(fit.covariance) @ grad)
    return value, float(np.sqrt(max(variance, 0.0)))


def estimate_background(
    sideband_energies_gev: ArrayLike,
    fit_range_gev: tuple[float, float],
    box_range_gev: tuple[float, float],
    n_bins: int = 40,
    range_shift_fraction: float = 0.1,
) -> BackgroundEstimate:
    """Nominal exponential side-band fit, its integral over the signal box, and the systematic error from
    the alternative shapes (exp of a quadratic, power law where E > 0) and from moving each end of the fit
    range inwards by ``range_shift_fraction`` of its width."""
    nominal = fit_sideband(sideband_energies_gev, fit_range_gev, n_bins, "exp")
    n_b, stat = box_integral(nominal, box_range_gev)
    lo, hi = map(float, fit_range_gev)
    shift = range_shift_fraction * (hi - lo)
    alternatives: list[tuple[str, Shape, tuple[float, float]]] = [
        ("shape=exp2", "exp2", (lo, hi)),
        ("range_lo+", "exp", (lo + shift, hi)),
        ("range_hi-", "exp", (lo, hi - shift)),
    ]
    if lo > 0 and box_range_gev[0] > 0:
        alternatives.append(("shape=power", "power", (lo, hi)))
    variations: dict[str, float] = {}
    for label, shape, fit_range in alternatives:
        try:
            fit = fit_sideband(sideband_energies_gev, fit_range, n_bins, shape)
        except ValueError:
            continue
        if fit.valid:
            variations[label] = box_integral(fit, box_range_gev)[0]
    syst = max((abs(v - n_b) for v in variations.values()), default=0.0)
    return BackgroundEstimate(n_b, stat, syst, (float(box_range_gev[0]), float(box_range_gev[1])), nominal, variations)
