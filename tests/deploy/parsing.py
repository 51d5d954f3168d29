"""What the deployment tests read: Dockerfiles, .dockerignore, the uv workspace, settings.

No Docker engine or cluster is needed: the files are parsed here and checked against the
code they package (the workspace in uv.lock, ``lingua_shared.settings.Settings``, the
services' ``__main__`` modules), so a renamed module, a new required setting or a typo in an
environment variable fails a test instead of a deployment.
"""

from __future__ import annotations

import json
import re
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
    module: str  # what it runs (`python -m`, or the package's script for it)
    service: bool  # a service (HTTP port, /healthz, Redis scripts) or the node agent
    build_args: tuple[tuple[str, str], ...] = ()  # --build-arg NAME=value, as compose passes

    @property
    def args(self) -> dict[str, str]:
        return dict(self.build_args)


SERVICE_DOCKERFILE = "services/Dockerfile"  # one for the four services, named by build args
IMAGES: dict[str, Image] = {
    img.name: img
    for img in (
        Image(
            "lingua/gateway",
            SERVICE_DOCKERFILE,
            "lingua-gateway",
            "services/gateway",
            "lingua_gateway",
            True,
            (("SERVICE", "gateway"), ("PORT", "5010")),
        ),
        Image(
            "lingua/node-manager",
            SERVICE_DOCKERFILE,
            "lingua-node-manager",
            "services/node-manager",
            "lingua_node_manager",
            True,
            (("SERVICE", "node-manager"), ("PORT", "5020")),
        ),
        Image(
            "lingua/dispatcher",
            SERVICE_DOCKERFILE,
            "lingua-dispatcher",
            "services/dispatcher",
            "lingua_dispatcher",
            True,
            (("SERVICE", "dispatcher"), ("PORT", "5030")),
        ),
        Image(
            "lingua/stats",
            SERVICE_DOCKERFILE,
            "lingua-stats",
            "services/stats",
            "lingua_stats",
            True,
            (("SERVICE", "stats"), ("PORT", "5040")),
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
# Variables are read as Docker reads them. Build args (ARG) and ENV values are substituted
# when the image is built in the instructions that take them (COPY, ENV, EXPOSE, USER,
# FROM...); RUN sees the ARG and ENV values as its shell's environment; CMD, ENTRYPOINT and
# HEALTHCHECK in shell form see the image's ENV when the container runs. Exec form (a JSON
# array) is never expanded. A variable the Dockerfile does not set (one of the base image,
# such as $PATH) is left as written.
BUILD_TIME = frozenset(
    {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
)
RUN_TIME = frozenset({"CMD", "ENTRYPOINT", "HEALTHCHECK"})
VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<modifier>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))"
)


def _variable(text: str, i: int, env: dict[str, str | None], where: str) -> tuple[str, int]:
    """The expansion of the ``$`` at ``text[i]`` and the index after it."""
    m = VARIABLE.match(text, i)
    if m is None:
        return "$", i + 1
    name = m.group("braced") or m.group("plain")
    if m.group("modifier"):
        raise DockerfileError(f"{where}: ${{{name}{m.group('modifier')}}} is not supported here")
    if name not in env:
        return m.group(0), m.end()  # not the Dockerfile's (the base image's): left as written
    value = env[name]
    if value is None:
        raise DockerfileError(f"{where}: ${name} has no value (build with --build-arg {name}=...)")
    return value, m.end()


def substitute(text: str, env: dict[str, str | None], where: str = "") -> str:
    """Docker's build-time substitution: ``$NAME`` / ``${NAME}`` replaced, quotes kept,
    nothing replaced inside single quotes."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if c in "'\"" and quote in ("", c):
            quote = "" if quote else c
        elif c == "$" and quote != "'":
            value, i = _variable(text, i, env, where)
            out.append(value)
            continue
        out.append(c)
        i += 1
    return "".join(out)


def shell_words(text: str, env: dict[str, str | None], where: str = "") -> list[str]:
    """The words ``sh`` makes of ``text``: quotes and backslashes as sh reads them,
    variables of ``env`` expanded (not inside single quotes)."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word.append(c)
        elif c == "\\" and i + 1 < len(text) and (not quote or text[i + 1] in '"\\$`'):
            word.append(text[i + 1])
            in_word = True
            i += 1
        elif c == "$":
            value, i = _variable(text, i, env, where)
            word.append(value)
            in_word = True
            continue
        elif quote == '"':
            if c == '"':
                quote = ""
            else:
                word.append(c)
        elif c.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        elif c in "'\"":
            quote, in_word = c, True
        else:
            word.append(c)
            in_word = True
        i += 1
    if quote:
        raise DockerfileError(f"{where}: unterminated {quote}")
    if in_word:
        words.append("".join(word))
    return words


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line, build-time variables substituted
    line: int  # first line number, for messages
    # what a shell running it sees (RUN: the ARG and ENV values; CMD, ENTRYPOINT and
    # HEALTHCHECK: the image's ENV); for other instructions, already substituted: nothing
    shell_env: dict[str, str | None] = field(default_factory=dict)

    def words(self) -> list[str]:
        """Exec form (a JSON array, as written) or shell words (variables expanded)."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DockerfileError(f"line {self.line}: bad JSON array: {exc}") from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DockerfileError(f"line {self.line}: exec form must list strings")
            return value
        return shell_words(text, self.shell_env, f"line {self.line}")

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
        return flags, Instruction(self.keyword, rest, self.line, self.shell_env).words()

    def healthcheck_command(self) -> list[str] | None:
        """HEALTHCHECK's command (None for ``HEALTHCHECK NONE``)."""
        _, rest = self.split_flags()
        kind, _, command = rest.partition(" ")
        if kind.upper() == "NONE":
            return None
        if kind.upper() != "CMD":
            raise DockerfileError(f"line {self.line}: HEALTHCHECK needs CMD or NONE")
        return Instruction("CMD", command, self.line, self.shell_env).words()

    def shell_form(self) -> bool:
        """Run by ``/bin/sh -c`` (not a JSON array)."""
        _, rest = self.split_flags()
        if self.keyword == "HEALTHCHECK":
            rest = rest.partition(" ")[2]
        return not rest.strip().startswith("[")


FLAG = re.compile(r"--([\w-]+)(?:=(\S*))?\s*")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    # the image's ENV once the stage is built (inherited from a stage it is FROM)
    env_values: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Every ``ENV key=value`` of the stage (later ones win), variables substituted."""
        return dict(self.env_values)


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}


def _logical_lines(text: str, path: Path) -> list[tuple[int, str]]:
    """Instructions with continuations joined and comments dropped: (first line, text)."""
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
    return logical


def _env_pairs(words: list[str], where: str) -> list[tuple[str, str]]:
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV key value`
        return [(words[0], words[1])]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"{where}: ENV word without '=': {word}")
        pairs.append((key, value))
    return pairs


def parse_dockerfile_text(
    text: str, path: Path = Path("Dockerfile"), build_args: dict[str, str] | None = None
) -> Dockerfile:
    """The instructions grouped by stage, as ``docker build`` with ``build_args`` reads them
    (see the variable rules above). A build arg no ARG declares, or an ARG a variable needs
    that has neither a value nor a default, is an error, as is anything this parser cannot
    read (so the checks never vouch for a file they did not understand)."""
    given = dict(build_args or {})
    used: set[str] = set()
    global_args: dict[str, str | None] = {}
    build_vars: dict[str, str | None] = {}  # what build-time substitution sees in the stage
    stages: list[Stage] = []
    for number, line in _logical_lines(text, path):
        where = f"{path}:{number}"
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG":
            scope = build_vars if stages else global_args
            name, sep, default = args.partition("=")
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise DockerfileError(f"{where}: cannot read ARG {args}")
            if name in given:
                scope[name] = given[name]
                used.add(name)
            elif sep:
                scope[name] = substitute(default, scope, where)
            else:
                scope[name] = global_args.get(name) if stages else None
            if stages:
                stages[-1].instructions.append(Instruction(keyword, args, number))
            continue
        if keyword == "FROM":
            words = Instruction(keyword, substitute(args, global_args, where), number).flags()[1]
            if len(words) == 3 and words[1].lower() == "as":
                stage = Stage(words[0], words[2])
            elif len(words) == 1:
                stage = Stage(words[0], None)
            else:
                raise DockerfileError(f"{where}: cannot read FROM {args}")
            parent = next((s for s in stages if s.name == stage.base), None)
            stage.env_values = dict(parent.env_values) if parent else {}
            build_vars = dict(stage.env_values)
            stages.append(stage)
            continue
        if not stages:
            raise DockerfileError(f"{where}: {keyword} before the first FROM")
        stage = stages[-1]
        if keyword in BUILD_TIME:
            args = substitute(args, build_vars, where)
        ins = Instruction(keyword, args, number)
        if keyword == "RUN":
            ins.shell_env = dict(build_vars)
        elif keyword == "ENV":
            for key, value in _env_pairs(shell_words(args, {}, where), where):
                stage.env_values[key] = value
                build_vars[key] = value
        stage.instructions.append(ins)
    if not stages:
        raise DockerfileError(f"{path}: no FROM")
    for stage in stages:  # CMD, ENTRYPOINT and HEALTHCHECK run with the image's ENV
        for ins in stage.instructions:
            if ins.keyword in RUN_TIME:
                ins.shell_env = dict(stage.env_values)
    if unused := sorted(set(given) - used):
        raise DockerfileError(f"{path}: no ARG declares the build args {unused}")
    return Dockerfile(path, stages)


@cache
def parse_dockerfile(relpath: str, build_args: tuple[tuple[str, str], ...] = ()) -> Dockerfile:
    path = REPO / relpath
    return parse_dockerfile_text(path.read_text(), path, dict(build_args))


def image_dockerfile(img: Image) -> Dockerfile:
    """``img``'s Dockerfile as ``docker build`` reads it with ``img``'s build args."""
    return parse_dockerfile(img.dockerfile, img.build_args)


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
