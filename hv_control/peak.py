"""Peak of a cell's amplitude distribution: a Gaussian fitted to the core of the histogram with
iminuit's binned likelihood, giving the peak position (ADC counts) and its error.

The core is found robustly first (median and MAD), the fit runs on +/- ``core_sigmas`` around it, so the
low tail of showers leaking out of the cell does not pull the peak. A fit that does not converge, that
has too few events, whose peak lies outside the fit window or whose distribution has no width (none at
all, or one too narrow to histogram at its amplitude in float64) raises :class:`PeakFitError`, which the
HV campaign (``hv_control.tune``) turns into a pause.

:func:`fit_core` iterates the fit: the window re-centred on the fitted peak, +/- ``core_sigmas`` fitted
sigmas wide, until the peak stays put. That is the ECAL's measurement of the beam-electron peak, whose low
radiative tail (bremsstrahlung in the beam line) pulls the median and the MAD down and wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from iminuit import Minuit
from iminuit.cost import BinnedNLL
from scipy.stats import norm


class PeakFitError(ValueError):
    """The amplitude peak could not be measured; the message says why."""


@dataclass(frozen=True)
class PeakFit:
    """Result of a peak fit; amplitudes in ADC counts."""

    mean: float
    error: float
    sigma: float
    n_events: int
    n_in_fit: int

    @property
    def relative_error(self) -> float:
        return self.error / self.mean


def fit_peak(amplitudes: np.ndarray, min_events: int = 100, core_sigmas: float = 2.0, bins: int = 40) -> PeakFit:
    """Fit the peak of ``amplitudes`` (ADC counts, pedestal subtracted). Raises PeakFitError."""
    a = np.asarray(amplitudes, dtype=np.float64)
    a = a[np.isfinite(a) & (a > 0)]
    if a.size < min_events:
        raise PeakFitError(f"only {a.size} events with a signal, at least {min_events} are needed")
    med = float(np.median(a))
    mad = float(np.median(np.abs(a - med))) * 1.4826
    if not mad > 0:
        raise PeakFitError(f"amplitude distribution has no width (median {med:.1f} counts)")
    lo, hi = med - core_sigmas * mad, med + core_sigmas * mad
    # the same test np.histogram makes: a window a few float64 steps wide cannot hold `bins` distinct bins
    edges = np.linspace(lo, hi, bins + 1)
    if not np.all(edges[1:] > edges[:-1]):
        raise PeakFitError(
            f"amplitude distribution has no width resolvable at its amplitude (spread {mad:.3g} "
            f"counts at median {med:.1f} counts: below float64 resolution for {bins} bins)"
        )
    return _fit_window(a, lo, hi, mad, min_events, bins)


def fit_core(
    values: np.ndarray,
    min_events: int = 100,
    core_sigmas: float = 2.0,
    bins: int = 40,
    iterations: int = 10,
    tol: float = 1e-3,
) -> PeakFit:
    """The Gaussian core of a peak with a one-sided tail (beam electrons that radiated upstream): the fit
    of :func:`fit_peak`, then refitted on +/- ``core_sigmas`` fitted sigmas around the fitted peak until
    the peak moves by less than ``tol`` sigmas (at most ``iterations`` refits), so that the window is
    centred on the peak and not on the median the tail pulls down. Same units as ``values``. Raises
    PeakFitError."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a) & (a > 0)]
    fit = fit_peak(a, min_events=min_events, core_sigmas=core_sigmas, bins=bins)
    for _ in range(iterations):
        lo, hi = fit.mean - core_sigmas * fit.sigma, fit.mean + core_sigmas * fit.sigma
        new = _fit_window(a, lo, hi, fit.sigma, min_events, bins)
        moved = abs(new.mean - fit.mean)
        fit = new
        if moved < tol * fit.sigma:
            break
    return fit


def _fit_window(a: np.ndarray, lo: float, hi: float, width: float, min_events: int, bins: int) -> PeakFit:
    """Gaussian (truncated to [lo, hi]) fitted to the events of ``a`` in the window; ``width``: the
    starting sigma and the scale of its limits."""
    edges = np.linspace(lo, hi, bins + 1)
    if not np.all(edges[1:] > edges[:-1]):
        raise PeakFitError(f"peak window [{lo:.6g}, {hi:.6g}] too narrow for {bins} bins at float64 resolution")
    core = a[(a >= lo) & (a <= hi)]
    if core.size < min_events // 2:
        raise PeakFitError(f"only {core.size} events in the peak window [{lo:.0f}, {hi:.0f}] counts")
    counts, edges = np.histogram(core, bins=bins, range=(lo, hi))

    def model(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        return norm.cdf(x, mu, sigma)

    # BinnedNLL fits a shape normalised to the window: renormalise the truncated Gaussian
    def truncated(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        c_lo, c_hi = norm.cdf(lo, mu, sigma), norm.cdf(hi, mu, sigma)
        return (model(x, mu, sigma) - c_lo) / max(c_hi - c_lo, 1e-300)

    m = Minuit(BinnedNLL(counts, edges, truncated), mu=float(np.mean(core)), sigma=width)
    m.limits["sigma"] = (1e-3 * width, 10 * width)  # relative: any width scale, however narrow
    m.limits["mu"] = (lo, hi)
    m.migrad()
    if not m.valid:
        raise PeakFitError(f"peak fit did not converge ({a.size} events, window [{lo:.1f}, {hi:.1f}] counts)")
    m.hesse()
    mu, err, sig = float(m.values["mu"]), float(m.errors["mu"]), float(m.values["sigma"])
    if not (lo < mu < hi) or not math.isfinite(err) or err <= 0:
        raise PeakFitError(f"peak fit gave mu = {mu:.1f} +/- {err:.1f}, outside the window [{lo:.0f}, {hi:.0f}]")
    return PeakFit(mean=mu, error=err, sigma=sig, n_events=int(a.size), n_in_fit=int(core.size))
