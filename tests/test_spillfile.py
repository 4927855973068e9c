"""The spill-file layout: atomic writes, readable after a kill, clear errors on damaged files."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from detector import spillfile as sf
from detector.records import TRUTH_DTYPE


def content(spill, n=4, truth=True):
    wf = np.random.default_rng(spill).integers(100, 200, (n, 121, 32)).astype(np.int16)
    t = np.zeros(n, TRUTH_DTYPE) if truth else None
    return sf.SpillContent(
        run=3,
        spill=spill,
        event_id=np.arange(n, dtype=np.uint32) * 7,
        trigger_mask=np.ones(n, np.uint8),
        time_ns=np.linspace(0, 1e9, n),
        waveforms=wf,
        truth=t,
        attrs={"flags": ["retried"], "scalers": {"S1": 10}, "n_accepted": n},
    )


def test_write_read_round_trip(tmp_path):
    rdir = sf.run_dir(tmp_path, 3)
    p = sf.write_spill(rdir, content(1))
    assert p.name == "spill-000001.h5" and rdir.name == "run-000003"
    d = sf.read_spill(p)
    assert d.n_events == 4 and d.flags == ["retried"] and d.attrs["scalers"] == {"S1": 10}
    np.testing.assert_array_equal(d.waveforms, content(1).waveforms)
    assert list(d.event_id) == [0, 7, 14, 21] and d.truth.dtype == TRUTH_DTYPE
    assert not [x for x in rdir.iterdir() if ".tmp" in x.name]


def test_a_finished_spill_is_never_overwritten(tmp_path):
    rdir = sf.run_dir(tmp_path, 3)
    sf.write_spill(rdir, content(1))
    with pytest.raises(FileExistsError):
        sf.write_spill(rdir, content(1, n=2))
    assert sf.read_spill(sf.spill_path(rdir, 1)).n_events == 4


def test_a_stream_written_from_its_thread_block_by_block_equals_the_whole_write(tmp_path):
    """The DAQ streams the events into the spill file while it reads them out: the file equals one written
    at once from the same content, every dataset and attribute but the write time."""
    c = content(1, n=700)
    stream = sf.SpillFileStream(sf.run_dir(tmp_path, 3), 1, 700, threaded=True)
    for first in range(0, 700, 256):
        stream.put(first, c.waveforms[first : first + 256])
    assert stream.rows_written == 700 and stream.bytes_put == c.waveforms.nbytes
    streamed = sf.read_spill(stream.finish(c))
    whole = sf.read_spill(sf.write_spill(tmp_path / "whole", c))
    for name in ("event_id", "trigger_mask", "time_ns", "waveforms", "truth"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name))
    assert {k: v for k, v in streamed.attrs.items() if k != "written_unix"} == {
        k: v for k, v in whole.attrs.items() if k != "written_unix"
    }
    assert sorted(p.name for p in sf.run_dir(tmp_path, 3).iterdir()) == ["spill-000001.h5"]


def test_a_stream_keeps_exactly_the_events_recorded(tmp_path):
    """A readout that stopped early records fewer events than the stream was opened for; a block that is
    not the recorded content's own memory is written again from the content."""
    rdir = sf.run_dir(tmp_path, 3)
    c = content(2, n=5)
    stream = sf.SpillFileStream(rdir, 2, 10, threaded=True)
    other = np.full((6, 121, 32), 7, np.int16)  # e.g. a buffer the readout dropped and replaced
    stream.put(0, other)
    d = sf.read_spill(stream.finish(c))
    assert d.n_events == 5
    np.testing.assert_array_equal(d.waveforms, c.waveforms)
    stream.abort()  # after finish: nothing happens to the finished file
    assert sf.read_spill(sf.spill_path(rdir, 2)).n_events == 5

    more = content(3, n=4)
    stream = sf.SpillFileStream(rdir, 3, 4)
    stream.put(0, more.waveforms[:2])  # the rest comes with the content
    np.testing.assert_array_equal(sf.read_spill(stream.finish(more)).waveforms, more.waveforms)


def test_a_stream_refuses_blocks_out_of_order_and_an_aborted_one_leaves_nothing(tmp_path):
    rdir = sf.run_dir(tmp_path, 3)
    c = content(4, n=8)
    stream = sf.SpillFileStream(rdir, 4, 8, threaded=True)
    stream.put(0, c.waveforms[:3])
    with pytest.raises(ValueError, match=r"at event 5; expected int16 .* at event 3"):
        stream.put(5, c.waveforms[5:])
    with pytest.raises(ValueError, match="up to 11 put, 8 opened"):
        stream.put(3, np.zeros((8, 121, 32), np.int16))
    with pytest.raises(ValueError, match="expected int16"):
        stream.put(3, c.waveforms[3:].astype(np.int32))
    stream.abort()
    stream.abort()
    assert list(rdir.iterdir()) == []
    with pytest.raises(ValueError, match="10 events to record, the file was opened for 8"):
        sf.SpillFileStream(rdir, 4, 8).finish(content(4, n=10))
    assert list(rdir.iterdir()) == []
    sf.write_spill(rdir, c)
    with pytest.raises(FileExistsError):
        sf.SpillFileStream(rdir, 4, 8, threaded=True)
    assert sorted(p.name for p in rdir.iterdir()) == ["spill-000004.h5"]


def test_list_ignores_temporaries_and_sorts(tmp_path):
    rdir = sf.run_dir(tmp_path, 3)
    for s in (10, 2, 1):
        sf.write_spill(rdir, content(s, truth=False))
    (rdir / ".spill-000011.h5.tmp-123").write_bytes(b"partial")
    assert [p.name for p in sf.list_spills(rdir)] == ["spill-000001.h5", "spill-000002.h5", "spill-000010.h5"]


def test_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    rdir = sf.run_dir(tmp_path, 3)
    p = sf.write_spill(rdir, content(1))
    raw = p.read_bytes()
    bad = rdir / "spill-000002.h5"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(sf.SpillFileError, match=r"spill-000002\.h5"):
        sf.read_spill(bad)
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(sf.SpillFileError, match="unreadable"):
        sf.read_spill(bad)
    assert sf.read_spill(p).n_events == 4


def test_bad_content_is_refused(tmp_path):
    c = content(1)
    c.waveforms = c.waveforms[:, :100]
    with pytest.raises(ValueError, match="waveforms"):
        sf.write_spill(tmp_path, c)


WRITER = r"""
import sys, numpy as np
from detector import spillfile as sf
rdir = sys.argv[1]
for s in range(1, 10000):
    n = 2000
    sf.write_spill(rdir, sf.SpillContent(1, s, np.arange(n, dtype=np.uint32), np.ones(n, np.uint8), np.zeros(n),
                   np.full((n, 121, 32), s % 1000, np.int16)))
    print(s, flush=True)
"""


def test_kill_minus_9_leaves_every_finished_spill_readable(tmp_path):
    rdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(rdir)], stdout=subprocess.PIPE, text=True)
    done = 0
    while done < 4:
        done = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = sf.list_spills(rdir)
    assert len(files) >= 4
    for p in files:
        d = sf.read_spill(p)
        assert d.n_events == 2000 and d.waveforms[0, 0, 0] == d.attrs["spill"] % 1000


def _strips(n: int):
    from detector.tracking import StripData

    counts = np.arange(n) % 3 + 1
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(ptr[-1])
    return StripData(
        ptr,
        (np.arange(m) % 8).astype(np.uint8),
        (np.arange(m) * 5).astype(np.uint16),
        np.linspace(20, 400, m).astype(np.float32),
        np.linspace(-90, 90, m).astype(np.float32),
    )


def test_micromegas_strips_round_trip_and_old_files_stay_readable(tmp_path):
    import h5py

    rdir = sf.run_dir(tmp_path, 3)
    c = content(1)
    c.mm = _strips(4)
    d = sf.read_spill(sf.write_spill(rdir, c))
    for name in ("event_ptr", "plane", "strip", "charge", "time_ns"):
        np.testing.assert_array_equal(getattr(d.mm, name), getattr(c.mm, name))
    assert d.mm.charge.dtype == np.float32 and d.mm.time_ns.dtype == np.float32 and d.mm.n_events == 4
    assert np.ptp(d.mm.time_ns) > 100.0  # the times as written, not zeros
    # a file written before the strip times (no /mm/time_ns): every strip in time (0), the rest as written
    p_old = sf.write_spill(rdir, c.__class__(**{**c.__dict__, "spill": 5}))
    with h5py.File(p_old, "r+") as f:
        del f["mm/time_ns"]
    old = sf.read_spill(p_old).mm
    assert old is not None and old.time_ns.dtype == np.float32
    np.testing.assert_array_equal(old.time_ns, np.zeros(old.charge.shape, np.float32))
    for name in ("event_ptr", "plane", "strip", "charge"):
        np.testing.assert_array_equal(getattr(old, name), getattr(c.mm, name))
    # a time array of another length: a clear error
    p_bad = sf.write_spill(rdir, c.__class__(**{**c.__dict__, "spill": 6}))
    with h5py.File(p_bad, "r+") as f:
        del f["mm/time_ns"]
        f["mm/time_ns"] = np.zeros(2, np.float32)
    with pytest.raises(sf.SpillFileError, match=r"spill-000006\.h5"):
        sf.read_spill(p_bad)
    # a file without the /mm group (recorded before the Micromegas readout existed) reads with mm None
    assert sf.read_spill(sf.write_spill(rdir, content(2))).mm is None
    # offsets that do not delimit the strips: a clear error naming the file
    p = sf.write_spill(rdir, c.__class__(**{**c.__dict__, "spill": 3}))
    with h5py.File(p, "r+") as f:
        f["mm/event_ptr"][-1] = 99
    with pytest.raises(sf.SpillFileError, match=r"spill-000003\.h5"):
        sf.read_spill(p)
    # content whose strips are of another number of events is refused before anything is written
    bad = content(4)
    bad.mm = _strips(3)
    with pytest.raises(ValueError, match="mm must hold"):
        sf.write_spill(rdir, bad)
    assert not sf.spill_path(rdir, 4).exists()
