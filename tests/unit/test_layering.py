"""The dependency rules of ../shared/STYLE.md, enforced by walking imports."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "ktstr"

# package -> ktstr packages it may import (besides itself)
ALLOWED = {
    "spec": {"errors"},
    "protocol": set(),
    "guest": {"spec", "protocol", "errors"},  # errors.py: the one exception tree, stdlib only
    "host": {"spec", "protocol", "errors"},
    "inspect": set(),
    "evaluate": {"spec", "protocol", "errors", "inspect"},
}


def ktstr_modules(path: Path) -> set[str]:
    """Every ktstr module ``path`` imports, dotted."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ktstr."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ktstr."))
    return out


def test_evaluate_sees_only_the_plain_data_of_inspect():
    """evaluate/ never touches drgn or guest memory: of inspect/ it may use
    only the sample dataclasses."""
    for path in (SRC / "evaluate").rglob("*.py"):
        bad = {m for m in ktstr_modules(path) if m.startswith("ktstr.inspect")}
        assert bad <= {"ktstr.inspect.sample"}, f"{path.name} imports {bad}"


def test_drgn_is_imported_only_where_a_program_is_opened():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(x == "drgn" or (x or "").startswith("drgn.") for x in names), path


def ktstr_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ktstr" and len(parts) > 1:
                out.add(parts[1])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_rules(package):
    for path in (SRC / package).rglob("*.py"):
        bad = ktstr_imports(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(SRC)} imports ktstr.{bad}"


# top-level modules with rules of their own
MODULES = {
    "authoring.py": {"spec", "errors"},  # the guest imports it too
    "report.py": {"evaluate", "spec"},
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_top_level_modules_follow_the_rules(module):
    bad = ktstr_imports(SRC / module) - MODULES[module] - {"pytest_plugin"}
    assert not bad, f"{module} imports ktstr.{bad}"


def test_pure_layers_import_only_stdlib():
    import sys

    for package in ("spec", "protocol"):
        for path in (SRC / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    mod = node.names[0].name if isinstance(node, ast.Import) else node.module
                    if mod and node.col_offset >= 0 and getattr(node, "level", 0) == 0:
                        top = mod.split(".")[0]
                        assert top in sys.stdlib_module_names or top in ("ktstr", "__future__"), (
                            f"{path.name} imports {mod}"
                        )
