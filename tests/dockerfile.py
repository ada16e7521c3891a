"""The repository's Dockerfile read as instructions, for the deploy tests.

Enough of Docker's syntax for our own file: comments, `\\` continuations, global `ARG`s before
the first `FROM`, stages, and the exec (JSON) form of `CMD`, `ENTRYPOINT` and `HEALTHCHECK`.
The tests read the image's command line, environment and health check from here rather than
repeating them, so a change to the Dockerfile is a change to what they run.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuations joined, surrounding whitespace stripped
    line: int


@dataclass(frozen=True)
class Stage:
    base: str  # as written, `${ARG}` expanded from the global ARGs
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if len(found) != 1:
            raise AssertionError(f"expected one {keyword} in stage {self.name}, found {found}")
        return found[0]

    def env(self) -> dict[str, str]:
        """The stage's `ENV key=value ...` pairs, values as written (`$PATH` unexpanded)."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise AssertionError(f"line {instruction.line}: use ENV key=value")
                env[key] = value
        return env


@dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]  # global ARG defaults
    stages: tuple[Stage, ...]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continuation too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, rest = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
        pending = []
    if pending:
        raise AssertionError(f"{path}:{start}: a continuation runs off the end")

    args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    base, name = "", None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            if current is not None:
                stages.append(Stage(base, name, tuple(current)))
            words = instruction.args.split()
            base = _expand(words[0], args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        elif current is None:
            if instruction.keyword != "ARG":
                raise AssertionError(f"line {instruction.line}: only ARG may precede FROM")
            key, _, value = instruction.args.partition("=")
            args[key] = value
        else:
            current.append(instruction)
    if current is not None:
        stages.append(Stage(base, name, tuple(current)))
    return Dockerfile(args, tuple(stages))


def exec_form(args: str) -> list[str]:
    """A JSON array of strings (the exec form), or AssertionError: the shell form would run
    under `/bin/sh -c`, which becomes PID 1 and does not pass SIGTERM on."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise AssertionError(f"not exec (JSON) form: {args}") from None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise AssertionError(f"not a JSON array of strings: {args}")
    return value


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """The options (`--interval=15s` as {"interval": "15s"}) and command of HEALTHCHECK CMD."""
    options: dict[str, str] = {}
    rest = stage.one("HEALTHCHECK").args
    while match := re.match(r"--([a-z-]+)=(\S+)\s+", rest):
        options[match.group(1)] = match.group(2)
        rest = rest[match.end() :]
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise AssertionError(f"HEALTHCHECK without CMD: {rest}")
    return options, exec_form(command.strip())


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)
