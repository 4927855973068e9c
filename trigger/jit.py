"""numba options of the trigger kernels (one place, so that every pass compiles alike).

- ``JIT``: cached, GIL released, numpy error model;
- ``JIT_NONRT``: kernels that allocate nothing run without NRT (numba's private ``_nrt`` target option): no
  reference counting of the arrays they pass around in the hot loop (atomic operations). A numba without
  the option compiles them with NRT: the same results, somewhat slower;
- ``INLINE``: hot helpers are inlined in numba IR (LLVM does not inline numba calls, and a call passing
  arrays costs NRT reference counting); they have a single exit so that the reference-count pruning
  succeeds.
"""

from __future__ import annotations

from typing import Any

JIT: dict[str, Any] = dict(cache=True, nogil=True, error_model="numpy")
try:
    from numba.core.cpu import CPUTargetOptions

    HAS_NRT_OPTION = hasattr(CPUTargetOptions, "_nrt")
except ImportError:  # pragma: no cover - numba internals moved
    HAS_NRT_OPTION = False
JIT_NONRT: dict[str, Any] = dict(_nrt=False, **JIT) if HAS_NRT_OPTION else dict(JIT)
INLINE: dict[str, Any] = dict(JIT, inline="always")
