"""Geometry and response constants of the fast detector simulation (beam.py, response.py, digitizer.py).

Coordinates: mm in the plane transverse to the beam; the nominal beam axis is (0, 0).

ECAL: 6x6 cells of ``ECAL_PITCH_MM`` (38.2 mm, docs/physics.md 1.3). The beam axis hits the centre of cell
(3, 3) (the NA64 "central cell"), so cell (x, y) is centred at ``((x - 3) * pitch, (y - 3) * pitch)`` and
the matrix spans [-3.5, 2.5] pitches in x and y.

HCAL: 4 modules of 3x3 cells of ``HCAL_PITCH_MM`` (194 mm, docs/protocols.md section 3). At the physics
position the beam axis hits the centre of cell 1-1 of every module; with the table on a cell the beam hits
the module plane at the table coordinates (x_mm, y_mm), where cell x-y is centred at ((x-1)*194, (y-1)*194).

Lateral shower profiles are separable: the fraction of a shower centred at (xc, yc) in the cell
[x0, x1] x [y0, y1] is ``(F(x1-xc) - F(x0-xc)) * (F(y1-yc) - F(y0-yc))`` with ``F`` the CDF of a mixture of
two Laplace (double-exponential) distributions (weight ``w`` with scale ``b1``, ``1-w`` with ``b2``). They are
tuned (DEFAULT) so that a centred e.m. shower leaves 75% of its energy in the central ECAL cell (Moliere
radius ~1.8 cm of Pb/Sc shashlik, 3.8 cm cells) and ~80% of a calibration electron in the hit HCAL cell.
MIP-like deposits (muons, non-interacting hadrons) are point-like: all in the cell that contains the track.

The numba kernels of beam.py, response.py and digitizer.py are cached on disk (``cache=True``) and freeze the
constants of this module and the small functions they inline from other modules; the cache directory is
keyed by the sources (:mod:`detector.jitcache`), so an edited constant always takes effect.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from detector.channels import N_ECAL_X, N_ECAL_Y, N_HCAL_MODULES, N_HCAL_X, N_HCAL_Y

# --------------------------------------------------------------------------------------------- ECAL
ECAL_PITCH_MM = 38.2
ECAL_CENTRAL_CELL = (3, 3)
#: cell edges along x and along y (7 values each), mm
ECAL_EDGES_X = (np.arange(N_ECAL_X + 1) - ECAL_CENTRAL_CELL[0] - 0.5) * ECAL_PITCH_MM
ECAL_EDGES_Y = (np.arange(N_ECAL_Y + 1) - ECAL_CENTRAL_CELL[1] - 0.5) * ECAL_PITCH_MM
ECAL_X0 = 40.0  #: radiation lengths of the whole ECAL (docs/physics.md 1.3)
PS_X0 = 4.0  #: radiation lengths of the preshower section
ECAL_LAMBDA = 1.5  #: nuclear interaction lengths of the ECAL (22.5 cm Pb + Sc; DEFAULT)
PS_LAMBDA = 0.15  #: nuclear interaction lengths of the preshower (docs/physics.md 1.6)

# --------------------------------------------------------------------------------------------- HCAL
HCAL_PITCH_MM = 194.0
HCAL_EDGES = (np.arange(N_HCAL_X + 1) - 1.5) * HCAL_PITCH_MM  #: same along x and y (3x3 cells)
HCAL_MODULE_LAMBDA = 7.0  #: interaction lengths per HCAL module (docs/physics.md 1.4)
V2_HALF_MM = 300.0  #: half-size of the large veto V2 behind the ECAL (DEFAULT)

# ------------------------------------------------------------------------------------ lateral profiles
SHAPE_EM = 0  #: e.m. shower
SHAPE_HAD = 1  #: hadronic shower
SHAPE_MIP = 2  #: point-like track (muon, non-interacting hadron)
SHAPE_NONE = 3  #: nothing in this detector

#: (w, b1_mm, b2_mm) of the Laplace mixture, per shape code (SHAPE_MIP is point-like, not used)
ECAL_PROFILES = np.array(
    [
        [0.70, 6.0, 18.0],  # e.m.: 75.2% in the central cell for a centred shower
        [0.50, 15.0, 50.0],  # hadronic
        [1.00, 1e-3, 1e-3],  # point-like
        [1.00, 1e-3, 1e-3],
    ]
)
HCAL_PROFILES = np.array(
    [
        [1.00, 43.0, 43.0],  # e.m. (calibration electron): 80.1% in the hit cell
        [0.60, 40.0, 120.0],  # hadronic
        [1.00, 1e-3, 1e-3],
        [1.00, 1e-3, 1e-3],
    ]
)

# ------------------------------------------------------------------------------------ energy scales
COUNTER_MIP_GEV = 1.0e-3  #: most probable MIP deposit of S0..S4, V0, V1 (1 MeV -> 200 counts)
V2_MIP_GEV = 8.0e-3  #: most probable MIP deposit of the 4 cm V2 (8 MeV -> 200 counts)
LANDAU_WIDTH = 0.12  #: Moyal width of a counter MIP, relative to the most probable value
ECAL_MIP_GEV = 0.3  #: muon crossing the ECAL, e-equivalent (docs/physics.md 4, PAPER)
PS_MIP_GEV = 0.03  #: its preshower part (docs/physics.md 1.6)
HCAL_MIP_GEV = 2.5  #: muon crossing one HCAL module, e-equivalent (docs/physics.md 1.4)
MU_LOSS_ECAL_GEV = 0.3  #: true energy a muon loses crossing the ECAL
MU_LOSS_HCAL_GEV = 1.5  #: true energy a muon loses crossing one HCAL module (1.2 m Fe)
#: relative RMS sampling fluctuation of an SRD section's signal (the photon statistics of the synchrotron
#: radiation itself come from sim_frontend/beamline.py)
SRD_REL_WIDTH = 0.2

# e.m. showers (Longo/PDG Gamma profile dE/dt ~ t^(a-1) exp(-b t), t in X0)
EM_B = 0.5
EM_EC_GEV = 0.011  #: effective critical energy of the Pb/Sc stack (tuned: PS = 3-8% at 100 GeV)
EM_A_SIGMA = 0.10  #: shower-to-shower log-normal fluctuation of the shape parameter a
ECAL_STOCH = 0.10  #: sigma/E = 10%/sqrt(E) (+) 1% (docs/physics.md 1.3)
ECAL_CONST = 0.01
ECAL_LEAK_MEAN = 2.0e-3  #: mean fraction of an e.m. shower leaking into HCAL module 0 (exponential)
HCAL_STOCH = 0.65  #: sigma/E = 65%/sqrt(E) (+) 5% (docs/physics.md 1.4 DEFAULT)
HCAL_CONST = 0.05
HAD_A = 1.6  #: hadron shower longitudinal Gamma shape (depth in interaction lengths)
HAD_SCALE_LAMBDA = 1.2  #: its scale, lambda (mean depth ~1.9 lambda, 95% within ~4.7 lambda)
HAD_A_SIGMA = 0.3  #: log-normal fluctuation of the hadronic shape


@nb.njit(cache=True, nogil=True)
def laplace_mix_cdf(d: float, w: float, b1: float, b2: float) -> float:
    """CDF at ``d`` (mm from the shower centre) of the 1D lateral profile."""
    if d < 0.0:
        return w * 0.5 * math.exp(d / b1) + (1.0 - w) * 0.5 * math.exp(d / b2)
    return w * (1.0 - 0.5 * math.exp(-d / b1)) + (1.0 - w) * (1.0 - 0.5 * math.exp(-d / b2))


@nb.njit(cache=True, nogil=True)
def containment(
    xc: float, yc: float, lo_x: float, hi_x: float, lo_y: float, hi_y: float, w: float, b1: float, b2: float
) -> float:
    """Fraction of a shower centred at (xc, yc) inside the rectangle [lo_x, hi_x] x [lo_y, hi_y]."""
    fx = laplace_mix_cdf(hi_x - xc, w, b1, b2) - laplace_mix_cdf(lo_x - xc, w, b1, b2)
    fy = laplace_mix_cdf(hi_y - yc, w, b1, b2) - laplace_mix_cdf(lo_y - yc, w, b1, b2)
    return fx * fy


def _mix_cdf_np(d: np.ndarray, w: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    def lap(d, b):
        return np.where(d < 0, 0.5 * np.exp(np.minimum(d, 0) / b), 1.0 - 0.5 * np.exp(-np.maximum(d, 0) / b))

    return w * lap(d, b1) + (1.0 - w) * lap(d, b2)


def cell_fractions(
    xc: np.ndarray, yc: np.ndarray, shape: np.ndarray, edges_x: np.ndarray, edges_y: np.ndarray, profiles: np.ndarray
) -> np.ndarray:
    """Fractions (n, nx, ny) of each shower in the cells of a matrix with the given edges, NORMALISED to 1
    over the matrix (the out-of-matrix part is accounted for in the deposit totals). Point-like deposits
    (SHAPE_MIP) go to the cell containing (xc, yc); rows with nothing in the matrix are all zero."""
    xc = np.asarray(xc, dtype=np.float64)[:, None]
    yc = np.asarray(yc, dtype=np.float64)[:, None]
    shape = np.asarray(shape, dtype=np.int64)
    p = profiles[shape]
    w, b1, b2 = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    cx = np.diff(_mix_cdf_np(edges_x[None, :] - xc, w, b1, b2), axis=1)
    cy = np.diff(_mix_cdf_np(edges_y[None, :] - yc, w, b1, b2), axis=1)
    mip = shape == SHAPE_MIP
    if mip.any():
        ix = np.searchsorted(edges_x, xc[mip, 0]) - 1
        iy = np.searchsorted(edges_y, yc[mip, 0]) - 1
        cx[mip] = 0.0
        cy[mip] = 0.0
        okx = (ix >= 0) & (ix < len(edges_x) - 1)
        oky = (iy >= 0) & (iy < len(edges_y) - 1)
        rows = np.flatnonzero(mip)
        cx[rows[okx], ix[okx]] = 1.0
        cy[rows[oky], iy[oky]] = 1.0
    frac = cx[:, :, None] * cy[:, None, :]
    frac[shape == SHAPE_NONE] = 0.0
    tot = frac.sum(axis=(1, 2), keepdims=True)
    return np.divide(frac, tot, out=np.zeros_like(frac), where=tot > 0)


ECAL_LO_X, ECAL_HI_X = float(ECAL_EDGES_X[0]), float(ECAL_EDGES_X[-1])
ECAL_LO_Y, ECAL_HI_Y = float(ECAL_EDGES_Y[0]), float(ECAL_EDGES_Y[-1])
HCAL_HALF_MM = float(HCAL_EDGES[-1])
assert N_HCAL_X == N_HCAL_Y == 3 and N_HCAL_MODULES == 4
