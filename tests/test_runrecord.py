"""The run record (detector/runrecord.py): journal + summary, the one reader, schema checks, a truncated
last line, HV only where it changed, and a constant cost per spill (online/recorder.py writing it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_recorder import entry

from detector.runrecord import (
    RUN_JOURNAL,
    RUN_RECORD,
    RunRecordError,
    read_run_record,
    write_run_record,
)
from detector.spillfile import SpillFileError, list_spills, read_spill
from online.recorder import RecorderError, RunRecorder


def _entry(spill: int, n: int = 4, **kw) -> dict:
    return entry(n, 100 + spill, spill=spill, **kw)


def _hv(unix: float, vmon: float, status: int = 1) -> dict:
    return {"unix": unix, "channel_ids": [1, 2, 3], "vset": [900.0] * 3, "vmon": [vmon] * 3, "imon": [1.5] * 3,
            "status": [status] * 3}  # fmt: skip


def test_round_trip_totals_and_damaged_files(tmp_path):
    rec = {
        "run": 3,
        "eot_extra": np.int64(5),
        "cal": np.arange(3.0),
        "spills": [_entry(2), _entry(1, flags=["retried"])],
    }
    write_run_record(tmp_path, rec)
    back = read_run_record(tmp_path)
    assert back["eot_extra"] == 5 and back["cal"] == [0.0, 1.0, 2.0] and back["schema_version"] == 2
    assert [e["spill"] for e in back["spills"]] == [1, 2] and back["in_flight"] is None
    assert back["totals"]["spills"] == 2 and back["totals"]["eot"] == 40 and back["totals"]["flagged_spills"] == 1
    assert back["journal_problems"] == []
    assert "spills" not in json.loads((tmp_path / RUN_RECORD).read_text())  # the summary holds no entries
    (tmp_path / RUN_RECORD).write_text("{broken")
    with pytest.raises(SpillFileError, match="not valid JSON"):
        read_run_record(tmp_path)
    with pytest.raises(SpillFileError, match="cannot read"):
        read_run_record(tmp_path / "nope")


@pytest.mark.parametrize(
    ("summary", "lines", "message"),
    [
        ({"run": 1}, None, r"run\.json: run record has no 'spills' list"),  # the older layout without spills
        ({"run": 1, "spills": {"1": {}}}, None, "no 'spills' list"),
        ({"spills": []}, None, "no integer 'run'"),
        ({"run": "7", "spills": []}, None, "no integer 'run'"),
        ({"run": 1, "spills": [3]}, None, r"spills\[0\]: a spill entry must be a JSON object"),
        ({"run": 1, "schema_version": 9, "spills": []}, None, "schema version 9"),
        ({"run": 1, "schema_version": 2, "sessions": {}}, [], "'sessions' must be a list"),
        ({"run": 1, "schema_version": 2}, None, "journal is missing"),
        ({"run": 1, "schema_version": 2}, [{"kind": "spill", **_entry(1, n_accepted="4")}], "line 1: 'n_accepted'"),
        ({"run": 1, "schema_version": 2}, [{"kind": "spill", **_entry(1, flags="retried")}], "'flags' must be a list"),
        ({"run": 1, "schema_version": 2}, [{"kind": "spill", **_entry(1, n_read_out=-1)}], "'n_read_out'"),
        ({"run": 1, "schema_version": 2}, [{"kind": "spill", **_entry(1, hv=[1, 2])}], "'hv' must be a JSON object"),
        ({"run": 1, "schema_version": 2}, [{"kind": "spill", "n_accepted": 3}], "line 1: 'spill' must be"),
        ({"run": 1, "schema_version": 2}, [{"kind": "begin", "spill": 1}], "line 1: a 'begin' line"),
        ({"run": 1, "schema_version": 2}, [{"spill": 1}, {"kind": "spill", **_entry(2)}], "line 1: unknown"),
    ],
)
def test_schema_errors_name_the_file_and_what_is_wrong(tmp_path, summary, lines, message):
    (tmp_path / RUN_RECORD).write_text(json.dumps(summary))
    if lines is not None:
        (tmp_path / RUN_JOURNAL).write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RunRecordError, match=message):
        read_run_record(tmp_path)


def test_a_garbled_line_before_the_last_is_an_error(tmp_path):
    write_run_record(tmp_path, {"run": 1, "spills": [_entry(1), _entry(2)]})
    j = tmp_path / RUN_JOURNAL
    lines = j.read_bytes().split(b"\n")
    j.write_bytes(lines[0][:-5] + b"\n" + lines[1] + b"\n")
    with pytest.raises(RunRecordError, match=r"spills\.jsonl line 1: not valid JSON"):
        read_run_record(tmp_path)


def test_truncated_last_line_is_reported_repaired_and_never_touches_earlier_spills(tmp_path):
    r = RunRecorder(tmp_path, 2).open()
    for s in (1, 2, 3):
        r.record_empty(s, 10 + s, [], "test")
    r.begin_spill(4, 14)
    r.close()
    j = r.rdir / RUN_JOURNAL
    whole = j.read_bytes()
    half = b'{"kind":"spill","spill":4,"crate_spill":14,"n_parti'
    j.write_bytes(whole + half)  # the writer died in the middle of spill 4's line
    rec = read_run_record(r.rdir)
    assert [e["spill"] for e in rec["spills"]] == [1, 2, 3]
    assert rec["in_flight"]["spill"] == 4
    assert len(rec["journal_problems"]) == 1 and "truncated last line" in rec["journal_problems"][0]
    assert f"{len(half)} bytes" in rec["journal_problems"][0]

    r2 = RunRecorder(tmp_path, 2).open()  # continues: cuts the half line off, then appends after it
    assert r2.interrupted["spill"] == 4 and r2.next_spill == 5
    assert r2.session["journal_problems"] == rec["journal_problems"]
    assert r2.session["journal_repaired"] == [f"{RUN_JOURNAL}: truncated last line ({len(half)} bytes) cut off"]
    assert j.read_bytes() == whole
    r2.record_empty(4, 14, ["spill_lost"], "interrupted")
    r2.record_empty(5, 15, [], "test")
    r2.close()
    rec = read_run_record(r2.rdir)
    assert [e["spill"] for e in rec["spills"]] == [1, 2, 3, 4, 5] and rec["journal_problems"] == []
    assert rec["in_flight"] is None and rec["totals"]["lost_spills"] == 1
    assert [int(p.name[6:12]) for p in list_spills(r2.rdir)] == [1, 2, 3, 4, 5]


def test_hv_is_journalled_only_where_it_changed(tmp_path):
    r = RunRecorder(tmp_path, 4).open()
    hvs = [_hv(1.0, 899.9), _hv(1.0, 899.9), _hv(2.0, 899.9), _hv(3.0, 900.1, status=9), None]
    for s, hv in enumerate(hvs, 1):
        r.record_empty(s, 10 + s, [], "test", hv=hv)
    r.close()
    lines = [json.loads(x) for x in (r.rdir / RUN_JOURNAL).read_text().splitlines()]
    hv_lines = [x for x in lines if x["kind"] == "hv"]
    assert hv_lines == [
        {"kind": "hv", **_hv(1.0, 899.9)},  # the first: every field
        {"kind": "hv", "unix": 2.0},  # a new read-back with the same values
        {"kind": "hv", "unix": 3.0, "vmon": [900.1] * 3, "status": [9] * 3},
    ]
    rec = read_run_record(r.rdir)
    assert [e["hv"] for e in rec["spills"]] == hvs
    r2 = RunRecorder(tmp_path, 4).open()  # a new writer starts from the whole read-back again
    r2.record_empty(6, 16, [], "test", hv=_hv(3.0, 900.1, status=9))
    r2.close()
    assert read_run_record(r.rdir)["spills"][-1]["hv"] == _hv(3.0, 900.1, status=9)


def test_an_older_single_file_record_is_read_and_converted(tmp_path):
    rdir = tmp_path / "run-000005"
    rdir.mkdir()
    old = {"schema_version": 1, "run": 5, "spills": [_entry(1), _entry(2, flags=["spill_lost"])], "sessions": [],
           "gaps": [], "in_flight": {"spill": 3, "crate_spill": 103, "pid": 1}}  # fmt: skip
    (rdir / RUN_RECORD).write_text(json.dumps(old))
    rec = read_run_record(rdir)
    assert [e["spill"] for e in rec["spills"]] == [1, 2] and rec["in_flight"]["spill"] == 3
    r = RunRecorder(tmp_path, 5).open()
    assert r.interrupted["spill"] == 3 and r.next_spill == 4
    r.record_empty(3, 103, ["spill_lost"], "interrupted")
    r.close()
    rec = read_run_record(rdir)
    assert rec["schema_version"] == 2 and [e["spill"] for e in rec["spills"]] == [1, 2, 3]
    assert rec["in_flight"] is None and rec["totals"]["lost_spills"] == 2


def test_a_run_record_that_fails_its_schema_is_not_continued(tmp_path):
    rdir = tmp_path / "run-000006"
    rdir.mkdir()
    (rdir / RUN_RECORD).write_text(json.dumps({"run": 6}))
    with pytest.raises(RecorderError, match="no 'spills' list"):
        RunRecorder(tmp_path, 6).open()


def test_a_non_finite_number_never_stops_the_record(tmp_path):
    """JSON has no NaN: a NaN from a bad crate reply is written as null and noted, and the run goes on."""
    r = RunRecorder(tmp_path, 9).open()
    r.record_empty(1, 11, [], "test", start_unix=float("nan"), scalers={"S1": float("inf")})
    r.record_empty(2, 12, [], "test")
    r.set("crate", {"idn": "x", "temperature": float("nan")}, save=True)
    r.close()
    rec = read_run_record(r.rdir)
    e = rec["spills"][0]
    assert e["start_unix"] is None and e["scalers"] == {"S1": None}
    assert sorted(e["nonfinite"]) == ["scalers.S1=inf", "start_unix=nan"]
    assert rec["spills"][1]["spill"] == 2 and "nonfinite" not in rec["spills"][1]
    assert rec["crate"]["temperature"] is None and rec["nonfinite"] == ["crate.temperature=nan"]
    r2 = RunRecorder(tmp_path, 9).open()  # and a restart continues the run
    assert r2.next_spill == 3
    r2.close()


def test_the_cost_per_spill_does_not_grow_with_the_run(tmp_path):
    """400 spills through the recorder: the run record's bytes per spill (begin line, entry, summary) are
    the same for the first and the last 100 spills, and the summary does not grow."""
    r = RunRecorder(tmp_path, 8, config_toml="x = 1\n" * 200).open()
    costs = []
    summary_sizes = []
    for s in range(1, 401):
        r.begin_spill(s, 1000 + s)
        r.record_empty(s, 1000 + s, [], "test", hv=_hv(float(s), 900.0 + (s % 7) / 10), start_unix=1e9 + s)
        r.note_timing(s, {"total_s": 0.01})
        costs.append(r.spills[-1]["timing"]["run_record_bytes"])
        summary_sizes.append((r.rdir / RUN_RECORD).stat().st_size)
    r.close()
    first, last = np.mean(costs[:100]), np.mean(costs[-100:])
    assert abs(last - first) <= 0.10 * first, (first, last)
    assert max(summary_sizes[-100:]) <= 1.10 * max(summary_sizes[:100])
    rec = read_run_record(r.rdir)
    assert len(rec["spills"]) == 400 and rec["spills"][-1]["timing"]["total_s"] == 0.01
    assert rec["spills"][-1]["timing"]["run_record_bytes"] == costs[-1]
    assert read_spill(list_spills(r.rdir)[-1], waveforms=False).attrs["spill"] == 400


def test_a_foreign_run_record_is_refused_and_left_as_it_was(tmp_path):
    rdir = tmp_path / "run-000005"
    write_run_record(rdir, {"run": 99, "spills": [_entry(1)]})
    before = {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file() and p.name != ".daq.lock"}
    r = RunRecorder(tmp_path, 5)
    with pytest.raises(RecorderError, match="belongs to run 99, not 5"):
        r.open()
    r.close()  # as the DAQ does on its way out: writes nothing
    assert {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file() and p.name != ".daq.lock"} == before
    with pytest.raises(RecorderError, match="belongs to run 99"):  # not "in use": the lock was released
        RunRecorder(tmp_path, 5).open()
