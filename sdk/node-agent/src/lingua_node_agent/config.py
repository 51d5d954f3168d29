"""Agent configuration: one dataclass, filled from a TOML file and then from CLI flags.

The dataclass is what the SDK takes; the TOML and flag parsing live here too so that the
CLI, the simulator and tests all share one notion of "a valid setting" (e.g. the
``"en,zh;en,ja,zh"`` syntax of language sets).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingua_node_agent.errors import ConfigError
from lingua_node_agent.jsonlog import parse_level

DEFAULT_GATEWAY = "ws://127.0.0.1:5010/ws/node"
DEFAULT_LANGS = ["en", "zh"]
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Behaviour profiles. "standard" is this SDK's agent (acks, drains, backs off, announces its
# pools); "lingua" reproduces lingua_1's own node agent (Electron), defects included, so the
# scheduler can be tested against what real nodes do (see README "Profiles").
STANDARD = "standard"
LINGUA = "lingua"
PROFILES = (STANDARD, LINGUA)
DEFAULT_HEARTBEAT_MS = {STANDARD: 1000, LINGUA: 15000}


@dataclass
class AgentConfig:
    """Everything one node agent needs; every field has a working default.

    ``asr_langs`` / ``semantic_langs`` default to the union of ``lang_sets`` (or to
    ``en, zh`` when no set is given either), so ``AgentConfig()`` is a valid node.
    ``gateway`` is one URL or several separated by commas (gateway replicas): the agent
    connects to the first and moves to the next one each time a connection ends or fails,
    so a draining replica's 1012 sends it to another.

    ``profile`` is ``"standard"`` or ``"lingua"`` (behave exactly as lingua's own agent).
    ``heartbeat_interval_ms`` left at ``None`` means the profile's default (1000 / 15000).
    """

    gateway: str = DEFAULT_GATEWAY
    # Node token (JWT) sent as ``Authorization: Bearer`` when the gateway requires auth; the
    # CLI reads it from --token or LINGUA_NODE_TOKEN. Never logged.
    token: str | None = field(default=None, repr=False)
    node_id: str | None = None
    state_file: Path | None = None
    region: str | None = None
    gpu_tier: str | None = None
    lang_sets: list[list[str]] | None = None
    asr_langs: list[str] | None = None
    semantic_langs: list[str] | None = None
    tts_langs: list[str] = field(default_factory=list)
    capacity: int = 4
    heartbeat_interval_ms: int | None = None
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    profile: str = STANDARD
    # Import spec ("package.module:attr") of the job handler, for the CLI and TOML; SDK users
    # pass a handler object to NodeAgent instead.
    handler: str | None = None
    # Connection tuning: rarely changed, so they have no CLI flag (TOML only).
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 10.0
    register_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 5.0
    # lingua profile only: the delay before its one and only reconnect (lingua waits 5 s)
    reconnect_delay_s: float = 5.0
    version: str | None = None
    platform: str | None = None

    @property
    def lingua(self) -> bool:
        """True under the ``lingua`` profile."""
        return self.profile == LINGUA

    def effective_heartbeat_interval_ms(self) -> int:
        """The configured interval, else the profile's default (15 s for lingua's agent)."""
        if self.heartbeat_interval_ms is not None:
            return self.heartbeat_interval_ms
        return DEFAULT_HEARTBEAT_MS.get(self.profile, DEFAULT_HEARTBEAT_MS[STANDARD])

    def gateway_urls(self) -> list[str]:
        """The gateway URLs in the order they are tried."""
        return parse_gateways(self.gateway)

    def effective_asr_langs(self) -> list[str]:
        return list(self.asr_langs) if self.asr_langs else self._default_langs()

    def effective_semantic_langs(self) -> list[str]:
        return list(self.semantic_langs) if self.semantic_langs else self._default_langs()

    def _default_langs(self) -> list[str]:
        if self.lang_sets:
            return sorted({lang for group in self.lang_sets for lang in group})
        return list(DEFAULT_LANGS)


def parse_langs(text: str) -> list[str]:
    """``"en, zh,ja"`` -> ``["en", "zh", "ja"]`` (order kept, blanks dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_gateways(text: str) -> list[str]:
    """``"ws://a/ws/node, ws://b/ws/node"`` -> both URLs (order kept, blanks dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _as_gateway(value: Any) -> str:
    """A TOML ``gateway`` may be one URL string or a list of them."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return ",".join(value)
    raise ConfigError("gateway must be a ws:// URL, a comma-separated list or a list of URLs")


def parse_lang_sets(text: str) -> list[list[str]]:
    """``"en,zh;en,ja,zh"`` -> ``[["en", "zh"], ["en", "ja", "zh"]]``."""
    sets = [parse_langs(group) for group in text.split(";")]
    sets = [s for s in sets if s]
    if not sets:
        raise ConfigError(f"no language set in {text!r} (expected e.g. 'en,zh;en,ja,zh')")
    return sets


def _as_langs(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return parse_langs(value)
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    raise ConfigError(f"{key} must be a list of language codes or a 'en,zh' string")


def _as_lang_sets(value: Any) -> list[list[str]]:
    if isinstance(value, str):
        return parse_lang_sets(value)
    if isinstance(value, list) and all(isinstance(g, list) for g in value):
        return [_as_langs("lang_sets", g) for g in value]
    raise ConfigError("lang_sets must be a list of lists or a 'en,zh;en,ja,zh' string")


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
_CONVERTERS: dict[str, Any] = {
    "gateway": _as_gateway,
    "lang_sets": _as_lang_sets,
    "asr_langs": lambda v: _as_langs("asr_langs", v),
    "semantic_langs": lambda v: _as_langs("semantic_langs", v),
    "tts_langs": lambda v: _as_langs("tts_langs", v),
    "state_file": Path,
}
_NUMBERS = {
    "capacity": int,
    "heartbeat_interval_ms": int,
    "drain_timeout_s": float,
    "backoff_base_s": float,
    "backoff_cap_s": float,
    "register_timeout_s": float,
    "open_timeout_s": float,
    "close_timeout_s": float,
    "reconnect_delay_s": float,
}


def config_from_mapping(values: dict[str, Any], base: AgentConfig | None = None) -> AgentConfig:
    """Overlay ``values`` (TOML keys or flag values; ``None`` means "not given") on ``base``.

    Unknown keys are an error, not a silent no-op: a typo such as ``capcity = 8`` in a TOML
    file should stop the agent rather than run it with the default.
    """
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {raw_key!r}")
        if value is None:
            continue
        if key in _CONVERTERS:
            value = _CONVERTERS[key](value)
        elif key in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{raw_key} must be a number, got {value!r}")
            value = _NUMBERS[key](value)
        elif key in ("ping_interval_s", "ping_timeout_s"):
            value = float(value) if value else None
        elif not isinstance(value, str):
            raise ConfigError(f"{raw_key} must be a string, got {value!r}")
        changes[key] = value
    cfg = dataclasses.replace(base or AgentConfig(), **changes)
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: AgentConfig) -> None:
    """Local sanity checks that ``derive_capabilities`` does not cover."""
    urls = cfg.gateway_urls()
    if not urls:
        raise ConfigError("gateway must name at least one ws:// or wss:// URL")
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"gateway must be a ws:// or wss:// URL, got {url!r}")
    if cfg.drain_timeout_s < 0:
        raise ConfigError("drain_timeout_s must be >= 0")
    if cfg.backoff_base_s <= 0 or cfg.backoff_cap_s < cfg.backoff_base_s:
        raise ConfigError("need 0 < backoff_base_s <= backoff_cap_s")
    if cfg.register_timeout_s <= 0 or cfg.open_timeout_s <= 0:
        raise ConfigError("register_timeout_s and open_timeout_s must be > 0")
    check_profile(cfg)
    try:
        parse_level(cfg.log_level)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_profile(cfg: AgentConfig) -> None:
    """The profile's name, the heartbeat interval and the reconnect delay (the lingua profile
    does not announce its interval, so the gateway's own check never sees it)."""
    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {cfg.profile!r}")
    hb = cfg.effective_heartbeat_interval_ms()
    if not 100 <= hb <= 600_000:
        raise ConfigError(f"heartbeat_interval_ms must be 100..600000, got {hb}")
    if cfg.reconnect_delay_s < 0:
        raise ConfigError("reconnect_delay_s must be >= 0")


def load_toml(path: str | Path, base: AgentConfig | None = None) -> AgentConfig:
    """Read a flat TOML file (keys as in :class:`AgentConfig`, ``-`` or ``_`` alike).

    Settings may instead sit under an ``[agent]`` table (then only that table is read), so
    the file can share a document with other tools' tables.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    if isinstance(data.get("agent"), dict):
        data = data["agent"]
    return config_from_mapping(data, base)
