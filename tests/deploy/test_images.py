"""The Dockerfiles, read without a Docker engine: each image holds one workspace package
built from uv.lock, runs it as a non-root user, and can find what the code needs.

Every check is a function returning its problems, run on the real Dockerfiles (no
problems) and on a broken one (the problems are found), so no check passes vacuously.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.parsing import (
    IMAGES,
    REPO,
    SERVICE_IMAGES,
    Dockerfile,
    DockerfileError,
    Image,
    dockerignore_rules,
    image_dockerfile,
    image_pin_problem,
    is_ignored,
    parse_dockerfile_text,
    settings_env_names,
    shell_words,
    substitute,
    workspace_closure,
    workspace_members,
)

ALL = list(IMAGES.values())
IDS = [img.name for img in ALL]


def _copies(df: Dockerfile) -> list[tuple[str, str | None, list[str], str]]:
    """(stage name, --from, sources, destination) of every COPY/ADD."""
    out = []
    for stage in df.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, words = ins.flags()
            if len(words) < 2:
                raise AssertionError(f"{df.path}:{ins.line}: COPY needs a source and a target")
            out.append((stage.name or "", flags.get("from"), words[:-1], words[-1]))
    return out


def _uv_syncs(df: Dockerfile) -> list[tuple[str, list[str]]]:
    out = []
    for stage in df.stages:
        for ins in stage.all("RUN"):
            _, words = ins.flags()
            text = " ".join(words)
            for command in re.split(r"&&|;", text):
                parts = command.split()
                if parts[:2] == ["uv", "sync"] or parts[:2] == ["uv", "export"]:
                    out.append((stage.name or "", parts))
    return out


def _package_of(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        if word == "--package" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--package="):
            return word.split("=", 1)[1]
    return None


def _command(df: Dockerfile) -> list[str]:
    """What the final stage runs: ENTRYPOINT + CMD (exec form, or the words of a shell
    form with the image's ENV expanded)."""
    entry = df.final.all("ENTRYPOINT")
    cmd = df.final.all("CMD")
    words = entry[-1].words() if entry else []
    return words + (cmd[-1].words() if cmd and not entry else [])


def _scripts(img: Image) -> dict[str, str]:
    """The commands ``img``'s package installs: name -> ``module:function``."""
    project = tomllib.loads((REPO / img.package_dir / "pyproject.toml").read_text())
    return project.get("project", {}).get("scripts", {})


# -- the checks --------------------------------------------------------------------------
def build_problems(df: Dockerfile, img: Image) -> list[str]:
    """Multi-stage; a builder runs `uv sync --frozen --package <img.package>` with uv.lock;
    the runtime stage copies the venv from it and carries no uv."""
    problems = []
    if len(df.stages) < 2:
        problems.append("not multi-stage")
    syncs = _uv_syncs(df)
    if not syncs:
        problems.append("no `uv sync` / `uv export`")
    for stage, words in syncs:
        if stage == (df.final.name or ""):
            problems.append("uv runs in the runtime stage")
        if "--frozen" not in words and "--locked" not in words:
            problems.append(f"{' '.join(words)}: neither --frozen nor --locked (uv.lock unused)")
        if "--no-dev" not in words:
            problems.append(f"{' '.join(words)}: dev dependencies installed")
        if _package_of(words) != img.package:
            problems.append(f"{' '.join(words)}: not --package {img.package}")
    builder_names = {stage for stage, _ in syncs}
    if not any(
        "uv.lock" in sources and stage in builder_names for stage, frm, sources, _ in _copies(df)
    ):
        problems.append("uv.lock is not copied into the builder stage")
    final_froms = [frm for stage, frm, _, _ in _copies(df) if stage == (df.final.name or "")]
    if not any(frm in builder_names for frm in final_froms):
        problems.append("the runtime stage copies nothing from the builder")
    bases = {stage.name: stage.base for stage in df.stages if stage.name}
    if any(frm and "astral-sh/uv" in bases.get(frm, frm) for frm in final_froms):
        problems.append("uv copied into the runtime stage")
    return problems


def user_problems(df: Dockerfile) -> list[str]:
    users = df.final.all("USER")
    if not users:
        return ["the runtime stage runs as root (no USER)"]
    user = users[-1].args.split(":")[0].strip()
    if not user.isdigit():
        return [f"USER {user}: not numeric (Kubernetes runAsNonRoot cannot verify a name)"]
    if int(user) == 0:
        return ["USER 0 is root"]
    return []


def allowed_sources(img: Image) -> tuple[str, ...]:
    """What an image may take from the context: its own member, the shared package, the
    workspace manifests, and (services) the Redis scripts."""
    members = [workspace_members()[name] for name in workspace_closure(img.package)]
    allowed = ["uv.lock", "pyproject.toml", *(f"{d}/" for d in members if d != ".")]
    if img.service:
        allowed.append("lua/")
    return tuple(allowed)


def copy_problems(df: Dockerfile, img: Image) -> list[str]:
    problems = []
    allowed = allowed_sources(img)
    pyprojects = {f"{d}/pyproject.toml" for d in workspace_members().values()}
    for _, frm, sources, _ in _copies(df):
        if frm is not None:
            continue  # from a stage or a pinned image: checked elsewhere
        for src in sources:
            norm = src.removeprefix("./")
            if norm in pyprojects:
                continue
            if ".." in Path(norm).parts or norm in ("", "."):
                problems.append(f"COPY {src}: the whole context or outside it")
            elif not any(norm == a or norm.startswith(a) or f"{norm}/" == a for a in allowed):
                problems.append(f"COPY {src}: not one of {allowed}")
            elif not (REPO / norm).exists():
                problems.append(f"COPY {src}: no such path in the repository")
    return problems


def pin_problems(df: Dockerfile) -> list[str]:
    problems = []
    stages = df.stage_names()
    for stage in df.stages:
        if stage.base not in stages and stage.base != "scratch":
            if problem := image_pin_problem(stage.base):
                problems.append(f"FROM {problem}")
    for _, frm, _, _ in _copies(df):
        if frm and frm not in stages and not frm.isdigit():
            if problem := image_pin_problem(frm):
                problems.append(f"COPY --from {problem}")
    return problems


def module_problems(df: Dockerfile, img: Image) -> list[str]:
    """It runs ``python -m <img.module>``, or the package's own script for it (whose entry
    point is ``<img.module>.__main__``); a shell-form command ``exec``s it, so that the
    service, not the shell, is PID 1 and gets SIGTERM (its graceful drain)."""
    words = _command(df)
    run = (df.final.all("ENTRYPOINT") or df.final.all("CMD"))[-1:]
    problems = []
    if run and run[0].shell_form():
        if words[:1] != ["exec"]:
            problems.append(f"runs {words} through a shell without `exec`: SIGTERM goes to sh")
        words = words[1:]
    scripts = _scripts(img)
    if len(words) >= 3 and Path(words[0]).name in ("python", "python3") and words[1] == "-m":
        module = words[2]
    elif words and words[0] in scripts:
        module = scripts[words[0]].partition(":")[0].removesuffix(".__main__")
    else:
        return [*problems, f"runs {words}, not `python -m {img.module}` or its script"]
    if module != img.module:
        problems.append(f"runs {module}, expected {img.module}")
    if not (REPO / img.package_dir / "src" / module / "__main__.py").is_file():
        problems.append(f"{module} has no __main__.py in {img.package_dir}/src")
    if workspace_members().get(img.package) != img.package_dir:
        problems.append(f"{img.package} is not the workspace member at {img.package_dir}")
    return problems


# -- on the real Dockerfiles --------------------------------------------------------------
@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_dockerfile_exists_and_parses(img: Image) -> None:
    df = image_dockerfile(img)
    assert df.stages


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_multi_stage_uv_build(img: Image) -> None:
    assert build_problems(image_dockerfile(img), img) == []


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_runs_as_numeric_non_root_user(img: Image) -> None:
    assert user_problems(image_dockerfile(img)) == []


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_copies_only_its_own_code(img: Image) -> None:
    assert copy_problems(image_dockerfile(img), img) == []


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_base_images_pinned(img: Image) -> None:
    assert pin_problems(image_dockerfile(img)) == []


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_runs_the_packaged_module(img: Image) -> None:
    assert module_problems(image_dockerfile(img), img) == []


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_builder_has_every_workspace_member_it_installs(img: Image) -> None:
    """uv builds each workspace member the package depends on from source: the builder
    must hold its pyproject.toml and its src/ (lingua-shared for every image)."""
    df = image_dockerfile(img)
    copied = {
        src.rstrip("/") for _, frm, sources, _ in _copies(df) if frm is None for src in sources
    }
    for name in workspace_closure(img.package):
        member = workspace_members()[name]
        assert f"{member}/pyproject.toml" in copied, f"{name}: pyproject.toml not copied"
        assert f"{member}/src" in copied, f"{name}: src/ not copied"


@pytest.mark.parametrize("img", SERVICE_IMAGES, ids=[i.name for i in SERVICE_IMAGES])
def test_service_port_host_and_healthcheck(img: Image) -> None:
    """EXPOSE the port the service listens on by default, listen on every interface, and
    check health on /healthz of that port."""
    port = importlib.import_module(f"{img.module}.app").DEFAULT_PORT
    df = image_dockerfile(img)
    exposed = {w.split("/")[0] for ins in df.final.all("EXPOSE") for w in ins.args.split()}
    assert exposed == {str(port)}
    assert df.final.env().get("LINGUA_HOST") == "0.0.0.0"
    checks = df.final.all("HEALTHCHECK")
    assert checks, "no HEALTHCHECK"
    command = " ".join(checks[-1].healthcheck_command() or [])
    assert "/healthz" in command and str(port) in command


@pytest.mark.parametrize("img", SERVICE_IMAGES, ids=[i.name for i in SERVICE_IMAGES])
def test_service_finds_its_lua_scripts(img: Image) -> None:
    """The venv holds the package, not the repository's lua/: LINGUA_LUA_DIR must name
    where the image copied lua/, and that must be what find_lua_dir accepts."""
    df = image_dockerfile(img)
    lua_dir = df.final.env().get("LINGUA_LUA_DIR")
    assert lua_dir, "LINGUA_LUA_DIR not set"
    targets = [
        dest.rstrip("/")
        for stage, frm, sources, dest in _copies(df)
        if stage == df.final.name and frm is None and any(s.rstrip("/") == "lua" for s in sources)
    ]
    assert targets == [lua_dir.rstrip("/")]
    assert (REPO / "lua" / "register_node_v2.lua").is_file()


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_env_names_are_settings(img: Image) -> None:
    """A LINGUA_* variable the image sets must be one Settings reads (a typo is silent)."""
    env = image_dockerfile(img).final.env()
    unknown = {k for k in env if k.startswith("LINGUA_")} - settings_env_names()
    assert unknown == set()


def test_images_carry_no_deployment_settings() -> None:
    """The images set what depends on the image (listen address, lua dir); where Redis and
    RabbitMQ are, with their credentials, comes from the deployment, never the image."""
    for img in SERVICE_IMAGES:
        env = image_dockerfile(img).final.env()
        assert {"LINGUA_HOST", "LINGUA_LUA_DIR"} <= set(env)
    for img in ALL:
        env = image_dockerfile(img).final.env()
        assert not {"LINGUA_REDIS_URL", "LINGUA_AMQP_URL"} & set(env)


def test_node_agent_healthcheck_script_is_in_the_image() -> None:
    df = image_dockerfile(IMAGES["lingua/node-agent"])
    command = df.final.all("HEALTHCHECK")[-1].healthcheck_command() or []
    script = command[-1]
    copied = {
        dest: sources
        for stage, frm, sources, dest in _copies(df)
        if stage == df.final.name and frm is None
    }
    assert script in copied, f"{script} is not copied into the image"
    assert all((REPO / src).is_file() for src in copied[script])


# -- .dockerignore -------------------------------------------------------------------------
def test_dockerignore_keeps_what_images_copy_and_drops_the_rest() -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    for img in ALL:
        df = image_dockerfile(img)
        for _, frm, sources, _ in _copies(df):
            if frm is not None:
                continue
            for src in sources:
                root = REPO / src
                files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
                kept = [
                    f
                    for f in files
                    if "__pycache__" not in f.parts
                    and not is_ignored(str(f.relative_to(REPO)), rules)
                ]
                assert kept, f"{img.dockerfile}: COPY {src} finds nothing after .dockerignore"
        main = REPO / img.package_dir / "src" / img.module / "__main__.py"
        assert not is_ignored(str(main.relative_to(REPO)), rules)
    for path in (".git/HEAD", ".venv/bin/python", ".run/x.pid", "services/gateway/tests/x.py"):
        assert is_ignored(path, rules), path
    assert not is_ignored("lua/lib/common.lua", rules)


def test_dockerignore_matcher() -> None:
    rules = dockerignore_rules("**/tests\n*.md\n!KEEP.md\ndocs/*.png\n")
    assert is_ignored("a/b/tests/t.py", rules)
    assert is_ignored("tests", rules)
    assert is_ignored("README.md", rules) and not is_ignored("KEEP.md", rules)
    assert not is_ignored("a/README.md", rules)  # `*` does not cross `/`
    assert is_ignored("docs/x.png", rules) and not is_ignored("docs/x/y.png", rules)


# -- the checks find what they look for --------------------------------------------------
BROKEN = """
FROM python:latest
COPY . /src
RUN pip install /src/services/gateway
USER root
CMD ["python", "-m", "lingua_gatewy"]
"""


def test_checks_catch_a_broken_dockerfile() -> None:
    img = IMAGES["lingua/gateway"]
    df = parse_dockerfile_text(BROKEN)
    assert "not multi-stage" in build_problems(df, img)
    assert any("no `uv sync`" in p for p in build_problems(df, img))
    assert user_problems(df) == [
        "USER root: not numeric (Kubernetes runAsNonRoot cannot verify a name)"
    ]
    assert any("whole context" in p for p in copy_problems(df, img))
    assert pin_problems(df) == ["FROM 'python:latest': tag 'latest' names no version"]
    assert any("expected lingua_gateway" in p for p in module_problems(df, img))


def test_checks_catch_subtler_mistakes() -> None:
    img = IMAGES["lingua/dispatcher"]
    text = (REPO / img.dockerfile).read_text()

    def parsed(text: str) -> Dockerfile:
        return parse_dockerfile_text(text, build_args=img.args)

    wrong_package = text.replace("--package lingua-${SERVICE}", "--package lingua-gateway")
    problems = build_problems(parsed(wrong_package), img)
    assert any("not --package" in p for p in problems)
    unlocked = text.replace("--frozen ", "")
    assert any("--frozen" in p for p in build_problems(parsed(unlocked), img))
    other_code = text.replace("COPY lua/ /app/lua/", "COPY services/gateway/src /app/gw")
    assert any("not one of" in p for p in copy_problems(parsed(other_code), img))
    floating = text.replace("ghcr.io/astral-sh/uv:0.13.9", "ghcr.io/astral-sh/uv")
    assert any("no tag" in p for p in pin_problems(parsed(floating)))
    as_root = text.replace("USER 10001:10001", "USER 0")
    assert user_problems(parsed(as_root)) == ["USER 0 is root"]
    uv_at_runtime = text.replace(
        "COPY --from=builder /opt/venv /opt/venv",
        "COPY --from=builder /opt/venv /opt/venv\nCOPY --from=uv /uv /usr/local/bin/uv",
    )
    assert "uv copied into the runtime stage" in build_problems(parsed(uv_at_runtime), img)


# -- base images as build args (scripts/images.py passes local ones) -----------------------
OFFICIAL_BASES = {
    "PYTHON_IMAGE": "python:3.11.11-slim-bookworm",
    "UV_IMAGE": "ghcr.io/astral-sh/uv:0.13.9",
}


@pytest.mark.parametrize("img", ALL, ids=IDS)
def test_base_images_are_build_args_defaulting_to_the_official_ones(img: Image) -> None:
    """Every FROM that is not a stage of the file is a build arg whose default is the
    official image; passing others (the local Debian equivalents) changes every base."""
    text = (REPO / img.dockerfile).read_text()
    for name, default in OFFICIAL_BASES.items():
        assert re.search(rf"^ARG {name}={re.escape(default)}$", text, re.M), name
    raw_froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert set(raw_froms) == {"${PYTHON_IMAGE}", "${UV_IMAGE}"}, raw_froms
    official = image_dockerfile(img)
    stages = official.stage_names()
    assert {s.base for s in official.stages if s.base not in stages} == set(OFFICIAL_BASES.values())
    local = {"PYTHON_IMAGE": "localhost/x/python:3.11", "UV_IMAGE": "localhost/x/uv:1"}
    df = parse_dockerfile_text(text, build_args={**img.args, **local})
    assert {s.base for s in df.stages if s.base not in stages} == set(local.values())
    # the runtime stage never takes uv, whichever image provides it
    assert build_problems(df, img) == []


def test_images_script_builds_what_compose_and_the_manifests_name() -> None:
    """scripts/images.py (make images) builds each image of IMAGES, tagged as compose and
    Kubernetes name it, from its Dockerfile with its build args; its default bases are the
    Dockerfiles' own."""
    spec = importlib.util.spec_from_file_location("_images_script", REPO / "scripts/images.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    built = {t.tag.rpartition(":")[0]: t for t in mod.TARGETS}
    assert set(built) == set(IMAGES)
    for name, img in IMAGES.items():
        assert built[name].dockerfile == img.dockerfile
        assert dict(built[name].args) == img.args
    assert mod.default_arg("PYTHON_IMAGE") == OFFICIAL_BASES["PYTHON_IMAGE"]
    assert mod.default_arg("UV_IMAGE", "sdk/node-agent/Dockerfile") == OFFICIAL_BASES["UV_IMAGE"]
    assert mod.local_bases()["uv"].endswith(":0.13.9")


def test_checks_catch_a_service_image_built_with_the_wrong_args() -> None:
    """services/Dockerfile is one file for four images: the build args decide what an image
    holds, so args naming another service, missing or unknown ones, and variables Docker
    does not expand where they are written are all found."""
    img = IMAGES["lingua/dispatcher"]
    text = (REPO / img.dockerfile).read_text()

    def parsed(text: str) -> Dockerfile:
        return parse_dockerfile_text(text, build_args=img.args)

    other = parse_dockerfile_text(text, build_args=IMAGES["lingua/gateway"].args)
    assert any("not --package lingua-dispatcher" in p for p in build_problems(other, img))
    assert any("not one of" in p for p in copy_problems(other, img))
    assert module_problems(other, img) == [
        "runs ['lingua-gateway'], not `python -m lingua_dispatcher` or its script"
    ]
    with pytest.raises(DockerfileError, match="SERVICE has no value"):
        parse_dockerfile_text(text, build_args={"PORT": "5030"})
    with pytest.raises(DockerfileError, match="no ARG declares the build args"):
        parse_dockerfile_text(text, build_args={**img.args, "SERVCE": "dispatcher"})
    # exec form is never expanded: it would run a command named `lingua-$SERVICE`
    exec_form = text.replace('CMD exec "lingua-$SERVICE"', 'CMD ["lingua-$SERVICE"]')
    assert any("not `python -m" in p for p in module_problems(parsed(exec_form), img))
    no_exec = text.replace('CMD exec "lingua-$SERVICE"', 'CMD "lingua-$SERVICE"')
    assert any("without `exec`" in p for p in module_problems(parsed(no_exec), img))
    # nor in an exec-form health check: the port is not the service's
    check = parsed(
        re.sub(
            r'CMD python -c "(.*)"\n',
            lambda m: f"CMD {json.dumps(['python', '-c', m.group(1)])}\n",
            text,
        )
    )
    (hc,) = check.final.all("HEALTHCHECK")
    assert not hc.shell_form()
    command = " ".join(hc.healthcheck_command() or [])
    assert "${LINGUA_PORT}" in command and "5030" not in command


def test_variables_read_as_docker_and_sh_read_them() -> None:
    env: dict[str, str | None] = {"A": "x", "NONE": None}
    words = shell_words("exec \"lingua-$A\" '$A' \\$A ${A}y $PATH", env)
    assert words == ["exec", "lingua-x", "$A", "$A", "xy", "$PATH"]
    assert shell_words("python -c \"print('${A}')\"", env) == ["python", "-c", "print('x')"]
    assert substitute("services/${A}/src '$A' \"$A\" $PATH", env) == (
        "services/x/src '$A' \"x\" $PATH"
    )
    with pytest.raises(DockerfileError, match="NONE has no value"):
        substitute("$NONE", env)
    with pytest.raises(DockerfileError, match="not supported"):
        shell_words("${A:-default}", env)
    stages = parse_dockerfile_text(
        "ARG V=1\nFROM base:${V}.0 AS a\nARG V\nENV P=/p:$PATH Q=$V\n"
        "FROM a\nENV R=${Q}2\nCMD echo $R\n"
    ).stages
    assert stages[0].base == "base:1.0"
    assert stages[0].env() == {"P": "/p:$PATH", "Q": "1"}
    assert stages[1].env() == {"P": "/p:$PATH", "Q": "1", "R": "12"}  # inherited
    assert stages[1].all("CMD")[0].words() == ["echo", "12"]


def test_image_pins() -> None:
    assert image_pin_problem("redis:7.4.2-alpine") is None
    assert image_pin_problem("ghcr.io/astral-sh/uv:0.13.9") is None
    assert image_pin_problem("registry.example.com:5000/lingua/gateway:0.1.0") is None
    assert image_pin_problem("python@sha256:" + "a" * 64) is None
    assert image_pin_problem("redis") is not None
    assert image_pin_problem("redis:latest") is not None
    assert image_pin_problem("redis:alpine") is not None


# -- the node agent's health check ----------------------------------------------------------
HEALTHCHECK = REPO / "sdk/node-agent/docker/healthcheck.py"
TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode"
)


def _load_healthcheck():
    spec = importlib.util.spec_from_file_location("node_agent_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_counts_established_connections(tmp_path: Path) -> None:
    hc = _load_healthcheck()
    listen = "   0: 00000000:1392 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1"
    est = "   1: 0100007F:D2F0 0100007F:1392 01 00000000:00000000 02:000A 00000000  1000 0 2"
    wait = "   2: 0100007F:D2F2 0100007F:1392 06 00000000:00000000 03:0001 00000000  1000 0 3"
    assert hc.established_count([TCP_HEADER, listen, wait]) == 0
    assert hc.established_count([TCP_HEADER, listen, est, wait]) == 1
    none = tmp_path / "tcp"
    none.write_text("\n".join([TCP_HEADER, listen]) + "\n")
    one = tmp_path / "tcp6"
    one.write_text("\n".join([TCP_HEADER, est]) + "\n")
    missing = str(tmp_path / "absent")
    assert hc.main([str(none), missing]) == 1
    assert hc.main([str(none), str(one), missing]) == 0
