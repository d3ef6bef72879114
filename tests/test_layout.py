"""The package's layout: modules import only their own layer or the layers below, never another's private names."""

import ast
from pathlib import Path

import pytest

import astrosr

PACKAGE = Path(astrosr.__file__).resolve().parent

#: the data flow, lowest layer first; a module may import its own layer and those above it in this list
LAYERS = [
    ["errors", "config", "files", "provenance", "progress"],
    ["fits_io", "fits_out", "psf", "stars", "degrade", "tiling", "simulate", "manifest"],
    ["pairs", "prepare", "dataset", "psf_measure", "psf_matching"],
    ["operators", "models", "models.layers", "models.vae", "models.resvae", "checkpoint"],
    ["metrics", "baselines", "restore", "uncertainty", "catalog", "losses", "train_log", "train_runtime", "validation", "train_config", "train"],
    ["scoring", "evaluate_report", "evaluate", "deblur", "batch"],
    ["pipeline_config", "pipeline"],
    ["cli_options", "cli_display", "cli"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name, path):
    """``(imported module, [names])`` for every astrosr import in the module, lazy ones included."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("astrosr"):
                target = node.module.removeprefix("astrosr").lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            if not node.module and node.level:  # from . import baselines, metrics
                found += [(".".join(base + [n]), []) for n in names]
            else:
                found.append((target, names))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("astrosr").lstrip("."), []) for a in node.names if a.name.startswith("astrosr.")]
    return [(t, n) for t, n in found if t]


MODULES = _modules()
GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if name}


def test_every_module_has_a_layer():
    missing = sorted(set(GRAPH) - set(LAYER))
    assert not missing, f"place these modules in LAYERS: {missing}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_upward_import_and_no_private_name(name):
    for target, names in GRAPH[name]:
        if target not in LAYER:  # e.g. 'models' seen as 'models.__init__' is 'models'
            continue
        assert LAYER[target] <= LAYER[name], f"{name} (layer {LAYER[name]}) imports {target} (layer {LAYER[target]})"
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name} imports private names {private} of {target}"


def test_no_import_circle():
    edges = {name: {t for t, _ in GRAPH[name] if t in GRAPH and t != name} for name in GRAPH}
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_long_modules_say_why():
    """A module over ~350 lines states at its top why it is one module."""
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > 380:
            head = "\n".join(lines[:40]).lower()
            assert "one module" in head or "kept together" in head, f"{name}: {len(lines)} lines, no reason stated"


def test_docstrings_point_inside_the_repository():
    """Users have the README and benchmarks/, not the development notes the package was built from."""
    for name, path in MODULES.items():
        text = path.read_text()
        for word in ("CONTRACTS.md", "BENCHMARK.md", "FINDINGS.md", "COMMON.md", "../shared"):
            assert word not in text, f"{name} cites {word}"
