"""PMT gain law (docs/physics.md section 7): gain G = C * V^gamma, so a pulse amplitude scales as
``(HV / HV_ref) ** gamma`` and the HV that reaches a target amplitude is
``HV_new = HV_old * (A_target / A_meas) ** (1 / gamma)``."""

from __future__ import annotations

import math

import numpy as np


def relative_gain(hv_v: np.ndarray | float, hv_ref_v: np.ndarray | float, gamma: np.ndarray | float) -> np.ndarray:
    """Gain at ``hv_v`` volts relative to the gain at ``hv_ref_v`` volts: (HV/HV_ref)^gamma.
    Zero where the HV is zero or negative (PMT off)."""
    hv = np.asarray(hv_v, dtype=np.float64)
    ref = np.asarray(hv_ref_v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where((hv > 0) & (ref > 0), (np.maximum(hv, 0) / np.where(ref > 0, ref, 1.0)) ** gamma, 0.0)
    return g


def hv_for_amplitude(hv_old_v: float, amp_meas: float, amp_target: float, gamma: float) -> float:
    """HV (V) that moves an amplitude ``amp_meas`` to ``amp_target`` (ADC counts) under the gain law.

    Raises ValueError for a non-positive or non-finite amplitude, target, HV or gamma."""
    for name, v in (("hv_old_v", hv_old_v), ("amp_meas", amp_meas), ("amp_target", amp_target), ("gamma", gamma)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} = {v!r} must be finite and > 0")
    return hv_old_v * (amp_target / amp_meas) ** (1.0 / gamma)


def gamma_from_points(hv1_v: float, amp1: float, hv2_v: float, amp2: float) -> float:
    """Gain-law exponent from two (HV, amplitude) points: ln(A2/A1) / ln(V2/V1).
    ValueError if the points cannot define it (equal HVs, non-positive values)."""
    for name, v in (("hv1_v", hv1_v), ("amp1", amp1), ("hv2_v", hv2_v), ("amp2", amp2)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} = {v!r} must be finite and > 0")
    if abs(math.log(hv2_v / hv1_v)) < 1e-9:
        raise ValueError(f"gamma needs two different voltages, got {hv1_v} V twice")
    return math.log(amp2 / amp1) / math.log(hv2_v / hv1_v)
