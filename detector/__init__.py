"""The apparatus and its signals, shared by every other package."""

from .jitcache import configure as _configure_jit_cache

_configure_jit_cache()
