"""CLs upper limits on the A' signal and their translation into eps_90(m_A') and y_90 (docs/physics.md 6-7).

Two calculations of N_90, the signal count excluded at 90% CL (CLs = 0.10):

- ``fast`` (default): counting model. All runs are summed into one Poisson count; the signal is smeared
  by a log-normal kappa (median 1, width sqrt(sum ln^2(1 + sigma_rel))), the background by its own
  log-normal, both integrated numerically (Gauss-Hermite). CLs = P(n <= n_obs | s + b) / P(n <= n_obs | b)
  and N_90 solves CLs = 0.10. For n_obs = 0 and no systematics N_90 = ln 10 = 2.302585 for any b.
- ``pyhf``: a multi-bin model (one bin per run) with normsys nuisances (hi = 1 + sigma, lo = 1/(1 + sigma),
  i.e. log-normal) for n_EOT, efficiency, A' yield (correlated across runs) and the background. CLs from
  toys (``pyhf-toys``: prior-predictive "hybrid" toys with pyhf's q~_mu, right at small counts, ~20 s;
  see :class:`PyhfCLs` for why pyhf's own ToyCalculator is not used) or from the asymptotic formulae
  (``pyhf-asymptotic``: fast, wrong near zero background). N_90 is the toms748 root of CLs = 0.10.

The signal normalisation is the total expected signal count, so mu_90 = N_90 directly.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, stats

from offline import paper2016
from sim_frontend import aprime

Method = Literal["fast", "pyhf-toys", "pyhf-asymptotic"]
CLS_LEVEL: float = 0.10
"""CLs value excluded: 1 - CL for a 90% CL limit."""


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class RunExposure:
    """One run (or intensity bin): electrons on target, signal efficiency, observed events, expected
    background and its absolute uncertainty."""

    name: str
    n_eot: float
    efficiency: float
    n_obs: int = 0
    background: float = 0.0
    background_err: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.n_eot) and self.n_eot > 0):
            raise ValueError(f"run {self.name}: n_eot must be > 0, got {self.n_eot}")
        if not 0.0 < self.efficiency <= 1.0:
            raise ValueError(f"run {self.name}: efficiency must be in (0, 1], got {self.efficiency}")
        if self.n_obs < 0 or int(self.n_obs) != self.n_obs:
            raise ValueError(f"run {self.name}: n_obs must be a non-negative integer, got {self.n_obs}")
        if not all(math.isfinite(v) and v >= 0 for v in (self.background, self.background_err)):
            raise ValueError(
                f"run {self.name}: background and its error must be finite and >= 0, "
                f"got {self.background}, {self.background_err}"
            )


@dataclass(frozen=True)
class SignalSystematics:
    """Relative systematic uncertainties on the signal, fully correlated across runs (docs/physics.md 6.2)."""

    n_eot: float = 0.02
    efficiency: float = 0.15
    aprime_yield: float = paper2016.A_PRIME_YIELD_REL_SYST

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.as_dict().items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"relative systematics must be finite and >= 0, got {bad}")

    def as_dict(self) -> dict[str, float]:
        return {"n_eot": self.n_eot, "efficiency": self.efficiency, "aprime_yield": self.aprime_yield}

    def log_width(self) -> float:
        """Width of the combined log-normal: sqrt(sum ln^2(1 + sigma_i))."""
        return math.sqrt(sum(math.log1p(s) ** 2 for s in self.as_dict().values()))


def paper_2016_runs(
    n_eot_total: float = paper2016.TOTAL_EOT_2016,
    efficiency: float = 0.50,
    background_total: float = paper2016.TABLE_III_TOTAL[0],
    background_rel_err: float = paper2016.TABLE_III_TOTAL[1] / paper2016.TABLE_III_TOTAL[0],
    n_obs_total: int = paper2016.OBSERVED_2016,
) -> list[RunExposure]:
    """The 2016 configuration: EOT split in the three intensity bins of docs/physics.md 6.1 (rescaled to
    ``n_eot_total``), one efficiency, background shared in proportion to EOT, observed events in the
    first bin (the paper observed 0)."""
    bins = paper2016.EXPOSURE_2016
    fractions = np.array([b.n_eot for b in bins]) / sum(b.n_eot for b in bins)
    return [
        RunExposure(
            name=b.name,
            n_eot=n_eot_total * f,
            efficiency=efficiency,
            n_obs=n_obs_total if i == 0 else 0,
            background=background_total * f,
            background_err=background_total * f * background_rel_err,
        )
        for i, (b, f) in enumerate(zip(bins, fractions))
    ]


def load_runs(path: str | Path) -> tuple[list[RunExposure], SignalSystematics | None]:
    """Read runs from a results JSON file:

        {"runs": [{"name": "...", "n_eot": 2.3e10, "efficiency": 0.5, "n_obs": 0,
                   "background": 0.06, "background_err": 0.02}, ...],
         "systematics": {"n_eot": 0.02, "efficiency": 0.15, "aprime_yield": 0.10}}   (optional)

    A bare list of run objects is accepted too."""
    data = json.loads(Path(path).read_text())
    raw_runs = data if isinstance(data, list) else data.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise ValueError(f"{path}: expected a non-empty list of runs (or an object with a 'runs' list)")
    runs = []
    for i, item in enumerate(raw_runs):
        try:
            runs.append(
                RunExposure(
                    name=str(item.get("name", f"run{i}")),
                    n_eot=float(item["n_eot"]),
                    efficiency=float(item["efficiency"]),
                    n_obs=int(item.get("n_obs", 0)),
                    background=float(item.get("background", 0.0)),
                    background_err=float(item.get("background_err", 0.0)),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: run {i} is missing or has a bad field: {exc}") from exc
    syst = data.get("systematics") if isinstance(data, dict) else None
    return runs, (SignalSystematics(**syst) if syst else None)


# ----------------------------------------------------------------------------- fast counting CLs
def _lognormal_nodes(log_width: float, n_nodes: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Values and weights of a log-normal variable (median 1) for Gauss-Hermite integration."""
    if log_width == 0.0:
        return np.ones(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    return np.exp(log_width * z), w / w.sum()


def cls_counting(
    s: float,
    n_obs: int,
    b: float,
    signal_log_width: float = 0.0,
    background_log_width: float = 0.0,
    n_nodes: int = 48,
) -> float:
    """CLs of a counting experiment for signal ``s``, background ``b``, ``n_obs`` observed events, with
    log-normal smearing (median 1) of signal and background integrated out (hybrid Bayesian-frequentist)."""
    if s < 0 or b < 0 or n_obs < 0:
        raise ValueError(f"need s, b, n_obs >= 0, got s={s}, b={b}, n_obs={n_obs}")
    ks, ws = _lognormal_nodes(signal_log_width, n_nodes)
    kb, wb = _lognormal_nodes(background_log_width, n_nodes)
    mean_sb = s * ks[:, None] + b * kb[None, :]
    cl_sb = float(np.sum(ws[:, None] * wb[None, :] * stats.poisson.cdf(n_obs, mean_sb)))
    cl_b = float(np.sum(wb * stats.poisson.cdf(n_obs, b * kb)))
    return cl_sb / cl_b


def n90_counting(
    n_obs: int,
    b: float,
    signal_log_width: float = 0.0,
    background_log_width: float = 0.0,
    level: float = CLS_LEVEL,
) -> float:
    """Signal count excluded at CLs = ``level`` (default 0.10, i.e. 90% CL) by the counting model."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")

    def excess(s: float) -> float:
        return cls_counting(s, n_obs, b, signal_log_width, background_log_width) - level

    upper = 5.0 + 2.0 * n_obs + 5.0 * math.sqrt(b + 1.0)
    while excess(upper) > 0:
        upper *= 2.0
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-10, rtol=1e-12))


# ----------------------------------------------------------------------------- pyhf
def _normsys(name: str, rel: float) -> dict:
    return {"name": name, "type": "normsys", "data": {"hi": 1.0 + rel, "lo": 1.0 / (1.0 + rel)}}


def pyhf_spec(runs: Sequence[RunExposure], syst: SignalSystematics, mu_max: float) -> dict:
    """pyhf model specification: one channel, one bin per run; the signal sample is normalised to a total
    of 1 event (so mu = total signal count), with correlated log-normal-like normsys nuisances."""
    weight = np.array([r.n_eot * r.efficiency for r in runs])
    signal = weight / weight.sum()
    background = np.array([r.background for r in runs])
    signal_modifiers = [{"name": "mu", "type": "normfactor", "data": None}]
    signal_modifiers += [_normsys(f"signal_{k}", v) for k, v in syst.as_dict().items() if v > 0]
    samples = [{"name": "signal", "data": signal.tolist(), "modifiers": signal_modifiers}]
    if background.sum() > 0:
        err = np.array([r.background_err for r in runs])
        rel = float(err.sum() / background.sum())
        modifiers = [_normsys("background_norm", rel)] if rel > 0 else []
        # pyhf needs a positive expectation in every bin; a tiny floor does not change the limit
        samples.append({"name": "background", "data": np.maximum(background, 1e-9).tolist(), "modifiers": modifiers})
    return {
        "channels": [{"name": "signal_box", "samples": samples}],
        "parameters": [{"name": "mu", "bounds": [[0.0, mu_max]]}],
    }


PyhfMethod = Literal["hybrid-toys", "frequentist-toys", "asymptotic"]


class PyhfCLs:
    """CLs(mu) of the multi-bin pyhf model for a fixed set of runs and systematics.

    Methods:
    - ``hybrid-toys``: toys drawn from the prior predictive of the pyhf model (nuisance parameters from their
      unit-Gaussian constraints, counts from Poisson), auxiliary measurements held at their observed values,
      test statistic q~_mu from pyhf, ties (identical toy and observed counts) counted as ">=". This is the
      toy version of the counting model's log-normal smearing. q~_mu is fitted once per distinct count vector,
      and every call reuses the same random numbers (counts by inverse CDF), so CLs(mu) is deterministic and
      monotone enough for a root finder.
    - ``frequentist-toys``: pyhf's own ToyCalculator (auxiliary data fluctuate as well). At n_obs ~ 0 the
      fluctuating auxiliary data break the ties of the discrete count, which lowers CL_s+b and the limit
      by ~15-20% relative to the counting model; slow (~1 min per limit).
    - ``asymptotic``: pyhf asymptotic formulae; valid at large counts only (wrong near zero background).
    """

    def __init__(
        self,
        runs: Sequence[RunExposure],
        syst: SignalSystematics,
        method: PyhfMethod = "hybrid-toys",
        ntoys: int = 20_000,
        seed: int = 1,
        mu_max: float = 100.0,
    ) -> None:
        import pyhf

        if method not in ("hybrid-toys", "frequentist-toys", "asymptotic"):
            raise ValueError(f"unknown pyhf method {method!r}")
        if ntoys < 100:
            raise ValueError(f"ntoys must be >= 100, got {ntoys}")
        pyhf.set_backend("numpy")
        self._pyhf = pyhf
        self.method, self.ntoys, self.seed = method, int(ntoys), int(seed)
        spec = pyhf_spec(runs, syst, mu_max)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # jsonschema RefResolver inside pyhf 0.7
            self.model = pyhf.Model(spec)
            self._batch_model = pyhf.Model(spec, batch_size=self.ntoys) if method == "hybrid-toys" else None
        self.observed = [float(r.n_obs) for r in runs]
        self.data = self.observed + self.model.config.auxdata
        self._init = self.model.config.suggested_init()
        self._bounds = self.model.config.suggested_bounds()
        self._fixed = self.model.config.suggested_fixed()
        self._nuisance_slices = []
        if method == "hybrid-toys":
            for name in self.model.config.parameters:
                if name == self.model.config.poi_name:
                    continue
                if getattr(self.model.config.param_set(name), "pdf_type", None) != "normal":
                    raise ValueError(f"hybrid toys need Gaussian-constrained nuisances; {name} is not")
                self._nuisance_slices.append(self.model.config.par_slice(name))

    def __call__(self, mu: float) -> float:
        """CLs at signal strength ``mu`` (= total signal events)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # percentile(interpolation=) inside pyhf 0.7
            if self.method == "hybrid-toys":
                return self._hybrid_cls(mu)
            np.random.seed(self.seed)  # noqa: NPY002 - pyhf's toys draw from numpy's global random state
            kwargs: dict = {"calctype": "asymptotics"}
            if self.method == "frequentist-toys":
                kwargs = {"calctype": "toybased", "ntoys": self.ntoys, "track_progress": False}
            return float(self._pyhf.infer.hypotest(mu, self.data, self.model, test_stat="qtilde", **kwargs))

    def _q_tilde(self, mu: float, counts: Sequence[float]) -> float:
        data = list(counts) + self.model.config.auxdata
        return float(
            self._pyhf.infer.test_statistics.qmu_tilde(mu, data, self.model, self._init, self._bounds, self._fixed)
        )

    def _tail_probability(self, mu: float, mu_true: float, q_obs: float, stream: int) -> float:
        rng = np.random.default_rng([self.seed, stream])
        pars = np.tile(np.asarray(self._init, dtype=float), (self.ntoys, 1))
        pars[:, self.model.config.poi_index] = mu_true
        for par_slice in self._nuisance_slices:
            pars[:, par_slice] = rng.standard_normal((self.ntoys, 1))
        if self._batch_model is None:
            raise RuntimeError("the batched model exists only for the hybrid-toys method")
        expected = np.asarray(self._batch_model.expected_actualdata(pars))
        counts = stats.poisson.ppf(rng.random(expected.shape), expected)
        distinct, index = np.unique(counts, axis=0, return_inverse=True)
        q = np.array([self._q_tilde(mu, row) for row in distinct])[np.ravel(index)]
        return float(np.mean(q >= q_obs - 1e-6 * (1.0 + abs(q_obs))))

    def _hybrid_cls(self, mu: float) -> float:
        q_obs = self._q_tilde(mu, self.observed)
        cl_sb = self._tail_probability(mu, mu, q_obs, stream=1)
        cl_b = self._tail_probability(mu, 0.0, q_obs, stream=2)
        return cl_sb / cl_b


def n90_pyhf(
    runs: Sequence[RunExposure],
    syst: SignalSystematics,
    method: PyhfMethod = "hybrid-toys",
    ntoys: int = 20_000,
    seed: int = 1,
    level: float = CLS_LEVEL,
    rtol: float = 2e-3,
) -> float:
    """N_90 from the pyhf multi-bin model (see :class:`PyhfCLs`): toms748 root of CLs(mu) = ``level``,
    bracketed above mu = 0 around the counting-model limit (pyhf's ``upper_limit`` ignores ``level``, and
    ``toms748_scan`` would also search the five expected-band limits)."""
    n_obs = sum(r.n_obs for r in runs)
    b_total = sum(r.background for r in runs)
    guess = n90_counting(n_obs, b_total, syst.log_width())
    cls = PyhfCLs(runs, syst, method, ntoys, seed, mu_max=20.0 * guess + 20.0)

    def excess(mu: float) -> float:
        return cls(mu) - level

    low, high = 0.7 * guess, 1.4 * guess
    while excess(low) < 0:
        low *= 0.5
        if low < 1e-3 * guess:
            raise RuntimeError("pyhf CLs stays below the level even at mu ~ 0")
    while excess(high) > 0:
        high *= 2.0
        if high > 20.0 * guess:
            raise RuntimeError("pyhf CLs stays above the level up to 20x the counting-model limit")
    return float(optimize.toms748(excess, low, high, rtol=rtol))


# ----------------------------------------------------------------------------- eps_90, y_90
@dataclass(frozen=True)
class LimitPoint:
    """Limit at one A' mass. ``n_aprime_eps1`` is the expected signal for eps = 1 summed over runs."""

    mass_mev: float
    n90: float
    n_aprime_eps1: float
    eps_90: float
    y90: dict[float, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        out = {"mass_mev": self.mass_mev, "eps_90": self.eps_90, "n90": self.n90}
        for alpha_d, y in self.y90.items():
            out[f"y90_alphaD_{alpha_d:g}"] = y
        return out


def n90_for_runs(runs: Sequence[RunExposure], syst: SignalSystematics, method: Method = "fast", **pyhf_kwargs) -> float:
    """N_90 for a set of runs with the chosen method."""
    if method == "fast":
        n_obs = sum(r.n_obs for r in runs)
        b = sum(r.background for r in runs)
        b_err = sum(r.background_err for r in runs)
        b_width = math.log1p(b_err / b) if b > 0 else 0.0
        return n90_counting(n_obs, b, syst.log_width(), b_width)
    if method == "pyhf-toys":
        return n90_pyhf(runs, syst, "hybrid-toys", **pyhf_kwargs)
    if method == "pyhf-asymptotic":
        return n90_pyhf(runs, syst, "asymptotic")
    raise ValueError(f"unknown method {method!r}; use fast, pyhf-toys or pyhf-asymptotic")


def expected_signal_eps1(runs: Sequence[RunExposure], yield_per_eot_eps1: float) -> float:
    """N_A'(eps = 1) = sum over runs of n_EOT * efficiency * n_A'/eps^2 (PAPER Eq. 26)."""
    if yield_per_eot_eps1 < 0:
        raise ValueError(f"yield must be >= 0, got {yield_per_eot_eps1}")
    return sum(r.n_eot * r.efficiency for r in runs) * yield_per_eot_eps1


def eps90(n90: float, n_aprime_eps1: ArrayLike) -> NDArray[np.float64]:
    """eps_90 = sqrt(N_90 / N_A'(eps = 1)); inf where no signal is expected."""
    n_a = np.asarray(n_aprime_eps1, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(n_a > 0, np.sqrt(n90 / np.where(n_a > 0, n_a, 1.0)), np.inf)


def y90(eps_90: ArrayLike, alpha_d: float, mass_ratio: float = 3.0) -> NDArray[np.float64]:
    """y_90 = eps_90^2 alpha_D (m_chi/m_A')^4 with m_A' = ``mass_ratio`` * m_chi (inf where eps_90 is inf)."""
    eps = np.asarray(eps_90, dtype=float)
    finite = np.isfinite(eps)
    y = np.full(eps.shape, np.inf)
    y[finite] = aprime.y_parameter(eps[finite], alpha_d, 1.0, mass_ratio)
    return y


def limit_points(
    masses_mev: Sequence[float],
    yields_per_eot_eps1: Sequence[float],
    runs: Sequence[RunExposure],
    n90: float,
    alpha_d_values: Sequence[float] = (0.5, 0.005),
) -> list[LimitPoint]:
    """eps_90 and y_90 for each mass, given the per-EOT yields at eps = 1 and N_90."""
    points = []
    for mass, yld in zip(masses_mev, yields_per_eot_eps1):
        n_a = expected_signal_eps1(runs, yld)
        eps = float(eps90(n90, n_a))
        points.append(LimitPoint(float(mass), n90, n_a, eps, {a: float(y90(eps, a)) for a in alpha_d_values}))
    return points
