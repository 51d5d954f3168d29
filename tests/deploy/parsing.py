"""What the deployment tests read: Dockerfiles, .dockerignore, the uv workspace, settings.

No Docker engine or cluster is needed: the files are parsed here and checked against the
code they package (the workspace in uv.lock, ``lingua_shared.settings.Settings``, the
services' ``__main__`` modules), so a renamed module, a new required setting or a typo in an
environment variable fails a test instead of a deployment.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lingua_shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Image:
    """One image we build: its name in compose and Kubernetes, and what it packages."""

    name: str  # repository name without registry or tag, as the manifests use it
    dockerfile: str  # relative to the repository root (the build context)
    package: str  # the uv workspace member it installs
    package_dir: str  # that member's directory
    module: str  # what `python -m` runs
    service: bool  # a service (HTTP port, /healthz, Redis scripts) or the node agent


IMAGES: dict[str, Image] = {
    img.name: img
    for img in (
        Image(
            "lingua/gateway",
            "services/gateway/Dockerfile",
            "lingua-gateway",
            "services/gateway",
            "lingua_gateway",
            True,
        ),
        Image(
            "lingua/node-manager",
            "services/node-manager/Dockerfile",
            "lingua-node-manager",
            "services/node-manager",
            "lingua_node_manager",
            True,
        ),
        Image(
            "lingua/dispatcher",
            "services/dispatcher/Dockerfile",
            "lingua-dispatcher",
            "services/dispatcher",
            "lingua_dispatcher",
            True,
        ),
        Image(
            "lingua/stats",
            "services/stats/Dockerfile",
            "lingua-stats",
            "services/stats",
            "lingua_stats",
            True,
        ),
        Image(
            "lingua/node-agent",
            "sdk/node-agent/Dockerfile",
            "lingua-node-agent",
            "sdk/node-agent",
            "lingua_node_agent",
            False,
        ),
    )
}

SERVICE_IMAGES = [img for img in IMAGES.values() if img.service]


class DockerfileError(ValueError):
    """A Dockerfile this parser cannot read (so the checks cannot vouch for it)."""


# -- Dockerfiles ---------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line
    line: int  # first line number, for messages

    def words(self) -> list[str]:
        """Exec form (a JSON array) or shell words."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DockerfileError(f"line {self.line}: bad JSON array: {exc}") from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DockerfileError(f"line {self.line}: exec form must list strings")
            return value
        return shlex.split(text)

    def split_flags(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` flags (COPY, RUN, HEALTHCHECK...) and the rest, as text."""
        flags: dict[str, str] = {}
        rest = self.args.strip()
        while m := FLAG.match(rest):
            flags[m.group(1)] = m.group(2) or ""
            rest = rest[m.end() :]
        return flags, rest

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """The flags and the remaining words (exec or shell form)."""
        flags, rest = self.split_flags()
        return flags, Instruction(self.keyword, rest, self.line).words()

    def healthcheck_command(self) -> list[str] | None:
        """HEALTHCHECK's command (None for ``HEALTHCHECK NONE``)."""
        _, rest = self.split_flags()
        kind, _, command = rest.partition(" ")
        if kind.upper() == "NONE":
            return None
        if kind.upper() != "CMD":
            raise DockerfileError(f"line {self.line}: HEALTHCHECK needs CMD or NONE")
        return Instruction("CMD", command, self.line).words()


FLAG = re.compile(r"--([\w-]+)(?:=(\S*))?\s*")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Every ``ENV key=value`` of the stage (later ones win)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            words = shlex.split(ins.args)
            if len(words) == 2 and "=" not in words[0]:  # legacy `ENV key value`
                out[words[0]] = words[1]
                continue
            for word in words:
                key, sep, value = word.partition("=")
                if not sep:
                    raise DockerfileError(f"line {ins.line}: ENV word without '=': {word}")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}


def parse_dockerfile_text(text: str, path: Path = Path("Dockerfile")) -> Dockerfile:
    """Instructions with continuations joined and comments dropped, grouped by stage."""
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        logical.append((start, " ".join(p.strip() for p in pending if p.strip())))
        pending = []
    if pending:
        raise DockerfileError(f"{path}: line continuation at end of file")
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), number)
        if ins.keyword == "FROM":
            _, words = ins.flags()
            if len(words) == 3 and words[1].lower() == "as":
                stages.append(Stage(words[0], words[2]))
            elif len(words) == 1:
                stages.append(Stage(words[0], None))
            else:
                raise DockerfileError(f"{path}:{number}: cannot read FROM {args}")
            continue
        if not stages:
            if ins.keyword == "ARG":
                continue
            raise DockerfileError(f"{path}:{number}: {ins.keyword} before the first FROM")
        stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError(f"{path}: no FROM")
    return Dockerfile(path, stages)


@cache
def parse_dockerfile(relpath: str) -> Dockerfile:
    path = REPO / relpath
    return parse_dockerfile_text(path.read_text(), path)


IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9._-]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def image_pin_problem(ref: str) -> str | None:
    """Why ``ref`` is not a pinned image reference (a versioned tag or a digest), or None."""
    m = IMAGE_REF.match(ref)
    if m is None:
        return f"{ref!r} is not an image reference"
    tag, digest = m.group("tag"), m.group("digest")
    if digest:
        return None
    if tag is None:
        return f"{ref!r} has no tag (means latest)"
    if tag == "latest" or not re.search(r"\d", tag):
        return f"{ref!r}: tag {tag!r} names no version"
    return None


# -- .dockerignore ---------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on a relative path."""
    text = pattern.strip("/")
    out = []
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif text[i] == "*":
            out.append("[^/]*")
            i += 1
        elif text[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(text[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip())))
    return rules


def is_ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern matching a directory
    hides everything under it (unless a later exception names a path inside)."""
    parts = relpath.strip("/").split("/")
    ignored = False
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for negate, regex in rules:
            if regex.match(prefix):
                ignored = not negate
    return ignored


# -- the workspace and the settings --------------------------------------------------------
@cache
def lock() -> dict:
    return tomllib.loads((REPO / "uv.lock").read_text())


def workspace_members() -> dict[str, str]:
    """Workspace package name -> its directory, from uv.lock."""
    out = {}
    for pkg in lock()["package"]:
        source = pkg.get("source", {})
        if "editable" in source:
            out[pkg["name"]] = source["editable"]
        elif "virtual" in source:
            out[pkg["name"]] = source["virtual"]
    return out


def workspace_closure(package: str) -> set[str]:
    """``package`` and every workspace member it depends on, transitively."""
    by_name = {pkg["name"]: pkg for pkg in lock()["package"]}
    members = workspace_members()
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen or name not in members:
            continue
        seen.add(name)
        todo.extend(dep["name"] for dep in by_name[name].get("dependencies", []))
    return seen


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads (LINGUA_ + field name, upper case)."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


# Settings whose defaults only work on one machine (loopback), so every deployment must set
# them: where Redis and RabbitMQ are, and an address other containers can reach.
REQUIRED_SETTINGS = ("LINGUA_REDIS_URL", "LINGUA_AMQP_URL", "LINGUA_HOST")
# and, for the services, where the image put lua/ (the venv holds no lua/: find_lua_dir's
# search above the package would find nothing)
SERVICE_REQUIRED_SETTINGS = (*REQUIRED_SETTINGS, "LINGUA_LUA_DIR")


def settings_default(env_name: str) -> object:
    """The default of the setting read from ``env_name``."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    field_name = env_name.removeprefix(prefix).lower()
    return Settings.model_fields[field_name].default


def node_agent_config(argv: list[str]) -> object:
    """What the node agent's own CLI makes of ``argv`` (argparse exits on unknown flags;
    the configs raise ConfigError on bad values), so manifests cannot drift from the CLI."""
    from lingua_node_agent.cli import agent_config_from_args, build_parser, sim_config_from_args

    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        return sim_config_from_args(args)
    return agent_config_from_args(args)
