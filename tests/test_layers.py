"""The package arrows of docs/architecture.md, checked on the source: no package imports one it may not."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {
    "detector": set(),
    "sim_frontend": {"detector"},
    "trigger": {"detector"},
    "hv_control": {"detector"},
    "online": {"detector", "trigger", "hv_control"},
    "offline": {"detector", "trigger", "sim_frontend"},
}


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def violations(root: pathlib.Path) -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in imports_of(path) & set(ALLOWED):
                if name != package and name not in allowed:
                    bad.append(f"{path.relative_to(root)}: {package} imports {name}")
    return bad


def test_no_package_breaks_the_arrows():
    assert violations(ROOT) == []


def test_the_check_catches_a_forbidden_import(tmp_path):
    (tmp_path / "detector").mkdir()
    (tmp_path / "detector" / "x.py").write_text("import online.daq\nfrom trigger import kernels\n")
    for p in ALLOWED:
        (tmp_path / p).mkdir(exist_ok=True)
    assert len(violations(tmp_path)) == 2


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_package_exists(package):
    assert (ROOT / package / "__init__.py").exists()
