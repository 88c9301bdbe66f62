"""What docs/layout.md promises, read from the source (nothing imported): no import
circle inside utils/, each group importing only downwards, no file name at two places."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a group may import the groups after it in this list, never one before it
ORDER = ["utils.run", "utils.report", "utils.pruner", "utils.compaction", "utils.method", "root"]
ROOT_MODULES = {"errors", "faults", "distributed", "batches", "files", "hands_off"}


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


def source_files() -> list[Path]:
    """The checkout's Python files: tracked or new, not what .gitignore leaves out (a
    ``pip install`` of the checkout copies utils/ into build/)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] != "build"]
    return [ROOT / line for line in listed.splitlines() if (ROOT / line).is_file()]


def test_no_file_name_at_two_places():
    seen = {}
    for p in source_files():
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


def test_a_build_folder_is_not_the_source(tmp_path, monkeypatch):
    """What ``pip install .`` leaves in build/ (ignored by git) is no second copy; a new file
    not yet committed is counted."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "build" / "lib" / "fsdp_pruning").mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "utils" / "pruner.py").write_text("")
    (tmp_path / "build" / "lib" / "fsdp_pruning" / "pruner.py").write_text("")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in source_files()] == ["utils/pruner.py"]
    test_no_file_name_at_two_places()
    (tmp_path / "utils" / "more").mkdir()
    (tmp_path / "utils" / "more" / "pruner.py").write_text("")  # a real second copy
    try:
        test_no_file_name_at_two_places()
    except AssertionError:
        return
    raise AssertionError("the second pruner.py went unnoticed")


def test_code_and_docs_cite_docs_pages_never_the_specification():
    """The method's specification is not part of the repository: a reader who follows a
    citation must find it here (docs/ pages), so no code, doc or README names it."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py", "*.md"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cited = [line for line in listed.splitlines() if not line.startswith("tests/")
             and re.search(r"\bSPEC\b", (ROOT / line).read_text(encoding="utf-8"))]
    assert cited == []
