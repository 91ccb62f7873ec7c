"""Reading the Dockerfile and its build context without a Docker engine (shared by the deploy tests).

``parse`` turns a Dockerfile into stages (continuations joined, comments dropped, ``RUN --mount``
flags kept apart), ``chain`` follows a target back through the stages it is built FROM, and
``build_context`` applies .dockerignore the way BuildKit does (last matching pattern wins; a pattern
that matches a directory matches everything below it; ``!`` re-includes).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from tests.deploy.manifests import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    op: str
    arg: str
    flags: list[str] = field(default_factory=list)


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [i.arg for i in self.instructions if i.op == op]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def chain(self, name: str) -> list[Stage]:
        """``name`` and the stages it is built FROM, base first."""
        out = [self.stage(name)]
        names = {s.name for s in self.stages}
        while out[0].base in names:
            out.insert(0, self.stage(out[0].base))
        return out

    def base_image(self, name: str) -> str:
        base = self.chain(name)[0].base
        m = re.fullmatch(r"\$\{?(\w+)\}?", base)
        return self.global_args.get(m.group(1), "") if m else base


def logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(" ".join((buf + line).split()))
        buf = ""
    return out


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = arg.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 else ""))
            continue
        if not stages:
            if op == "ARG":
                name, _, default = arg.partition("=")
                global_args[name] = default
            continue
        flags = []
        while arg.startswith("--"):
            flag, _, arg = arg.partition(" ")
            flags.append(flag)
        stages[-1].instructions.append(Instruction(op, arg.strip(), flags))
    return Dockerfile(global_args, stages)


def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


# -- .dockerignore ---------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception "!...", regex) per line of a .dockerignore."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        out.append((negate, _pattern_regex(line.strip("/"))))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in patterns:
        if any(rx.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def build_context(dockerignore: str | None = None, files: list[str] | None = None) -> set[str]:
    """The repository files a `docker build .` sends (tracked and new files, .dockerignore applied)."""
    patterns = ignore_patterns(DOCKERIGNORE.read_text() if dockerignore is None else dockerignore)
    return {f for f in (repo_files() if files is None else files) if not ignored(f, patterns)}


def in_context(source: str, context: set[str]) -> bool:
    """A COPY source (file or directory) that exists in the build context."""
    source = source.rstrip("/")
    return source in context or any(f.startswith(source + "/") for f in context)
