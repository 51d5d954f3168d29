"""Credentials of nodes and clients: signed JWTs, verified once when a WebSocket connects.

Two kinds, told apart by their audience so one can never stand in for the other:

* a **node token** (``aud = lingua-node``) names the node it was issued to (``sub`` = node id);
  the gateway refuses a connection whose ``node_register`` / heartbeat names another node;
* a **client token** (``aud = lingua-client``) is short-lived: ``exp - iat`` may not exceed
  ``LINGUA_AUTH_CLIENT_MAX_TTL_S``.

The algorithm is fixed by configuration (``LINGUA_AUTH_ALGORITHM``) and passed to PyJWT as
the only one allowed, so a token's own ``alg`` header (``none``, or HS256 signed with a
public key) is never trusted. ``python -m lingua_shared.auth mint ...`` issues tokens for
development.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt

from lingua_shared.errors import Unauthorized
from lingua_shared.settings import Settings

Kind = Literal["node", "client"]
AUDIENCE: dict[Kind, str] = {"node": "lingua-node", "client": "lingua-client"}
ISSUER = "lingua-scheduler"
SYMMETRIC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Principal:
    kind: Kind
    subject: str  # node id (node tokens) or client id (client tokens)
    expires_at: int


class AuthConfigError(ValueError):
    """Authentication is on but cannot work as configured (raised at start-up)."""


def _verification_key(settings: Settings) -> str | bytes:
    alg = settings.auth_algorithm
    if alg in SYMMETRIC:
        if settings.auth_secret is None:
            raise AuthConfigError(f"LINGUA_AUTH_SECRET is required for {alg}")
        secret = settings.auth_secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise AuthConfigError(f"LINGUA_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return secret
    if alg in ASYMMETRIC:
        if not jwt.algorithms.has_crypto:
            raise AuthConfigError(f"{alg} needs the 'cryptography' package: pyjwt[crypto]")
        if not settings.auth_public_key_file:
            raise AuthConfigError(f"LINGUA_AUTH_PUBLIC_KEY_FILE is required for {alg}")
        return Path(settings.auth_public_key_file).read_bytes()
    raise AuthConfigError(f"LINGUA_AUTH_ALGORITHM {alg!r} is not supported")


class TokenVerifier:
    """Checks tokens against one algorithm and key; built at start-up (fails fast)."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.auth_algorithm
        self.key = _verification_key(settings)
        self.client_max_ttl_s = settings.auth_client_max_ttl_s
        self.leeway = settings.auth_leeway_s

    def verify(self, token: str | None, kind: Kind) -> Principal:
        """The token's principal, or :class:`Unauthorized` saying why (never the token)."""
        if not token:
            raise Unauthorized(f"a {kind} token is required (Authorization: Bearer, or ?token=)")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=AUDIENCE[kind],
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(f"the {kind} token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"not a {kind} token") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"token algorithm refused (only {self.algorithm})") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid {kind} token: {exc.__class__.__name__}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 64:
            raise Unauthorized(f"invalid {kind} token: bad subject")
        exp, iat = int(claims["exp"]), int(claims["iat"])
        if kind == "client" and exp - iat > self.client_max_ttl_s:
            raise Unauthorized(
                f"client tokens may live at most {self.client_max_ttl_s} s; this one "
                f"lives {exp - iat} s"
            )
        return Principal(kind, subject, exp)


def mint(
    kind: Kind, subject: str, ttl_s: int, algorithm: str, signing_key: str | bytes, now: int = 0
) -> str:
    """A token for ``subject`` (development and tests; production issues its own)."""
    iat = now or int(time.time())
    claims = {
        "sub": subject,
        "aud": AUDIENCE[kind],
        "iss": ISSUER,
        "iat": iat,
        "exp": iat + ttl_s,
    }
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token of a handshake: ``Authorization: Bearer <t>`` or, for browsers (which
    cannot set headers on a WebSocket), the ``token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lingua_shared.auth",
        description="Mint a node or client token with the key of LINGUA_AUTH_SECRET "
        "(HS*) or --private-key (RS*/ES*/EdDSA).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mint")
    m.add_argument("kind", choices=("node", "client"))
    m.add_argument("subject", help="node id (node tokens) or client id (client tokens)")
    m.add_argument("--ttl", type=int, help="seconds (default: node 30 days, client 15 min)")
    m.add_argument("--private-key", help="PEM private key file for asymmetric algorithms")
    args = ap.parse_args(argv)
    settings = Settings()
    alg = settings.auth_algorithm
    if args.private_key:
        key: str | bytes = Path(args.private_key).read_bytes()
    elif alg in SYMMETRIC and settings.auth_secret is not None:
        key = settings.auth_secret.get_secret_value()
    else:
        print(f"set LINGUA_AUTH_SECRET (for {alg}) or pass --private-key", file=sys.stderr)
        return 2
    ttl = args.ttl or (30 * 86_400 if args.kind == "node" else 900)
    print(mint(args.kind, args.subject, ttl, alg, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
