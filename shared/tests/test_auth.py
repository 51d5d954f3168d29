"""Node and client tokens (``lingua_shared.auth``): what is accepted, and every way a token is
refused — with the reason, never the token, in the message."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from lingua_shared.auth import (
    AuthConfigError,
    TokenVerifier,
    bearer_token,
    main,
    mint,
)
from lingua_shared.errors import Unauthorized
from lingua_shared.settings import Settings

SECRET = "s" * 64
OTHER = "o" * 64


def settings(**kw: object) -> Settings:
    return Settings(auth="on", auth_secret=SECRET, **kw)  # type: ignore[arg-type]


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(settings())


def refused(verifier: TokenVerifier, token: str | None, kind: str = "node") -> str:
    with pytest.raises(Unauthorized) as exc:
        verifier.verify(token, kind)  # type: ignore[arg-type]
    assert exc.value.close_code == 1008
    if token:
        assert token not in exc.value.message
    return exc.value.message


def test_a_node_token_names_its_node(verifier: TokenVerifier) -> None:
    p = verifier.verify(mint("node", "node-1", 60, "HS256", SECRET), "node")
    assert (p.kind, p.subject) == ("node", "node-1") and p.expires_at > time.time()


def test_a_client_token_is_accepted_on_the_client_side_only(verifier: TokenVerifier) -> None:
    token = mint("client", "alice", 600, "HS256", SECRET)
    assert verifier.verify(token, "client").subject == "alice"
    assert "not a node token" in refused(verifier, token, "node")
    assert "not a client token" in refused(
        verifier, mint("node", "n", 60, "HS256", SECRET), "client"
    )


def test_missing_expired_and_forged_tokens_are_refused(verifier: TokenVerifier) -> None:
    assert "required" in refused(verifier, None)
    assert "required" in refused(verifier, "")
    old = mint("node", "n", 60, "HS256", SECRET, now=int(time.time()) - 3600)
    assert "expired" in refused(verifier, old)
    assert "invalid" in refused(verifier, mint("node", "n", 60, "HS256", OTHER))  # bad signature
    assert "invalid" in refused(verifier, "not.a.token")


def test_the_algorithm_comes_from_configuration_never_from_the_token(
    verifier: TokenVerifier,
) -> None:
    def unsigned(claims: dict[str, object]) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."

    now = int(time.time())
    claims = {
        "sub": "n",
        "aud": "lingua-node",
        "iss": "lingua-scheduler",
        "iat": now,
        "exp": now + 60,
    }
    assert "refused" in refused(verifier, unsigned(claims))  # alg=none
    assert "refused" in refused(verifier, jwt.encode(claims, SECRET, algorithm="HS512"))


def test_required_claims_and_client_lifetime(verifier: TokenVerifier) -> None:
    now = int(time.time())
    no_iat = jwt.encode(
        {"sub": "n", "aud": "lingua-node", "iss": "lingua-scheduler", "exp": now + 60}, SECRET
    )
    assert "invalid" in refused(verifier, no_iat)
    wrong_issuer = jwt.encode(
        {"sub": "n", "aud": "lingua-node", "iss": "x", "iat": now, "exp": now + 60}, SECRET
    )
    assert "invalid" in refused(verifier, wrong_issuer)
    long_client = mint("client", "c", 7_200, "HS256", SECRET)
    assert "at most 3600 s" in refused(verifier, long_client, "client")
    assert verifier.verify(mint("node", "n", 30 * 86_400, "HS256", SECRET), "node")  # nodes: long


def test_configuration_errors_fail_fast() -> None:
    with pytest.raises(AuthConfigError, match="LINGUA_AUTH_SECRET is required"):
        TokenVerifier(Settings(auth="on"))
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        TokenVerifier(Settings(auth="on", auth_secret="short"))  # type: ignore[arg-type]
    with pytest.raises(AuthConfigError, match="not supported"):
        TokenVerifier(settings(auth_algorithm="none"))


def test_auth_is_on_outside_development_unless_switched_off() -> None:
    assert not Settings().auth_enabled  # development profile, auto
    assert Settings(profile="production").auth_enabled
    assert not Settings(profile="production", auth="off").auth_enabled
    assert Settings(auth="on").auth_enabled
    with pytest.raises(ValueError, match="on, off or auto"):
        _ = Settings(auth="maybe").auth_enabled


def test_origin_allowlist_defaults() -> None:
    assert Settings().allowed_origins() is None  # development: any
    assert Settings(profile="production").allowed_origins() == set()  # only no-Origin clients
    assert Settings(
        ws_allowed_origins="https://a.example/, https://b.example"
    ).allowed_origins() == {
        "https://a.example",
        "https://b.example",
    }
    assert Settings(profile="production", ws_allowed_origins="*").allowed_origins() is None


def test_bearer_token_from_header_or_query() -> None:
    assert bearer_token("Bearer abc", None) == "abc"
    assert bearer_token("bearer  abc ", "q") == "abc"
    assert bearer_token("Basic abc", "q") == "q"
    assert bearer_token(None, "q") == "q"
    assert bearer_token(None, None) is None


def test_mint_cli_prints_a_token_the_verifier_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], verifier: TokenVerifier
) -> None:
    monkeypatch.setenv("LINGUA_AUTH_SECRET", SECRET)
    assert main(["mint", "client", "bob", "--ttl", "300"]) == 0
    token = capsys.readouterr().out.strip()
    assert verifier.verify(token, "client").subject == "bob"
    monkeypatch.delenv("LINGUA_AUTH_SECRET")
    assert main(["mint", "node", "n1"]) == 2
