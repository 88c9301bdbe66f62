"""What docs/layout.md promises, read from the source (nothing imported): no import
circle inside utils/, each group importing only downwards, no file name at two places."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a group may import the groups after it in this list, never one before it
ORDER = ["utils.run", "utils.report", "utils.pruner", "utils.compaction", "utils.method", "root"]
ROOT_MODULES = {"errors", "faults", "distributed", "batches", "files"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The utils modules ``path`` imports (relative ones resolved)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names]
            found |= {n for n in names if (ROOT / (n.replace(".", "/") + ".py")).exists()
                      or (ROOT / n.replace(".", "/")).is_dir()} or {base}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "utils" or m.startswith("utils.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in (ROOT / "utils").rglob("*.py")}


def group(mod: str) -> str:
    for g in ORDER[:-1]:
        if mod == g or mod.startswith(g + "."):
            return g
    return "root"


def test_no_import_circle_in_utils():
    g = graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in g.get(m, ()):
            assert state.get(n) != "open", "import circle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = "done"

    for m in g:
        if m not in state:
            visit(m, [])


def test_groups_import_only_downwards():
    wrong = [(m, n) for m, targets in graph().items() for n in targets
             if ORDER.index(group(n)) < ORDER.index(group(m))]
    assert not wrong, f"upward imports: {wrong}"
    for m, targets in graph().items():  # the shared primitives use nothing but each other
        if group(m) == "root" and m != "utils":
            assert all(n.rpartition(".")[2] in ROOT_MODULES for n in targets), (m, targets)


def test_no_file_name_at_two_places():
    seen = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in ("tests", "snapshots") or rel.parts[0].startswith(".") \
                or p.name == "__init__.py":
            continue
        seen.setdefault(p.stem, []).append(str(rel))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The circle check can fail: two modules that import each other are reported."""
    pkg = tmp_path / "utils"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from .a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    try:
        test_no_import_circle_in_utils()
    except AssertionError as e:
        assert any(loop in str(e) for loop in ("utils.a -> utils.b -> utils.a",
                                               "utils.b -> utils.a -> utils.b"))
    else:
        raise AssertionError("the circle went unnoticed")
