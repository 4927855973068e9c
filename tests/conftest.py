"""Test-session settings shared by every test module."""

import os

# Qt must run offscreen; this has to happen before anything imports Qt (docs/stack.md).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PyQt5")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: the test files that take longest (emulator campaigns, the fault matrix, DAQ runs, compiles on empty caches),
#: longest first. Under ``-n N --dist loadfile`` (tasks.py) they are handed out first, so that the
#: workers finish together instead of one worker running the last long campaign alone; a file not listed
#: keeps its place after them.
LONGEST_FIRST = (  # summed test seconds of a full -n 2 run, 2026-12-06 (session 10): 147 down to 12
    "test_fault_matrix.py",
    "test_ecal_calib_live.py",
    "test_calibration_any_intensity.py",
    "test_daq_faults.py",
    "test_hv_tune_live.py",
    "test_emulator_process.py",
    "test_jitcache.py",
    "test_daq_integration.py",
    "test_daq_disk.py",
    "test_limits.py",
    "test_dimuons_on_recorded_run.py",
    "test_led_live.py",
    "test_daq_records.py",
    "test_hv_driver_emulator.py",
    "test_hostile_crate.py",
    "test_offline_on_recorded_run.py",
    "test_ecal_solve.py",
)


#: the files that call the trigger kernels of tests/warm_kernels.py (the amplitude entry, menus with further
#: energy lines): last under xdist, so that ``python3 tasks.py test``, which starts the suite while it still
#: compiles them (tasks.py, WARM_TEST_KERNELS), has them ready before these files need them
CALLS_THE_TESTS_KERNELS = (
    "test_trigger.py",
    "test_trigger_hypothesis.py",
    "test_trigger_lines.py",
    "test_trigger_simd.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # xdist's loadfile schedule orders the files by their number of tests (most first) unless told not to:
    # the long one-test campaigns would come last; keep the collection order (sorted below) instead
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the files of :data:`LONGEST_FIRST` first, in its order, and those of
    :data:`CALLS_THE_TESTS_KERNELS` last (a stable sort: the tests of a file stay together and in their order); a
    run without workers keeps pytest's order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    rank.update((name, len(LONGEST_FIRST) + 1) for name in CALLS_THE_TESTS_KERNELS)
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
