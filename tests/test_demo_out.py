"""The demo's ``--out`` (demo/beamtime.py): never deletes a directory it did not create."""

from __future__ import annotations

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
