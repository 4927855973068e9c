"""Physical constants and the lead (Pb) target parameters used by the A' and dimuon physics.

Every name carries its unit. Sources: CODATA 2018 / PDG for the fundamental constants,
docs/physics.md sections 2-4 for the target parameters (Z, A, X0, density, N_X0).
"""

from __future__ import annotations

import math

# --- fundamental constants -------------------------------------------------------------
ALPHA_EM: float = 1.0 / 137.035999084
"""Fine-structure constant (dimensionless)."""

M_E_GEV: float = 0.51099895000e-3
"""Electron mass [GeV]."""

M_MU_GEV: float = 0.1056583755
"""Muon mass [GeV]."""

M_P_GEV: float = 0.93827208816
"""Proton mass [GeV]."""

MU_P: float = 2.79
"""Proton magnetic moment [nuclear magnetons], as used in the Tsai inelastic form factor."""

AMU_GEV: float = 0.93149410242
"""Atomic mass unit [GeV]."""

HBARC_GEV_CM: float = 1.973269804e-14
"""hbar * c [GeV cm]."""

HBARC2_PB_GEV2: float = 3.893793721e8
"""(hbar c)^2 [pb GeV^2]: multiply a cross-section in GeV^-2 by this to get pb."""

PB_TO_CM2: float = 1.0e-36
"""1 pb in cm^2."""

UB_TO_CM2: float = 1.0e-30
"""1 microbarn in cm^2."""

AVOGADRO_PER_MOL: float = 6.02214076e23
"""Avogadro constant [1/mol]."""

SQRT_E: float = math.sqrt(math.e)
"""sqrt(e) = 1.6487..., appears in the Bethe-Heitler dimuon screening function."""

# --- lead target ----------------------------------------------------------------------
PB_Z: int = 82
"""Atomic number of lead."""

PB_A: float = 207.2
"""Mass number (standard atomic weight [g/mol]) of lead."""

PB_RHO_G_CM3: float = 11.35
"""Density of lead [g/cm^3]."""

PB_X0_G_CM2: float = 6.37
"""Radiation length of lead [g/cm^2]."""

PB_X0_CM: float = PB_X0_G_CM2 / PB_RHO_G_CM3
"""Radiation length of lead [cm] (= 0.561 cm)."""

PB_N_X0_PER_CM2: float = AVOGADRO_PER_MOL * PB_X0_G_CM2 / PB_A
"""Lead atoms per cm^2 in one radiation length, N_A X0/A = 1.851e22 cm^-2 (docs/physics.md 3.1)."""

PB_NUCLEUS_MASS_GEV: float = PB_A * AMU_GEV
"""Approximate mass of the lead nucleus [GeV] (A * amu; binding and electrons neglected)."""

# --- beam ----------------------------------------------------------------------------
BEAM_ENERGY_GEV: float = 100.0
"""Nominal NA64 electron beam energy [GeV]."""
