"""HDF5 run -> ROOT export (online/export.py), read back with uproot."""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from detector.records import SPILL_FLAGS, TRUTH_DTYPE
from detector.spillfile import SpillContent, SpillFileError, list_spills, spill_path
from online.export import export_run, flags_bits
from online.recorder import RunRecorder


def _run(tmp_path, truth=True):
    r = RunRecorder(tmp_path, 2).open()
    rng = np.random.default_rng(4)
    wfs = {}
    for s, n in ((1, 4), (2, 7)):
        wf = rng.integers(0, 4095, (n, 121, 32)).astype(np.int16)
        wfs[s] = wf
        tr = None
        if truth:
            tr = np.zeros(n, TRUTH_DTYPE)
            tr["e_beam"] = 100.0 + s
            tr["index"] = np.arange(n) * 3
        c = SpillContent(
            2,
            s,
            (np.arange(n) * 3).astype(np.uint32),
            np.full(n, 1 + s, np.uint8),
            np.arange(n) * 10.0,
            wf,
            tr,
            {"crate_spill": 40 + s, "eot": 11 * s},
        )
        r.record_spill(
            c, {"crate_spill": 40 + s, "n_particles": 30, "n_seen": 30, "n_accepted": n, "n_read_out": n, "eot": 11 * s}
        )
    r.record_empty(3, 43, ["spill_lost"], "test")
    r.close()
    return r.rdir, wfs


def test_export_reads_back(tmp_path):
    rdir, wfs = _run(tmp_path)
    info = export_run(rdir, tmp_path / "run.root")
    assert info == {"spills": 3, "events": 11, "path": str(tmp_path / "run.root"), "truth": True}
    with uproot.open(tmp_path / "run.root") as f:
        ev = f["events"].arrays(library="np")
        sp = f["spills"].arrays(library="np")
    assert ev["waveforms"].shape == (11, 121, 32)
    assert np.array_equal(ev["waveforms"], np.concatenate([wfs[1], wfs[2]]))
    assert ev["spill"].tolist() == [1] * 4 + [2] * 7
    assert ev["trigger_mask"].tolist() == [2] * 4 + [3] * 7
    assert np.allclose(ev["truth_e_beam"], [101.0] * 4 + [102.0] * 7)
    assert sp["spill"].tolist() == [1, 2, 3] and sp["crate_spill"].tolist() == [41, 42, 43]
    assert sp["n_recorded"].tolist() == [4, 7, 0] and sp["eot"].tolist() == [11, 22, 0]
    assert sp["flags"].tolist() == [0, 0, 1 << SPILL_FLAGS.index("spill_lost")]


def test_export_without_truth_and_bad_file(tmp_path):
    rdir, _ = _run(tmp_path, truth=False)
    assert export_run(rdir, tmp_path / "a.root")["truth"] is False
    with uproot.open(tmp_path / "a.root") as f:
        # an uproot TTree iterates over its branches; .keys() gives their names
        assert not any(k.startswith("truth_") for k in f["events"].keys())  # noqa: SIM118
    spill_path(rdir, 2).write_bytes(b"garbage")
    with pytest.raises(SpillFileError, match=r"spill-000002\.h5"):
        export_run(rdir, tmp_path / "b.root")
    assert not (tmp_path / "b.root").exists()  # a failed export leaves nothing, not half a file
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert flags_bits(["retried", "bogus"]) == (1 << SPILL_FLAGS.index("retried")) | (1 << 31)


def test_na64_daq_export_command(tmp_path):
    from online.daq_cli import main

    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.root")]) == 2
    assert not (tmp_path / "x.root").exists()


def test_export_never_overwrites_a_file_it_was_not_asked_to(tmp_path):
    from online.daq_cli import main

    rdir, _ = _run(tmp_path, truth=False)
    out = tmp_path / "mine.root"
    out.write_bytes(b"someone's data")
    with pytest.raises(FileExistsError, match=r"mine\.root exists"):
        export_run(rdir, out)
    assert main(["export", str(rdir), "--out", str(out)]) == 2
    assert out.read_bytes() == b"someone's data"
    assert main(["export", str(rdir), "--out", str(out), "--force"]) == 0
    with uproot.open(out) as f:
        assert f["spills"].num_entries == len(list_spills(rdir))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
