"""The documentation cannot rot: README.md and docs/**/*.md are checked as a reader uses them.

(a) Every relative link resolves: the file or folder exists, and a ``#anchor`` is a heading
    (GitHub's slug) or an ``<a name=…>`` of the page it points into.
(b) Every command in a fenced shell block (``bash``, ``sh``, ``console`` or untagged) that runs
    one of our programs — ``python notebook_cifar.py …``, ``torchrun … notebook_imagenet.py
    …``, ``python -m bench.compact_latency …``, continued with backslashes, with ``$VAR`` set
    earlier in the block — is parsed by that program's own ``parser()``: a renamed or removed
    flag fails here. The dataset scripts' commands also pass the scripts' checks of the flags
    (what they refuse before any work), and reproduce.py's its whole pre-flight (every job's
    command line). Other programs (pip, make, sbatch) are not ours to check.
(c) Every Python block marked runnable — the info string ```` ```python runnable ```` or
    ```` ```python runnable setup=NAME ```` — runs, one after another, in a fresh interpreter
    with the installed package and nothing of the checkout, each in an empty folder after the
    setup ``NAME`` of ``SETUPS`` below (tiny data and models standing in for the reader's).
    A Python block's info string holds nothing else, so a misspelt marker fails too.
(d) Every pointer of the code into the docs — ``docs/compaction.md, 'Your own architecture'``
    in an error message, ``docs/runs.md#flags`` in a docstring — names a page that exists, and
    the heading or anchor it quotes is one of that page's.
"""
import contextlib
import importlib
import io
import json
import re
from pathlib import Path

import pytest

import reproduce
from tests.docs_reader import (Block, anchors, commands, links, plain_text, read, script_of,
                                slug)
from tests.user_code import CNN, run_user_code
from utils.errors import UserError
from utils.run.grid import GRIDS

ROOT = Path(__file__).resolve().parent.parent


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# --- (a) links --------------------------------------------------------------------------------

def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for line, target in links(page):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        where = f"{page.relative_to(root)}:{line}: {target}"
        into = (page.parent / path).resolve() if path else page
        if not into.exists():
            broken.append(f"{where}: {path} does not exist")
        elif anchor and into.suffix == ".md" and anchor not in anchors(into):
            broken.append(f"{where}: no heading #{anchor} in {into.name}")
    return broken


def test_every_relative_link_and_anchor_resolves():
    broken = [b for page in pages() for b in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_slugs_are_githubs():
    assert slug("FSDP — Fractional Step Discriminant Pruning in PyTorch") == \
        "fsdp--fractional-step-discriminant-pruning-in-pytorch"
    assert slug("What a run leaves in `--save_path`") == "what-a-run-leaves-in---save_path"
    assert slug("Is it faster? `python -m bench.compact_latency`") == \
        "is-it-faster-python--m-benchcompact_latency"
    assert slug("The paper's experiments") == "the-papers-experiments"
    assert slug("Soft pruning and **BatchNorm** ([study](x.md))") == \
        "soft-pruning-and-batchnorm-study"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "README.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# The API\n\n## Pruner\n\n## Pruner\n")
    page.write_text("# Top\n\n```\n# not a heading\n```\n[a](docs/api.md#pruner-1) "
                    "[b](docs/api.md#pruner-2) [c](#top) [d](#not-a-heading) "
                    "[e](docs/gone.md) `[f](docs/gone.md)` [g](https://example.org/x#y)\n")
    assert [f.split(": ", 1)[1] for f in broken_links(page, tmp_path)] == [
        "docs/api.md#pruner-2: no heading #pruner-2 in api.md",
        "#not-a-heading: no heading #not-a-heading in README.md",
        "docs/gone.md: docs/gone.md does not exist"]


# --- (b) commands -----------------------------------------------------------------------------

def program(script: str):
    """The module of a documented program: "compact.py" → compact, "bench.cs_pass" itself."""
    name = script.removesuffix(".py").replace("/", ".") if script.endswith(".py") else script
    file = ROOT / (name.replace(".", "/") + ".py")
    return name, file


def refusal(command) -> str | None:
    """Why the program would refuse ``command``'s arguments (its parser's or its checks' one
    line), or None when it accepts them, every flag spelled out."""
    name, file = program(command.script)
    if not file.is_file():
        return f"{command.script} is not a program of this repository"
    module = importlib.import_module(name)
    if not callable(getattr(module, "parser", None)):
        return f"{command.script} has no parser() to check its flags with"
    argv, short_in_jobs = list(command.argv), []
    try:
        if name.startswith("notebook_"):
            reproduce.resolved_args(file.name, argv)  # parser + the checks of the flags
        elif name == "reproduce":
            extra = []  # the flags after "--" go to every job of the grid
            if "--" in argv:
                argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
            args = parsed(module.parser(), argv)
            reproduce.checked_plan(reproduce.ask_from(args, extra))
            job = importlib.import_module(GRIDS[args.grid].script.removesuffix(".py"))
            short_in_jobs = abbreviated(job.parser(), extra)
        else:
            parsed(module.parser(), argv)
    except UserError as e:
        return str(e)
    short = abbreviated(module.parser(), argv) + short_in_jobs
    return (f"{short[0]} is short for a longer flag (argparse takes a prefix): spell it out"
            if short else None)


def abbreviated(parser, argv: list[str]) -> list[str]:
    """The ``--flags`` of ``argv`` that are not the parser's own spelling: prefixes, which
    argparse accepts (until another flag shares the prefix)."""
    spelled = {s for action in parser._actions for s in action.option_strings}
    return [a.split("=")[0] for a in argv if a.startswith("--") and a != "--"
            and a.split("=")[0] not in spelled]


def parsed(parser, argv):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as e:
        if not e.code:  # --help
            return None
        raise UserError(err.getvalue().strip().splitlines()[-1]) from None


def documented_commands():
    return [c for page in pages() for block in read(page)[0] for c in commands(block)]


def test_every_documented_command_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # reproduce.py's pre-flight reads its grid's folder, if any
    found = documented_commands()
    assert found, "no command of ours in the documentation: is the reader broken?"
    refused = [f"{c.where}: {c.script}: {why}" for c in found if (why := refusal(c))]
    assert not refused, "\n".join(refused)


def test_the_command_check_sees_a_stale_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "README.md"
    page.write_text('```bash\nS="--arch resnet20 --dataset cifar10"\n'
                    "python notebook_cifar.py $S --prune_rate_cs 0.1 \\\n    --prune-rate-gm 0.4\n"
                    "torchrun --nproc_per_node=2 notebook_cifar.py $S --method fpgm --tau 5\n"
                    "python compact.py run --pt2 m.pt2 && python -m bench.cs_pass --batches 2\n"
                    "python compact.py run --torchscrip m.pt  # a comment\n"
                    "python reproduce.py cifar10 --archs resnet21\n"
                    "python -m bench.no_such_bench\n"
                    "python reproduce.py cifar10 --seeds 1 -- --worker 8\n"
                    "pip install . && make test\n```\n")
    found = [c for block in read(page)[0] for c in commands(block)]
    assert [(c.where, c.script) for c in found] == [
        ("README.md:3", "notebook_cifar.py"), ("README.md:5", "notebook_cifar.py"),
        ("README.md:6", "compact.py"), ("README.md:6", "bench.cs_pass"),
        ("README.md:7", "compact.py"), ("README.md:8", "reproduce.py"),
        ("README.md:9", "bench.no_such_bench"), ("README.md:10", "reproduce.py")]
    assert found[0].argv == ("--arch", "resnet20", "--dataset", "cifar10", "--prune_rate_cs",
                             "0.1", "--prune-rate-gm", "0.4")
    why = [refusal(c) for c in found]
    assert "unrecognized arguments: --prune-rate-gm 0.4" in why[0]
    assert "--tau has no effect" in why[1]
    assert why[2] is None and why[3] is None
    assert why[4].startswith("--torchscrip is short for a longer flag")
    assert "unknown --arch 'resnet21'" in why[5]
    assert why[6] == "bench.no_such_bench is not a program of this repository"
    assert why[7].startswith("--worker is short for a longer flag")  # a flag for every job


def test_an_unset_variable_is_an_error(tmp_path):
    (tmp_path / "x.md").write_text("```bash\npython compact.py $RUN\n```\n")
    with pytest.raises(ValueError, match=r"x.md:2: \$RUN is not set in this code block"):
        commands(read(tmp_path / "x.md")[0][0])


def test_every_program_exposes_its_parser():
    """What a command in the docs may run: the scripts, the benches and the examples."""
    programs = [*ROOT.glob("*.py"), *(ROOT / "bench").glob("*.py"),
                *(ROOT / "examples").glob("*.py")]
    missing = []
    for file in programs:
        if "__main__" not in file.read_text():
            continue  # a module of helpers
        module = importlib.import_module(".".join(file.relative_to(ROOT).with_suffix("").parts))
        if not callable(getattr(module, "parser", None)):
            missing.append(str(file.relative_to(ROOT)))
    assert not missing


def test_python_and_torchrun_are_told_apart():
    assert script_of(["python", "-u", "-X", "importtime", "compact.py", "run"]) == \
        ("compact.py", ["run"])
    assert script_of(["CUDA_VISIBLE_DEVICES=0", ".venv/bin/python", "-m", "examples.own_loop"]) \
        == ("examples.own_loop", [])
    assert script_of(["python", "-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "notebook_gsc.py", "--epochs", "1"]) == ("notebook_gsc.py", ["--epochs", "1"])
    assert script_of(["python", "-c", "print(1)"]) is None
    assert script_of(["sbatch", "cifar10.sbatch"]) is None


# --- (c) runnable Python blocks ---------------------------------------------------------------

_COMPACT = CNN + """
import os
from fsdp_pruning import compact_model
model = small_cnn().eval()
with torch.no_grad():  # filter 0 of the first conv selected: zero, as training leaves it
    model[0].weight[0] = 0
    model[0].bias[0] = 0
compact = compact_model(model, {"0": [0]}, input_shape=(3, 8, 8))
"""

SETUPS = {  # name -> code run before a block: the reader's objects, tiny
    "loop": CNN + """
model = small_cnn()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
epochs = 3
train_loader = cs_loader = batches()

def train_one_epoch(model, opt, loader):
    model.train()
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
""",
    "compact_file": _COMPACT + """
from fsdp_pruning import save_compact
os.makedirs("snapshots/run")
save_compact(compact, "snapshots/run/model_compact.pt")
images = torch.randn(2, 3, 8, 8)
""",
    "onnx_file": _COMPACT + """
from fsdp_pruning import export_onnx
export_onnx(compact, "model.onnx", (1, 3, 8, 8))
images = torch.randn(2, 3, 8, 8).numpy()
""",
    "pt2_file": _COMPACT + """
from fsdp_pruning import export_pt2
export_pt2(compact, "model.pt2", (1, 3, 8, 8))
images = torch.randn(2, 3, 8, 8)
""",
}

# runs each block in its own folder after its setup, its lines numbered as in its page;
# prints one result per block: None, or the error and the page's line it came from
RUNNER = """
import importlib.util, json, os, sys, traceback
for name in ("utils", "models", "datasets"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
results = []
for i, block in enumerate(json.load(open(sys.argv[1]))):
    os.makedirs(f"block{i}")
    os.chdir(f"block{i}")
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(block["setup"], "<setup " + block["setup_name"] + ">", "exec"), namespace)
        exec(compile("\\n" * block["line"] + block["code"], block["file"], "exec"), namespace)
        results.append(None)
    except Exception as e:
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                 if f.filename == block["file"]]
        where = f"line {lines[-1]}" if lines else "in setup " + block["setup_name"]
        results.append(f"{type(e).__name__}: {e} ({where})")
    os.chdir("..")
print(json.dumps(results))
"""


def runnable(block: Block):
    """(the block's setup name) when it is marked runnable, else None; a Python block's info
    string holds "python", "runnable" and "setup=NAME" only."""
    if block.language != "python":
        return None
    words = block.info.split()[1:]
    setup = [w.split("=", 1)[1] for w in words if w.startswith("setup=")]
    wrong = [w for w in words if w != "runnable" and not w.startswith("setup=")]
    if wrong or len(setup) > 1 or (setup and "runnable" not in words) \
            or (setup and setup[0] not in SETUPS):
        raise ValueError(f"{block.where}: info string {block.info!r}: write ```python, "
                         f"```python runnable or ```python runnable setup=NAME "
                         f"(NAME one of {', '.join(SETUPS)})")
    return (setup or [""])[0] if "runnable" in words else None


def run_blocks(blocks: list[Block], site, folder: Path) -> list[str | None]:
    todo = [{"file": b.path.name, "line": b.line, "code": b.text, "setup_name": name,
             "setup": SETUPS.get(name, "")} for b in blocks for name in [runnable(b)]]
    (folder / "blocks.json").write_text(json.dumps(todo))
    done = run_user_code(RUNNER, site, folder, "blocks.json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_runnable_python_block_runs(installed, tmp_path):
    blocks = [b for page in pages() for b in read(page)[0] if runnable(b) is not None]
    assert blocks, "no runnable block in the documentation: is the marker read?"
    results = run_blocks(blocks, installed.site, tmp_path)
    failed = [f"{b.path.name}, the block at line {b.line}: {r}"
              for b, r in zip(blocks, results) if r is not None]
    assert not failed, "\n".join(failed)


def test_the_block_check_sees_a_failing_block_and_a_misspelt_marker(installed, tmp_path):
    page = tmp_path / "x.md"
    page.write_text("```python runnable\nimport math\nassert math.pi == 3\n```\n\n"
                    "```python runnable\nfrom fsdp_pruning import __version__\n```\n\n"
                    "```python runable\nraise SystemExit\n```\n")
    blocks = read(page)[0]
    results = run_blocks(blocks[:2], installed.site, tmp_path)
    assert results == ["AssertionError:  (line 3)", None]
    with pytest.raises(ValueError, match="x.md:10: info string 'python runable'"):
        runnable(blocks[2])


# --- (d) the code's pointers into the docs -----------------------------------------------------

# docs/PAGE.md, then optionally #anchor or , 'Heading' (the quote closes before ) " : . ; , or
# the line's end, so a heading may hold an apostrophe: 'Differences from the authors' code')
POINTER = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+)|, '(.+?)'(?=[)\":.;,]|$))?")


def code_files(root: Path = ROOT) -> list[Path]:
    """What a user reads the pointers in: the programs, the packages, the Makefile, the tests
    (not this file, whose examples point nowhere on purpose)."""
    files = [*root.glob("*.py"), root / "Makefile"]
    for folder in ("utils", "models", "datasets", "bench", "examples", "tests"):
        files += sorted((root / folder).rglob("*.py"))
    return [f for f in files if f.is_file() and f.resolve() != Path(__file__).resolve()]


def pointers(files: list[Path], root: Path = ROOT) -> list[tuple[str, Path, str | None]]:
    """(file:line, the page, what it names there: "#anchor", "'Heading'", or None) of every
    pointer into docs/."""
    found = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for m in POINTER.finditer(line):
                named = f"#{m.group(2)}" if m.group(2) else f"'{m.group(3)}'" if m.group(3) else None
                found.append((f"{file.relative_to(root)}:{number}", root / "docs" / m.group(1),
                              named))
    return found


def names(page: Path) -> set[str]:
    """What a pointer may name in ``page``: its anchors as "#anchor", and the text of each
    heading as "'Heading'", whole or up to its colon ("'Prune to a budget'" for "Prune to a
    budget: `--target_flops`, `--target_params`"). A quoted name whose slug is an anchor (an
    ``<a name>`` before a bold paragraph: 'Reading the curves') is accepted by the caller."""
    found = {f"#{a}" for a in anchors(page)}
    for _, line in read(page)[1]:
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = plain_text(heading.group(1))
            found |= {f"'{text}'", f"'{text.split(': ', 1)[0]}'"}
    return found


def broken_pointers(files: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for where, page, named in pointers(files, root):
        if not page.is_file():
            broken.append(f"{where}: docs/{page.name} does not exist")
        elif named and named not in names(page) \
                and not (named.startswith("'") and f"#{slug(named[1:-1])}" in names(page)):
            broken.append(f"{where}: docs/{page.name} has no {named}")
    return broken


def test_every_pointer_from_the_code_into_the_docs_resolves():
    assert len(pointers(code_files())) >= 10, "no pointer into docs/ found: is the reader broken?"
    broken = broken_pointers(code_files())
    assert not broken, "\n".join(broken)


def test_the_pointer_check_sees_a_stale_pointer(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A\n\n## Your own architecture\n\n## Prune to a budget: `--target_flops`\n\n"
        "## Differences from the authors' code\n\n<a name=\"reading-the-curves\"></a>**R.**\n")
    code = tmp_path / "x.py"
    code.write_text("raise UserError(\"see docs/a.md, 'Your own architecture'\")\n"
                    "# (docs/a.md, 'Differences from the authors' code'); docs/a.md#a\n"
                    "see docs/a.md, 'Your architecture': it moved; docs/b.md\n"
                    "(docs/a.md#your-own-architecture, docs/a.md#flags)\n"
                    "(docs/a.md, 'Prune to a budget') (docs/a.md, 'Reading the curves')\n"
                    "(docs/a.md, 'Prune to a')\n")
    assert [(w, p.name, n) for w, p, n in pointers([code], tmp_path)] == [
        ("x.py:1", "a.md", "'Your own architecture'"),
        ("x.py:2", "a.md", "'Differences from the authors' code'"), ("x.py:2", "a.md", "#a"),
        ("x.py:3", "a.md", "'Your architecture'"), ("x.py:3", "b.md", None),
        ("x.py:4", "a.md", "#your-own-architecture"), ("x.py:4", "a.md", "#flags"),
        ("x.py:5", "a.md", "'Prune to a budget'"), ("x.py:5", "a.md", "'Reading the curves'"),
        ("x.py:6", "a.md", "'Prune to a'")]
    assert broken_pointers([code], tmp_path) == [
        "x.py:3: docs/a.md has no 'Your architecture'",
        "x.py:3: docs/b.md does not exist",
        "x.py:4: docs/a.md has no #flags",
        "x.py:6: docs/a.md has no 'Prune to a'"]
