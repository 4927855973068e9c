"""Published numbers of the NA64 2016 invisible-mode analysis (PAPER = Phys. Rev. D 97, 072002 (2018);
docs/physics.md section 6). Data only, plus the small derived quantities the limit defaults use.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- 6.1 exposure per intensity bin -----------------------------------------------------


@dataclass(frozen=True)
class IntensityBin:
    """One 2016 intensity bin: name, beam intensity range [e-/spill] and electrons on target."""

    name: str
    intensity_min_per_spill: float
    intensity_max_per_spill: float
    n_eot: float


EXPOSURE_2016: tuple[IntensityBin, ...] = (
    IntensityBin("I-low", 1.4e6, 2.0e6, 2.3e10),
    IntensityBin("II-medium", 3.0e6, 3.5e6, 1.1e10),
    IntensityBin("III-high", 4.5e6, 5.0e6, 0.9e10),
)
"""2016 exposure split in the three intensity bins (sum 4.3e10 EOT)."""

TOTAL_EOT_2016: float = 4.3e10
"""Total electrons on target of the 2016 invisible-mode data."""

# --- 6.3 Table II: efficiencies at 5.1e6 e-/spill ---------------------------------------

TABLE_II: dict[str, tuple[float, float]] = {
    "n_eot_normalisation": (1.0, 0.02),
    "eps_e_incoming_selection": (0.58, 0.03),
    "eps_ecal_selection": (0.93, 0.06),
    "eps_veto_v2": (0.94, 0.03),
    "eps_hcal_selection": (0.98, 0.02),
}
"""Table II factors (value, absolute uncertainty). The A' yield factor (10%) is not a number here."""

TABLE_II_TOTAL: tuple[float, float] = (0.50, 0.13)
"""Quoted total signal efficiency and its uncertainty."""

A_PRIME_YIELD_REL_SYST: float = 0.10
"""Relative systematic on the A' yield (dimuon data vs MC)."""


def table_ii_efficiency() -> float:
    """Product of the Table II selection efficiencies (0.58 * 0.93 * 0.94 * 0.98 = 0.497)."""
    product = 1.0
    for name, (value, _) in TABLE_II.items():
        if name.startswith("eps_"):
            product *= value
    return product


# --- 6.4 Table I: dimuon efficiencies ----------------------------------------------------


@dataclass(frozen=True)
class DimuonSample:
    """Table I row: intensity [1e6 e-/spill], n_tot [1e6, unit unexplained in the paper], dimuon counts."""

    name: str
    intensity_1e6_per_spill: float
    n_tot_1e6: float
    n_mc: int
    n_data: int
    efficiency_quoted: float

    @property
    def efficiency(self) -> float:
        """n_data / n_MC."""
        return self.n_data / self.n_mc


TABLE_I: tuple[DimuonSample, ...] = (
    DimuonSample("run I", 1.8, 171.0, 1223, 1124, 0.92),
    DimuonSample("run II", 3.2, 208.5, 1491, 1268, 0.85),
    DimuonSample("run III", 4.6, 597.0, 4271, 3417, 0.81),
)

# --- 6.5 Table III: backgrounds in the signal box for 4.3e10 EOT --------------------------

TABLE_III: dict[str, tuple[float, float | None]] = {
    "hermeticity (punchthrough gammas, cracks)": (0.001, None),
    "hadrons lost from e- Z -> e- + hadrons": (0.001, None),
    "muons lost from gamma -> mu+ mu-": (0.005, 0.001),
    "mu -> e nu nu, pi/K -> e nu, Ke3 decays": (0.02, 0.004),
    "e- interactions in beam-line materials": (0.09, 0.03),
    "mu, pi, K interactions in the target": (0.008, 0.002),
    "accidental SR tag and e- from mu, pi, K decays": (0.001, None),
}
"""Table III: (value, uncertainty); uncertainty None marks an upper limit ("< value")."""

TABLE_III_TOTAL: tuple[float, float] = (0.12, 0.04)
"""Quoted total background and its uncertainty."""


def table_iii_sum_of_central_values() -> float:
    """Sum of the Table III entries with a central value (upper limits excluded): 0.123."""
    return sum(value for value, error in TABLE_III.values() if error is not None)


OBSERVED_2016: int = 0
"""Events observed in the signal box after unblinding (2016)."""

SIGNAL_BOX = {"e_ecal_max_gev": 50.0, "e_hcal_max_gev": 1.0}
"""Offline signal box (E_ECAL < 50 GeV, E_HCAL < ~1 GeV)."""
