"""Virtual keys: HS256 JWTs signed with the gateway's secret (CONTRACT.md, "Virtual keys").

A key carries ``aud=claude-gateway`` so Claude Code shows the quota headers; its status (active / suspended /
revoked) lives in the store by ``jti``, never in the token. Only the ``jti`` and a SHA-256 of the token are stored.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt

AUDIENCE = "claude-gateway"
_VERIFIED_CACHE_SIZE = 4096


class InvalidKey(Exception):
    """The token is not a valid virtual key; ``str(exc)`` says why (never includes the token)."""


@dataclass(frozen=True, slots=True)
class VirtualKeyClaims:
    course: str
    student: str
    jti: str
    issued_at: int
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    token: str
    claims: VirtualKeyClaims
    sha256: bytes


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_or_create_secret(data_dir: Path) -> bytes:
    """The signing secret kept in the data dir (created once, mode 0600) when GATEWAY_KEY_SECRET is not set."""
    path = data_dir / "key_secret"
    if path.exists():
        return path.read_text().strip().encode()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)  # atomic create-if-absent: two processes racing keep the first secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


class KeyCodec:
    """Issues and verifies virtual keys. Verified tokens are cached (bounded) because every request carries one."""

    def __init__(self, secret: bytes, issuer: str) -> None:
        if len(secret) < 32:
            raise ValueError("GATEWAY_KEY_SECRET must be at least 32 bytes")
        self._secret = secret
        self._issuer = issuer
        self._verified: OrderedDict[str, VirtualKeyClaims] = OrderedDict()

    def issue(self, course: str, student: str, *, ttl_s: int | None = None) -> IssuedKey:
        now = int(time.time())
        jti = "key_" + uuid.uuid4().hex
        payload: dict[str, object] = {
            "aud": AUDIENCE, "iss": self._issuer, "sub": student, "crs": course, "jti": jti, "iat": now,
        }
        if ttl_s is not None:
            payload["exp"] = now + ttl_s
        token = jwt.encode(payload, self._secret, algorithm="HS256")
        claims = VirtualKeyClaims(course, student, jti, now, now + ttl_s if ttl_s is not None else None)
        return IssuedKey(token, claims, token_sha256(token))

    def verify(self, token: str) -> VirtualKeyClaims:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at is not None and cached.expires_at <= time.time():
                del self._verified[token]
                raise InvalidKey("the key has expired")
            self._verified.move_to_end(token)
            return cached
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=["HS256"], audience=AUDIENCE, issuer=self._issuer,
                options={"require": ["aud", "iss", "sub", "jti", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidKey("the key has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidKey("the key's signature is not valid") from exc
        except jwt.PyJWTError as exc:
            raise InvalidKey("the key is not a valid gateway key") from exc
        course, student, jti = payload.get("crs"), payload.get("sub"), payload.get("jti")
        if not all(isinstance(v, str) and v for v in (course, student, jti)):
            raise InvalidKey("the key is not a valid gateway key")
        exp = payload.get("exp")
        claims = VirtualKeyClaims(str(course), str(student), str(jti), int(payload["iat"]),
                                  int(exp) if isinstance(exp, int | float) else None)
        self._verified[token] = claims
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def check(self, token: str) -> VirtualKeyClaims | None:
        """Verify without raising (for the leak scanner: is this string one of our keys?)."""
        try:
            return self.verify(token)
        except InvalidKey:
            return None
