"""Markdown read as GitHub renders it, for test_docs.py: fenced code blocks, headings and their
anchors, relative links, and the shell commands in the code blocks that run our scripts."""
import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
SHELL = {"", "bash", "sh", "shell", "console", "zsh"}  # info strings of blocks read as commands
PYTHONS = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")   # python, python3.11, .venv/bin/python
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int        # of the opening fence, 1-based
    info: str        # the fence's info string: "bash", "python runnable setup=loop", ""
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass(frozen=True)
class Command:
    where: str       # file:line of the command's first line
    script: str      # "compact.py", "bench.compact_latency" (python -m)
    argv: tuple


def read(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced code blocks, and the other lines (numbered) where headings and links are."""
    blocks, prose, fence = [], [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found = FENCE.match(line)
        if fence is None and found:
            fence, start, info, body = found.group(1), number, found.group(2).strip(), []
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) \
                and not line.strip().strip(fence[0]):
            blocks.append(Block(path, start, info, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def plain_text(markdown: str) -> str:
    """A heading's text as rendered: code spans, links and emphasis reduced to their text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"`+([^`]*)`+", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("*", "").strip()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, marks,
    '-' and '_' stay), each space a hyphen."""
    kept = [c for c in plain_text(heading).lower()
            if c.isalnum() or c in " -_" or unicodedata.category(c).startswith("M")]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a page: its headings' (a repeated one gets -1, -2, ...) and explicit
    <a name|id="...">."""
    found, seen = set(), {}
    for _, line in read(path)[1]:
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link or image and reference definition outside code."""
    found = []
    for number, line in read(path)[1]:
        line = re.sub(r"`+[^`]*`+", "", line)  # a code span shows its brackets, links nothing
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            found.append((number, target))
        found += [(number, t) for t in re.findall(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)",
                                                  line)]
        found += [(number, t) for t in re.findall(r"<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]+)\"",
                                                  line)]
    return found


def _logical_lines(block: Block):
    """(line number, text): backslash continuations joined, a leading "$ " prompt dropped."""
    pending, first = "", None
    for offset, line in enumerate(block.text.splitlines(), 1):
        first = first or block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, re.sub(r"^\s*\$ ", "", pending + line)
        pending, first = "", None
    if pending:
        yield first, pending


def _expand(line: str, variables: dict, where: str) -> str:
    def value(m):
        if m.group(1) not in variables:
            raise ValueError(f"{where}: ${m.group(1)} is not set in this code block")
        return variables[m.group(1)]
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", value, line)


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def _split(tokens: list[str]) -> list[list[str]]:
    commands = [[]]
    for t in tokens:
        if t in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(t)
    return [c for c in commands if c]


def script_of(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) when ``words`` run one of ours through python or torchrun, the
    script as "file.py" or "package.module" (python -m); None for any other program."""
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value python ...
        words = words[1:]
    if not words:
        return None
    if PYTHONS.match(words[0]):
        rest = words[1:]
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
        if not rest or rest[0] == "-c":
            return None
        if rest[0] == "-m":
            if len(rest) < 2:
                return None
            if rest[1] in ("torch.distributed.run", "torch.distributed.launch"):
                return _launched(rest[2:])
            return rest[1], rest[2:]
        return rest[0], rest[1:]
    if words[0] == "torchrun":
        return _launched(words[1:])
    return None


def _launched(words: list[str]):
    """torchrun's own options, then the script and its arguments."""
    for i, w in enumerate(words):
        if w.endswith(".py") and not w.startswith("-"):
            return w, words[i + 1:]
    return None


def commands(block: Block) -> list[Command]:
    """Every command of a shell block that runs a program with python or torchrun; lines of
    ``NAME=value`` (or ``export NAME=value``) set the block's variables, used as $NAME."""
    if block.language not in SHELL:
        return []
    found, variables = [], {}
    for number, line in _logical_lines(block):
        where = f"{block.path.name}:{number}"
        try:
            words = _tokens(line)  # comments and quotes as the shell reads them
        except ValueError as e:  # unbalanced quotes: the output or prose an untagged block holds
            if script_of(line.split()):
                raise ValueError(f"{where}: {e}") from None
            continue
        assignments = words[1:] if words[:1] == ["export"] else words
        if assignments and all(re.match(r"^[A-Za-z_]\w*=", w) for w in assignments):
            variables.update(w.split("=", 1) for w in assignments)
            continue
        if not any(script_of(c) for c in _split(words)):
            continue
        for command in _split(_tokens(_expand(line, variables, where))):
            run = script_of(command)
            if run is not None:
                found.append(Command(where, run[0], tuple(run[1])))
    return found
