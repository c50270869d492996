"""The loss package's imports run one way: base and the Monte Carlo series <- specs <- registry,
torch_impl at the bottom.

Read from the source with ``ast`` (every import, at the top or inside a function), so that a
lazy import that closes a circle is caught too.
"""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "calibrate_cli", "losses")

# what each module may import from the package (its own level and below)
ALLOWED = {
    "torch_impl": set(),
    "base": {"torch_impl"},
    "nfl_series": {"base"},
    "bitemp_series": {"base"},
    "rce_series": {"base"},
    "specs": {"base", "nfl_series", "bitemp_series", "rce_series"},
    "user": {"base"},
    "registry": {"base", "specs", "user"},
}


def _package_imports(name: str) -> set[str]:
    with open(os.path.join(PACKAGE, f"{name}.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("calibrate_cli.losses."):
            out.add(node.module.split(".")[2])
    return out


def test_every_module_of_the_package_is_placed():
    modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"}
    assert modules == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_a_module_imports_only_from_below_it(name):
    assert _package_imports(name) <= ALLOWED[name]


def test_the_allowed_imports_have_no_circle():
    def visit(n: str, path: tuple[str, ...]) -> None:
        assert n not in path, f"import circle: {' -> '.join(path + (n,))}"
        for m in ALLOWED[n]:
            visit(m, path + (n,))

    for n in ALLOWED:
        visit(n, ())
