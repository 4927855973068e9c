"""The demo's ``--out`` (demo/beamtime.py): never deletes a directory it did not create; its summary's
background table (run 2's box opened beside the expectation per source)."""

from __future__ import annotations

import pytest

from demo.beamtime import MARKER, main, prepare_out


def test_a_foreign_non_empty_out_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    (out / "figures").mkdir()
    (out / "figures" / "f.png").write_bytes(b"png")
    assert main(["--out", str(out)]) == 2
    assert "not created by the demo" in capsys.readouterr().out
    assert (out / "chapter1.tex").read_text() == "precious" and (out / "figures" / "f.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex", "figures"]  # no marker, nothing added
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert prepare_out(a_file) is not None and a_file.read_text() == "x"


def test_new_empty_and_own_directories_are_used(tmp_path):
    new = tmp_path / "a" / "b"
    assert prepare_out(new) is None and (new / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_out(empty) is None and sorted(p.name for p in empty.iterdir()) == [MARKER]
    (new / "logs").mkdir()
    (new / "logs" / "daq.log").write_text("old run")
    (new / "beamtime.toml").write_text("old")
    assert prepare_out(new) is None  # the demo's own earlier output: emptied and reused
    assert sorted(p.name for p in new.iterdir()) == [MARKER]


def test_run2_box_is_opened_beside_the_expectation_of_every_source(tmp_path):
    """The summary's background table (demo/beamtime.py) from the JSON of the real ``background --sources``
    with tiny MC statistics: a row per registered source (n +/- err, or the 90% CL bound of an empty MC box),
    the total and the observed count."""
    import json
    import math
    import re

    from rich.console import Console

    from demo.beamtime import ROOT, background_rows, background_table
    from offline import background_sources as bs
    from offline.cli import main as offline

    out = tmp_path / "background-run2.json"
    eot, events = 1.6e6, 200
    argv = ["background", "--sources", "--eot", str(eot), "--intensity", "3e5", "--events", str(events), "--serial"]
    assert offline([*argv, "--config", str(ROOT / "config" / "demo.toml"), "--json", str(out)]) == 0
    bkg = json.loads(out.read_text())
    rows = background_rows(bkg, 3)
    assert [r[0] for r in rows] == [*bs.SOURCES, "total", "observed in the box"]
    kinds = set()
    for (name, expected, used), r in zip(rows, bkg["sources"].values()):
        mc = r["mc"]
        assert r["seconds"] > 0 and used == f"{mc['events']} ({mc['box_events']} in the box)"
        if mc["box_events"] == 0:  # an empty MC box: its bound, never a bare zero
            assert r["n"] == 0 and mc["n_upper_90"] > 0, name
            assert expected == f"< {mc['n_upper_90']:.2g} (90% CL)"
            kinds.add("bound")
        else:
            assert r["n"] > 0 and mc["n_upper_90"] is None, name
            assert expected == f"{r['n']:.2g} ± {r['err']:.2g}"
            kinds.add("estimate")
    assert kinds == {"bound", "estimate"}  # this seed exercises both (hadron electroproduction fills its box)
    # the upstream bound: 2.303 events scaled from the MC electrons, at the mean weight of one split event;
    # the split set (~4e-4 of the forced electrons) is empty among 200, so at that of a beam-line electron
    up = bkg["sources"]["upstream"]["mc"]
    assert up["split_events"] == 0 and up["beamline_events"] > 0
    assert up["n_upper_90"] == pytest.approx(2.303 * eot / events * up["beamline_weight"] / up["beamline_events"])
    bounds = sum(r["mc"]["n_upper_90"] or 0.0 for r in bkg["sources"].values())
    # the total of the sources with MC events in their box (the empty ones are the bounds beside it)
    filled = [r for r in bkg["sources"].values() if r["mc"]["n_upper_90"] is None]
    n_tot, err_tot = sum(r["n"] for r in filled), math.sqrt(sum(r["err"] ** 2 for r in filled))
    assert n_tot == pytest.approx(bkg["total"]["n"])  # an empty box adds nothing to n
    assert rows[-2] == (
        "total",
        f"{n_tot:.2g} ± {err_tot:.2g} (+ < {bounds:.2g} from the empty boxes)",
        str(sum(r["mc"]["events"] for r in bkg["sources"].values())),
    )
    assert rows[-1] == ("observed in the box", "3", "")
    con = Console(record=True, width=200)
    con.print(background_table(bkg, 3))
    text = con.export_text()
    assert "1.6e+06 EOT" in text and all(re.search(rf"\b{n}\b", text) for n in bs.SOURCES)
    # what the upstream source leaves out is said under the table, with where it is worked out
    assert up["not_simulated"] == bs.UPSTREAM_NOT_SIMULATED and "docs/physics.md 1.10" in up["not_simulated"]
    assert "not simulated in upstream: hadron photo- and electroproduction" in " ".join(text.split())
