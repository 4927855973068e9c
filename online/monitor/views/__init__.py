"""Widgets of the control-room monitor, one module per group of views (:mod:`.base` has the shared
colours, formatting, :class:`~.base.Tile` and the view registry).

A view registers itself with ``@register(key, title, area)`` (:func:`.base.register`); the window builds
every registered view and docks it. Every module of this package is imported here, so a new view is
one class in one module (new or existing) and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    AREAS,
    BG,
    CMAP,
    EXTRA_COLOURS,
    FG,
    HV_COLOURS,
    LEVEL_COLOURS,
    LOG_COLOURS,
    NEUTRAL,
    PANEL,
    REGISTRY,
    STATE_COLOURS,
    TRIGGER_COLOURS,
    StableRange,
    Tile,
    TopicView,
    ViewSpec,
    apply_dark_theme,
    fmt_age,
    fmt_compact,
    fmt_count,
    fmt_eps,
    nice_ceil,
    register,
    registered,
    set_bar_levels,
)
from .detail import HVView, SensitivityView, WaveformView
from .panels import AlarmPanel, LogPane, StatusPanel
from .plots import CaloMapsView, CellMap, EcalHcalView, RatesView

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "AREAS",
    "BG",
    "CMAP",
    "EXTRA_COLOURS",
    "FG",
    "HV_COLOURS",
    "LEVEL_COLOURS",
    "LOG_COLOURS",
    "NEUTRAL",
    "PANEL",
    "REGISTRY",
    "STATE_COLOURS",
    "TRIGGER_COLOURS",
    "AlarmPanel",
    "CaloMapsView",
    "CellMap",
    "EcalHcalView",
    "HVView",
    "LogPane",
    "RatesView",
    "SensitivityView",
    "StableRange",
    "StatusPanel",
    "Tile",
    "TopicView",
    "ViewSpec",
    "WaveformView",
    "apply_dark_theme",
    "fmt_age",
    "fmt_compact",
    "fmt_count",
    "fmt_eps",
    "nice_ceil",
    "register",
    "registered",
    "set_bar_levels",
]
