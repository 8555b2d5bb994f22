"""The package's floors hold: every import points down, no import cycles, Hydra only in cli/, Lightning
never in core/ or nn/. Static (the modules' own import statements; nothing is imported). The rule is the
one of ``../shared/tools/check_layers.py``, kept here so that CI does not depend on that folder; the floors
are drawn in docs/architecture.md."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "textdiff"
FLOORS = ["core", "nn", "data", "metrics", "families", "run", "cli"]  # lowest first
SIDE = {"analysis": set(FLOORS) - {"cli"}}  # read-only studies: anything but cli
NO_LIGHTNING, HYDRA_ONLY = {"core", "nn"}, {"cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _floor(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) == 1:
        return "cli"  # textdiff/__init__.py: the lazy public names, may point anywhere
    return parts[1] if parts[1] in FLOORS or parts[1] in SIDE else None


def _imports(mod: str, path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                name = ".".join(base[: len(base) - node.level + 1] + ([name] if name else []))
            out.append((name, node.lineno))
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names if name.startswith("textdiff")]
    return out


def _allowed(src: str, dst: str) -> bool:
    if src in SIDE:
        return dst == src or dst in SIDE[src]
    return dst not in SIDE and FLOORS.index(dst) <= FLOORS.index(src)


def layer_findings() -> list[str]:
    """One line per broken rule (empty when the floors hold)."""
    mods = _modules()
    findings, graph = [], {m: set() for m in mods}
    for mod, path in mods.items():
        src, rel = _floor(mod), path.relative_to(PKG.parent)
        if src is None:
            findings.append(f"{rel}: a module on no floor (move it into one of {FLOORS})")
        for name, line in _imports(mod, path):
            top = name.split(".")[0]
            if top in ("hydra", "omegaconf") and src not in HYDRA_ONLY:
                findings.append(f"{rel}:{line}: imports {top} outside cli/")
            if top in ("pytorch_lightning", "lightning") and src in NO_LIGHTNING:
                findings.append(f"{rel}:{line}: {src}/ imports {top}")
            hits = [m for m in mods if name == m or name.startswith(m + ".")] if top == "textdiff" else []
            target = max(hits, key=len) if hits else None
            if target is None or target == mod:
                continue
            graph[mod].add(target)
            dst = _floor(target)
            if src and dst and src != dst and not _allowed(src, dst):
                findings.append(f"{rel}:{line}: {src}/ imports {target} ({dst}/ is above it)")
    # cycles between plain modules (a package's __init__ only re-exports)
    edges = {m: {t for t in ts if mods[t].name != "__init__.py"} for m, ts in graph.items()
             if mods[m].name != "__init__.py"}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                findings.append("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    return findings


def test_every_import_points_down_and_there_are_no_cycles():
    assert layer_findings() == []


@pytest.mark.parametrize("source, expected", [
    ("from textdiff.cli.common import build\n", "families/ imports textdiff.cli.common"),
    ("import hydra\n", "imports hydra outside cli/"),
])
def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch, source, expected):
    """The check itself can fail: a family importing the CLI, or Hydra outside cli/, is reported."""
    import shutil

    copy = tmp_path / "textdiff"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "families" / "bad.py").write_text(source)
    monkeypatch.setitem(globals(), "PKG", copy)
    assert any(expected in f for f in layer_findings())


def test_the_rule_catches_a_cycle(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "textdiff"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "metrics" / "a.py").write_text("from textdiff.metrics import b\n")
    (copy / "metrics" / "b.py").write_text("from textdiff.metrics.a import x\n")
    monkeypatch.setitem(globals(), "PKG", copy)
    assert any(f.startswith("import cycle: textdiff.metrics.a -> textdiff.metrics.b") for f in layer_findings())
