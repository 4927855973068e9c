"""The monitor's sensitivity estimate: the yield table written by ``na64-offline yields --json`` and the
eps_90 reach for an EOT count (no background, the given efficiency)."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable

import numpy as np

N90_ZERO_BACKGROUND = 2.3  #: 90% CL upper limit on signal events for 0 observed, no background
#: the A' masses (MeV) shown in the sensitivity view by default
SENSITIVITY_MASSES_MEV = (2.0, 16.7, 100.0, 500.0)


class Sensitivity:
    """Yield table written by ``na64-offline yields --json`` and the eps_90 reach for an EOT count.

    File layout: ``{"e0_gev": .., "emiss_min_gev": .., "model": "IWW"|"ETL",
    "yields": [{"mass_mev": m, "yield_per_eot_eps1": y}, ...]}``.
    ``eps_90 = sqrt(2.3 / (EOT * efficiency * yield))`` (0 observed events, no background, 90% CL)."""

    def __init__(self, path: str | pathlib.Path | None, efficiency: float = 0.5) -> None:
        self.path = str(path) if path else ""
        self.efficiency = float(efficiency)
        self.masses = np.empty(0)
        self.yields = np.empty(0)
        self.model_name = ""
        self.e0_gev = math.nan
        self.emiss_min_gev = math.nan
        self.error = ""
        if not self.path:
            self.error = "no yields file configured (monitor.yields_file or --yields)"
            return
        try:
            self._load(pathlib.Path(self.path))
        except FileNotFoundError:
            self.error = f"yields file {self.path} not found (run `na64-offline yields --json`)"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.error = f"yields file {self.path} unusable: {exc}"

    def _load(self, p: pathlib.Path) -> None:
        data = json.loads(p.read_text(encoding="utf-8"))
        rows = data.get("yields") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ValueError("expected an object with a 'yields' list, as `na64-offline yields --json` writes")
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or not {"mass_mev", "yield_per_eot_eps1"} <= r.keys():
                raise ValueError(f"yields row {i} is not an object with 'mass_mev' and 'yield_per_eot_eps1'")
        m = np.array([float(r["mass_mev"]) for r in rows])
        y = np.array([float(r["yield_per_eot_eps1"]) for r in rows])
        good = np.isfinite(m) & np.isfinite(y) & (m > 0) & (y > 0)
        if good.sum() < 1:
            raise ValueError("no positive (mass_mev, yield_per_eot_eps1) rows")
        order = np.argsort(m[good])
        self.masses, self.yields = m[good][order], y[good][order]
        self.model_name = str(data.get("model", ""))
        self.e0_gev = float(data.get("e0_gev", math.nan))
        self.emiss_min_gev = float(data.get("emiss_min_gev", math.nan))

    @property
    def ok(self) -> bool:
        return not self.error

    def yield_at(self, mass_mev: float) -> float:
        """Yield per EOT at eps = 1, log-log interpolated; NaN outside the table."""
        if not self.ok or mass_mev < self.masses[0] or mass_mev > self.masses[-1]:
            return math.nan
        if self.masses.size == 1:
            return float(self.yields[0])
        return float(np.exp(np.interp(math.log(mass_mev), np.log(self.masses), np.log(self.yields))))

    @staticmethod
    def eps90(eot: float, efficiency: float, yield_per_eot: float) -> float:
        if not (eot > 0 and efficiency > 0 and yield_per_eot > 0):
            return math.nan
        return math.sqrt(N90_ZERO_BACKGROUND / (eot * efficiency * yield_per_eot))

    def reach(self, eot: float, masses: Iterable[float] = SENSITIVITY_MASSES_MEV) -> list[tuple[float, float]]:
        """[(mass_mev, eps_90)] at the given masses (NaN when EOT = 0 or the mass is outside the table)."""
        return [(float(m), self.eps90(eot, self.efficiency, self.yield_at(m))) for m in masses]

    def curve(self, eot: float) -> tuple[np.ndarray, np.ndarray]:
        """eps_90 at every mass of the table."""
        if not self.ok or not eot > 0:
            return self.masses, np.full(self.masses.shape, np.nan)
        return self.masses, np.sqrt(N90_ZERO_BACKGROUND / (eot * self.efficiency * self.yields))


# --------------------------------------------------------------------------------------------------
