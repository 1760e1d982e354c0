"""Who is calling: API keys (stored as sha256 digests) and optional JWT bearer tokens, per tenant and scope.

- API keys live in a YAML file (`defaults/api_keys.yaml` documents the format). Only digests are kept; a
  presented key is hashed and compared with EVERY stored digest through `hmac.compare_digest`, so neither the
  answer time nor an early exit says which digest (or how much of one) matched.
- A presented credential must be printable ASCII: a key with a non-breaking or full-width space (or any other
  non-ASCII or control character) is refused, never trimmed into a valid key.
- JWTs (PyJWT) are accepted when a secret (HS256) or a public key (RS256, needs the `cryptography` package) is
  configured. `exp` and `iat` are required and `exp - iat` may not exceed `jwt_max_lifetime_s`; `iss` / `aud`
  are checked when configured; the tenant comes from a claim (`tenant` by default) and must be one of the
  configured tenants; the scopes come from `scope` (space-separated, OAuth 2 style) or `scopes` (list).
- `refuse_placeholders` stops a production start with the shipped demo key or a weak / placeholder /
  low-entropy JWT secret (`secret_strength_problem` states the rule); no message ever quotes the secret.

Nothing here knows HTTP: it raises `Unauthenticated` / `Forbidden`; `guard.py` reads the headers.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.gateway.core.errors import Forbidden, Unauthenticated

DEFAULTS_DIR = Path(__file__).resolve().parents[1] / "defaults"
DEMO_KEYS_FILE = DEFAULTS_DIR / "api_keys.yaml"
DEMO_KEY = "kefu-demo-key-change-me"  # documented in defaults/api_keys.yaml; development only
DEMO_KEY_SHA256 = hashlib.sha256(DEMO_KEY.encode()).hexdigest()
SCOPES = frozenset({"chat", "admin"})
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "placeholder", "example", "replace-me", "todo")
PLACEHOLDER_SECRETS = {"secret", "password", "jwt-secret", "dev", "development", "test", "default", "kefu"}
MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 128  # estimated entropy of an HS256 secret in production (see secret_entropy_bits)
CREDENTIAL_RE = re.compile(r"^[\x20-\x7e]+$")  # printable ASCII: no control, non-ASCII or NBSP / U+3000 space


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    tenant: str  # tenant id (safe for metric labels)
    key_id: str  # first 12 hex of the key's sha256, or "jwt:<sub>"
    scopes: frozenset[str]  # {"chat"}, {"admin"}, {"chat","admin"}
    rate_per_s: float  # token-bucket refill rate for this key
    burst: int  # bucket size


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class KeyRecord(BaseModel):
    """One entry of the API keys file."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_RE.pattern)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[str] = Field(min_length=1)
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    name: str = ""

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {sorted(SCOPES)}")
        return v


def load_key_records(path: Path) -> list[KeyRecord]:
    """The keys in `path`; ValueError naming the file and the entry when it is malformed."""
    try:
        doc = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as e:
        raise ValueError(f"api keys file {path}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ValueError(f"api keys file {path}: not YAML ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"api keys file {path}: expected a mapping with a `keys:` list")
    records, seen = [], set()
    for i, raw in enumerate(doc["keys"]):
        try:
            rec = KeyRecord.model_validate(raw)
        except ValidationError as e:
            detail = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'entry'}: {x['msg']}" for x in e.errors())
            raise ValueError(f"api keys file {path}: keys[{i}]: {detail}") from None
        digest = rec.sha256.lower()
        if digest in seen:
            raise ValueError(f"api keys file {path}: keys[{i}]: the same sha256 appears twice")
        seen.add(digest)
        records.append(rec.model_copy(update={"sha256": digest}))
    return records


class Authenticator:
    """Turns a presented credential into a `Principal`, or raises `Unauthenticated`."""

    def __init__(
        self,
        records: Iterable[KeyRecord],
        *,
        default_rate_per_s: float,
        default_burst: int,
        jwt_secret: str = "",
        jwt_public_key: str = "",
        jwt_issuer: str = "",
        jwt_audience: str = "",
        jwt_max_lifetime_s: float = 3600.0,
        jwt_leeway_s: float = 30.0,
        jwt_tenant_claim: str = "tenant",
        jwt_tenants: Iterable[str] = (),
        jwt_rate_per_s: float | None = None,
        jwt_burst: int | None = None,
    ):
        records = list(records)
        self._keys: list[tuple[str, Principal]] = [
            (
                r.sha256,
                Principal(
                    tenant=r.tenant,
                    key_id=r.sha256[:12],
                    scopes=frozenset(r.scopes),
                    rate_per_s=r.rate_per_s or default_rate_per_s,
                    burst=r.burst or default_burst,
                ),
            )
            for r in records
        ]
        self._jwt_keys: dict[str, str] = {}
        if jwt_secret:
            self._jwt_keys["HS256"] = jwt_secret
        if jwt_public_key:
            if not jwt.algorithms.has_crypto:
                raise ValueError(
                    "KEFU_GATEWAY_JWT_PUBLIC_KEY_FILE: RS256 tokens need the `cryptography` package, "
                    "which is not installed"
                )
            self._jwt_keys["RS256"] = jwt_public_key
        self._issuer, self._audience = jwt_issuer or None, jwt_audience or None
        self._max_lifetime_s = jwt_max_lifetime_s
        self._leeway = jwt_leeway_s
        self._tenant_claim = jwt_tenant_claim
        # tenants a token may name: the configured list, else the tenants of the API keys file
        self._jwt_tenants = frozenset(jwt_tenants) or frozenset(r.tenant for r in records)
        if self._jwt_keys and not self._jwt_tenants:
            raise ValueError(
                "KEFU_GATEWAY_JWT_TENANTS: JWT is on but no tenant is configured (set the list, or add keys "
                "for the tenants to the API keys file)"
            )
        self._jwt_rate = jwt_rate_per_s or default_rate_per_s
        self._jwt_burst = jwt_burst or default_burst

    @property
    def jwt_enabled(self) -> bool:
        return bool(self._jwt_keys)

    def authenticate(self, token: str) -> Principal:
        """An API key or (when enabled) a JWT."""
        if not CREDENTIAL_RE.match(token):
            raise Unauthenticated(
                "unauthorized",
                "invalid credentials: only printable ASCII is allowed (no non-ASCII or non-breaking spaces, "
                "no control characters)",
            )
        if self._jwt_keys and looks_like_jwt(token):
            return self._from_jwt(token)
        return self._from_key(token)

    def _from_key(self, key: str) -> Principal:
        digest = sha256_hex(key)
        found: Principal | None = None
        for known, principal in self._keys:  # every digest compared: timing does not say which matched
            if hmac.compare_digest(digest, known):
                found = principal
        if found is None:
            raise Unauthenticated("unauthorized", "invalid API key")
        return found

    def _from_jwt(self, token: str) -> Principal:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise Unauthenticated("unauthorized", "invalid token: malformed header") from None
        key = self._jwt_keys.get(alg or "")
        if key is None:
            allowed = ", ".join(sorted(self._jwt_keys))
            raise Unauthenticated("unauthorized", f"invalid token: algorithm must be {allowed}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iat"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("unauthorized", "invalid token: expired") from None
        except jwt.PyJWTError as e:
            raise Unauthenticated("unauthorized", f"invalid token: {_jwt_reason(e)}") from None
        lifetime = int(claims["exp"]) - int(claims["iat"])  # both checked as integers by PyJWT
        if lifetime > self._max_lifetime_s:
            raise Unauthenticated(
                "unauthorized",
                f"invalid token: lifetime (exp - iat) of {lifetime} s is over the limit of "
                f"{self._max_lifetime_s:g} s",
            )
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
            raise Unauthenticated(
                "unauthorized",
                f"invalid token: claim {self._tenant_claim!r} must be a tenant id (letters, digits, _ . -)",
            )
        if tenant not in self._jwt_tenants:
            raise Unauthenticated("unauthorized", f"invalid token: tenant {tenant!r} is not configured")
        scopes = claims.get("scope", claims.get("scopes", ""))
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise Unauthenticated("unauthorized", "invalid token: `scope` must be a string or a list")
        sub = claims.get("sub")
        sub = sub if isinstance(sub, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,64}", sub) else "anonymous"
        return Principal(
            tenant=tenant,
            key_id=f"jwt:{sub}",
            scopes=frozenset(scopes) & SCOPES,
            rate_per_s=self._jwt_rate,
            burst=self._jwt_burst,
        )


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise Forbidden("forbidden", f"this credential lacks the {scope} scope")


def looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2]) and token.startswith("eyJ")


def _jwt_reason(e: Exception) -> str:
    if isinstance(e, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(e, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(e, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"missing claim {e.claim!r}"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "not valid yet"
    if isinstance(e, jwt.InvalidIssuedAtError):
        return "`iat` must be an integer"
    return "malformed"


# ── placeholder secrets ─────────────────────────────────────────────────────────────────────────────


def is_placeholder_secret(secret: str) -> bool:
    low = secret.strip().lower()
    return low in PLACEHOLDER_SECRETS or any(m in low for m in PLACEHOLDER_MARKERS)


def _shortest_period(text: str) -> int:
    """The length of the shortest unit whose repetition spells `text` ("abcabcab" -> 3), by the KMP prefix
    function; len(text) when nothing repeats."""
    prefix = [0] * len(text)
    for i in range(1, len(text)):
        k = prefix[i - 1]
        while k and text[i] != text[k]:
            k = prefix[k - 1]
        prefix[i] = k + (text[i] == text[k])
    return len(text) - (prefix[-1] if text else 0)


def secret_entropy_bits(secret: str) -> float:
    """A conservative estimate of a secret's entropy: a secret that is a repeated unit ("aaaa...",
    "kefukefu...", "abcabcab") counts as that unit alone, and the unit counts length x its per-character
    Shannon entropy (from its own character frequencies). A random `secrets.token_urlsafe(32)` scores about
    200 bits, `a` x 32 scores 0, a repeated 8-letter word at most 24."""
    period = _shortest_period(secret)
    unit = secret[:period] if period <= len(secret) // 2 else secret
    if not unit:
        return 0.0
    n = len(unit)
    per_char = -sum(c / n * math.log2(c / n) for c in Counter(unit).values())
    return max(0.0, per_char * n)  # never -0.0


def secret_strength_problem(secret: str) -> str | None:
    """Why `secret` is too weak to sign HS256 tokens in production, or None. The rule: not a placeholder, at
    least 32 bytes (RFC 7518 3.2: a key as long as the hash), and at least 128 bits by
    `secret_entropy_bits` (so no single repeated character or repeated word). The reason never quotes the
    secret."""
    if is_placeholder_secret(secret):
        return "a placeholder value is refused in production"
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return (
            f"{size} bytes is too short for HS256 in production (at least {MIN_SECRET_BYTES}; "
            f"e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    bits = secret_entropy_bits(secret)
    if bits < MIN_SECRET_BITS:
        return (
            f"too little entropy for HS256 in production (estimated {bits:.0f} bits, at least {MIN_SECRET_BITS}: "
            "no repeated character or word; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    return None


def refuse_placeholders(
    api_keys_file: Path, records: Iterable[KeyRecord], jwt_enabled: bool, jwt_secret: str, jwt_public_key: str
) -> None:
    """ValueError naming the setting when production would run on demo keys or a weak JWT secret."""
    if Path(api_keys_file).resolve() == DEMO_KEYS_FILE:
        raise ValueError(
            "KEFU_GATEWAY_API_KEYS_FILE: production refuses the shipped demo keys file "
            f"({DEMO_KEYS_FILE}); point it at your own keys file"
        )
    if any(hmac.compare_digest(r.sha256, DEMO_KEY_SHA256) for r in records):
        raise ValueError(
            f"KEFU_GATEWAY_API_KEYS_FILE: {api_keys_file} holds the demo key's digest "
            "(kefu-demo-key-change-me); remove it in production"
        )
    if not jwt_enabled:
        return
    if not jwt_secret and not jwt_public_key:
        raise ValueError(
            "KEFU_GATEWAY_JWT_SECRET: JWT is enabled but neither a secret nor KEFU_GATEWAY_JWT_PUBLIC_KEY_FILE is set"
        )
    problem = secret_strength_problem(jwt_secret) if jwt_secret else None
    if problem:
        raise ValueError(f"KEFU_GATEWAY_JWT_SECRET: {problem}")
