"""The gateway's edge: authentication, per-key rate limits, input limits and normalisation, error rendering,
PII-free logs, and the shared state (sessions, response cache) in memory or Redis.

    edge = Edge(EdgeSettings(), metrics)
    edge.install(app)                                   # request ids, 413, uniform errors, log redaction
    @app.post("/v1/chat")
    async def chat(body: ChatIn, principal: Principal = Depends(edge.require("chat"))):
        text = edge.check_texts([body.text], field="text")[0]
    app.include_router(create_admin_router(store, embedder, auth=edge.admin_dependency()), prefix="/admin/faq")

Credentials: `X-API-Key: <key>` or `Authorization: Bearer <key or JWT>`. 401 `unauthorized` without valid
credentials (with `WWW-Authenticate`), 403 `forbidden` without the route's scope, then 429 `rate_limited` with
`Retry-After` when the key's token bucket is empty. With `redis_url` set, every replica shares the buckets,
sessions and cache through Redis.

Order of checks: `install()` puts an authentication gate (`AuthGate`) in front of every route that depends on
`require(scope)` or `admin_dependency()` (all of /v1 and /admin/faq), so credentials, scope and the key's rate
limit are checked BEFORE the body is read or parsed: an unauthenticated request with a broken or huge body gets 401, never 400 (only a
declared Content-Length over the body limit is refused first, with 413, without reading). Failed
authentications are throttled per client address (`auth_throttle.py`: 429 `auth_throttled` + Retry-After);
the route dependencies (`require`, `admin_dependency`) reuse the gate's principal and check the route's own
scope.

The FAQ admin router renders its own errors from its own exception types (`services/faq/admin.py` STATUS),
and maps any other exception to 500, so it gets `admin_dependency()`, which raises those types; both render
the same uniform body. Its 429 is an `HTTPException` (status 429 and `Retry-After`) unless the admin router
maps an error with code `rate_limited`, which is then used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.gateway.api.http import install_http
from services.gateway.core.errors import InvalidInput, TooManyRequests, Unauthenticated
from services.gateway.edge.auth_gate import AuthGate
from services.gateway.edge.auth_throttle import FailedAuthThrottle, client_address, parse_networks, throttled
from services.gateway.edge.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from services.gateway.edge.redaction import install_log_redaction
from services.gateway.edge.security import (
    DEFAULTS_DIR,
    DEMO_KEY_SHA256,
    TENANT_RE,
    Authenticator,
    Principal,
    load_key_records,
    refuse_placeholders,
    require_scope,
)
from services.gateway.edge.textnorm import TextNormalizer
from services.gateway.metrics import GatewayMetrics
from services.gateway.state.cache import MemoryCache, RedisCache, ResponseCache
from services.gateway.state.redis_conn import connect
from services.gateway.state.sessions import MemorySessionStore, RedisSessionStore, SessionStore

log = logging.getLogger(__name__)

_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key of the gateway")
_BEARER = HTTPBearer(auto_error=False, description="an API key, or a JWT when the gateway accepts them")
ApiKeyHeader = Annotated[str | None, Security(_API_KEY)]
BearerHeader = Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]


class EdgeSettings(BaseSettings):
    """Security, limits and shared-state settings; each field is overridable by `KEFU_GATEWAY_<NAME>`."""

    # hide_input_in_errors: a refused setting's error never echoes the input (secrets included)
    model_config = SettingsConfigDict(env_prefix="KEFU_GATEWAY_", extra="ignore", hide_input_in_errors=True)

    mode: Literal["development", "production"] = Field(
        "development",
        description="production refuses to start with the demo API key (file or digest) or a weak JWT secret",
    )
    api_keys_file: Path = Field(
        DEFAULTS_DIR / "api_keys.yaml",
        description="YAML `keys: [{tenant, sha256, scopes, rate_per_s, burst}]` (format in the default file, "
        "which holds only the development demo key)",
    )
    default_rate_per_s: float = Field(10.0, gt=0, description="token refill rate of keys that set none")
    default_burst: int = Field(20, ge=1, description="bucket size of keys that set none")
    jwt_enabled: bool | None = Field(
        None, description="accept JWT bearer tokens; unset = on when a secret or public key is configured"
    )
    jwt_secret: SecretStr = Field(
        SecretStr(""),
        description="HS256 secret; production needs at least 32 bytes and an estimated 128 bits of entropy "
        "(no repeated character or word): e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key for RS256 tokens (needs the `cryptography` package)"
    )
    jwt_issuer: str = Field("", description="required `iss` claim; empty = not checked")
    jwt_audience: str = Field("", description="required `aud` claim; empty = not checked")
    jwt_max_lifetime_s: float = Field(
        3600.0,
        gt=0,
        description="longest token lifetime accepted (`exp - iat`); `exp` and `iat` are required",
    )
    jwt_leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp / nbf / iat")
    jwt_tenant_claim: str = Field("tenant", description="claim naming the tenant (letters, digits, _ . -)")
    jwt_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="tenants a token may name (comma-separated or a JSON list); empty = the tenants of the "
        "API keys file; a token naming any other tenant is refused",
    )
    jwt_rate_per_s: float | None = Field(
        None, gt=0, description="bucket refill of JWT callers (per tenant+sub)"
    )
    jwt_burst: int | None = Field(None, ge=1, description="bucket size of JWT callers")
    redis_url: SecretStr = Field(
        SecretStr(""),
        description="redis://[:password@]host:port/db: rate limits, sessions, cache and the failed-auth "
        "throttle shared by replicas; empty = memory (a secret: it may hold a password)",
    )
    redis_timeout_s: float = Field(
        0.25, gt=0, description="per-command Redis timeout (then degrade, not wait)"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body (413 above)")
    body_limit_exempt_prefixes: tuple[str, ...] = Field(
        ("/admin/faq/",), description="paths whose routes enforce their own body limit (the FAQ admin API)"
    )
    max_text_chars: int = Field(512, ge=1, description="longest text after normalisation (400 above)")
    max_list_size: int = Field(32, ge=1, description="most texts in one request (400 above)")
    simplify_chinese: bool = Field(
        True,
        description="convert traditional Chinese to simplified (OpenCC t2s) before the models, the FAQ search and "
        "masking: the shipped models and knowledge base are simplified; false for a traditional-Chinese deployment",
    )
    sensitive_words_file: Path = Field(
        DEFAULTS_DIR / "sensitive_words.txt",
        description="masked words, one a line (format in the default file); each matched character becomes *",
    )
    rate_limit_max_keys: int = Field(100_000, ge=1, description="buckets kept in memory (LRU)")
    auth_fail_burst: int = Field(
        10, ge=1, description="refused credentials a client address may send at once before it is throttled"
    )
    auth_fail_rate_per_s: float = Field(
        0.1,
        gt=0,
        description="refill of that allowance (per second); an address that used it up gets 429 "
        "auth_throttled on protected routes, valid key or not, until one attempt is back",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies / load balancers whose X-Forwarded-For names the client "
        "(comma-separated or a JSON list); empty = the socket peer is the client",
    )
    session_max: int = Field(
        10_000, ge=1, description="sessions kept in memory (LRU); Redis keeps all until TTL"
    )
    session_max_turns: int = Field(10, ge=1, description="turns kept per session (oldest dropped)")
    session_ttl_s: float = Field(1800.0, gt=0, description="a session expires this long after its last turn")
    cache_max_entries: int = Field(10_000, ge=1, description="answers kept in the memory cache (LRU)")
    cache_ttl_s: float = Field(300.0, gt=0, description="seconds an answer stays cached")

    @field_validator("jwt_tenants", "trusted_proxies", mode="before")
    @classmethod
    def _list(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [x.strip() for x in text.split(",") if x.strip()]
        return v

    @field_validator("jwt_tenants")
    @classmethod
    def _tenants(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not TENANT_RE.match(t)]
        if bad:
            raise ValueError(f"not tenant ids (letters, digits, _ . -, at most 64): {bad}")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        parse_networks(v)
        return v

    @property
    def jwt_on(self) -> bool:
        if self.jwt_enabled is None:
            return bool(self.jwt_secret.get_secret_value() or self.jwt_public_key_file)
        return self.jwt_enabled

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> EdgeSettings:
        if self.jwt_on and not (self.jwt_secret.get_secret_value() or self.jwt_public_key_file):
            raise ValueError(
                "KEFU_GATEWAY_JWT_ENABLED: JWT is on but neither KEFU_GATEWAY_JWT_SECRET nor "
                "KEFU_GATEWAY_JWT_PUBLIC_KEY_FILE is set"
            )
        if self.mode == "production":
            records = load_key_records(self.api_keys_file)
            refuse_placeholders(
                self.api_keys_file,
                records,
                self.jwt_on,
                self.jwt_secret.get_secret_value(),
                self._public_key(),
            )
        return self

    def _public_key(self) -> str:
        if not self.jwt_public_key_file:
            return ""
        try:
            return Path(self.jwt_public_key_file).read_text("utf-8")
        except OSError as e:
            raise ValueError(
                f"KEFU_GATEWAY_JWT_PUBLIC_KEY_FILE: cannot read {self.jwt_public_key_file} ({e})"
            ) from e


class Edge:
    """Everything between the socket and the route handlers (see the module docstring)."""

    def __init__(self, settings: EdgeSettings, metrics: GatewayMetrics, redis: Any = None):
        s = self.settings = settings
        self.metrics = metrics
        records = load_key_records(s.api_keys_file)
        if s.mode == "production":  # also when settings were built without validation
            refuse_placeholders(
                s.api_keys_file, records, s.jwt_on, s.jwt_secret.get_secret_value(), s._public_key()
            )
        elif any(r.sha256 == DEMO_KEY_SHA256 for r in records):
            log.warning("development mode: the demo API key is accepted (never in production)")
        self.auth = Authenticator(
            records,
            default_rate_per_s=s.default_rate_per_s,
            default_burst=s.default_burst,
            jwt_secret=s.jwt_secret.get_secret_value() if s.jwt_on else "",
            jwt_public_key=s._public_key() if s.jwt_on else "",
            jwt_issuer=s.jwt_issuer,
            jwt_audience=s.jwt_audience,
            jwt_max_lifetime_s=s.jwt_max_lifetime_s,
            jwt_leeway_s=s.jwt_leeway_s,
            jwt_tenant_claim=s.jwt_tenant_claim,
            jwt_tenants=s.jwt_tenants,
            jwt_rate_per_s=s.jwt_rate_per_s,
            jwt_burst=s.jwt_burst,
        )
        self.normalizer = TextNormalizer.from_file(s.sensitive_words_file, s.simplify_chinese)
        self._owns_redis = redis is None and bool(s.redis_url.get_secret_value())
        if self._owns_redis:
            redis = connect(s.redis_url.get_secret_value(), timeout_s=s.redis_timeout_s)
        self.redis = redis
        self.limiter: RateLimiter
        self.sessions: SessionStore
        self.cache: ResponseCache
        if redis is not None:
            self.limiter = RedisRateLimiter(redis, fallback=MemoryRateLimiter(s.rate_limit_max_keys))
            self.sessions = RedisSessionStore(redis, s.session_max_turns, s.session_ttl_s)
            self.cache = RedisCache(redis, s.cache_ttl_s)
        else:
            self.limiter = MemoryRateLimiter(s.rate_limit_max_keys)
            self.sessions = MemorySessionStore(s.session_max, s.session_max_turns, s.session_ttl_s)
            self.cache = MemoryCache(s.cache_max_entries, s.cache_ttl_s)
        self.trusted_proxies = parse_networks(s.trusted_proxies)
        self.auth_throttle = FailedAuthThrottle(
            s.auth_fail_rate_per_s, s.auth_fail_burst, redis=redis, max_addresses=s.rate_limit_max_keys
        )

    # ── HTTP ────────────────────────────────────────────────────────────────────────────────────────

    def install(self, app: FastAPI) -> None:
        """Request-id middleware (X-Request-ID in/out; request.state.request_id), body-size limit (413 before
        reading more than max_body_bytes), exception handlers rendering GatewayError / RequestValidationError (400
        naming the field) / HTTPException / any Exception (500, logged with traceback, body without details) in
        the uniform error body, and PII-redacting log configuration (again at ASGI start-up)."""
        # added first = innermost: after the request id and the declared-size 413, before the body is read
        app.add_middleware(AuthGate, admit=self.admit)
        install_http(app, self.settings.max_body_bytes, self.settings.body_limit_exempt_prefixes)
        install_log_redaction()

    def client_address(self, request: Request) -> str:
        """The socket peer, or the X-Forwarded-For client when the peer is a trusted proxy."""
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.getlist("x-forwarded-for"), self.trusted_proxies)

    async def authenticate(
        self, request: Request, api_key: str | None, bearer: HTTPAuthorizationCredentials | None
    ) -> Principal:
        """The caller's principal; `Unauthenticated`, or 429 `auth_throttled` while the client address is blocked
        for too many refused credentials (whatever it sends then)."""
        address = self.client_address(request)
        blocked = await self.auth_throttle.blocked_for(address)
        if blocked > 0:
            raise throttled(blocked)
        token = api_key
        if not token and bearer is not None:  # the raw header: FastAPI's parser strips non-ASCII spaces too
            token = request.headers.get("authorization", "").partition(" ")[2] or bearer.credentials
        if not token:
            if request.headers.get("authorization"):
                raise Unauthenticated("unauthorized", "Authorization must be 'Bearer <key or token>'")
            raise Unauthenticated(
                "unauthorized",
                "missing credentials: send X-API-Key: <key> or Authorization: Bearer",
            )
        try:  # trim ASCII blanks only: a non-ASCII space is refused by the authenticator, not trimmed
            return self.auth.authenticate(token.strip(" \t"))
        except Unauthenticated:
            blocked = await self.auth_throttle.failed(address)
            if blocked > 0:
                raise throttled(blocked) from None
            raise

    async def admit(self, request: Request, scope: str) -> Principal:
        """Authenticate, check `scope`, take a token from the key's bucket; sets request.state.principal."""
        principal = await self.authenticate(request, request.headers.get("x-api-key"), await _BEARER(request))
        require_scope(principal, scope)
        await self.rate_limit(principal)
        request.state.principal = principal
        return principal

    async def rate_limit(self, principal: Principal) -> None:
        """`TooManyRequests` `rate_limited` (with Retry-After) when the principal's bucket is empty."""
        decision = await self.limiter.acquire(
            f"{principal.tenant}:{principal.key_id}", principal.rate_per_s, principal.burst
        )
        if not decision.allowed:
            self.metrics.rate_limited.labels(tenant=principal.tenant).inc()
            raise TooManyRequests(
                "rate_limited",
                f"rate limit of this key exceeded ({principal.rate_per_s:g}/s, burst {principal.burst}); "
                f"retry after {decision.retry_after_header} s",
                retry_after_s=decision.retry_after_header,
            )

    def require(self, scope: str) -> Callable[..., Awaitable[Principal]]:
        """FastAPI dependency: authenticates X-API-Key: <key> or Authorization: Bearer <key or JWT>; 401
        without/invalid credentials, 403 without `scope`, then applies the per-key token bucket (429
        rate_limited with Retry-After, counts metrics.rate_limited). Sets request.state.principal."""

        async def principal_with_scope(
            request: Request,
            api_key: ApiKeyHeader,
            bearer: BearerHeader,
        ) -> Principal:
            admitted = getattr(request.state, "principal", None)
            if isinstance(admitted, Principal):  # the gate admitted it before the body: the route's scope
                require_scope(admitted, scope)
                return admitted
            principal = await self.authenticate(request, api_key, bearer)
            require_scope(principal, scope)
            await self.rate_limit(principal)
            request.state.principal = principal
            return principal

        principal_with_scope.kefu_auth_scope = scope  # type: ignore[attr-defined]  (AuthGate reads it)
        return principal_with_scope

    def admin_dependency(self, scope: str = "admin") -> Callable[..., Awaitable[Principal]]:
        """`require(scope)` for the FAQ admin router: the errors it raises are the platform's
        (services/common/errors.py), which the admin router's own mapper renders in the same uniform body."""
        return self.require(scope)

    # ── input ───────────────────────────────────────────────────────────────────────────────────────

    def check_texts(self, texts: list[str], field: str = "texts") -> list[str]:
        """Validates sizes (400 text_too_long / too_many_texts / empty_text naming the index) and returns the
        normalised texts (NFKC, full-width→half-width, whitespace collapsed, traditional → simplified), sensitive
        words masked."""
        s = self.settings
        if not isinstance(texts, list):
            raise InvalidInput("invalid_texts", f"{field}: must be a list of strings")
        if not texts:
            raise InvalidInput("no_texts", f"{field}: at least one text is required")
        if len(texts) > s.max_list_size:
            raise InvalidInput(
                "too_many_texts",
                f"{field}: {len(texts)} texts, at most {s.max_list_size} in one request",
            )
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput("invalid_text", f"{field}[{i}]: must be a string")
            clean = self.normalizer.normalize(text)
            if not clean:
                raise InvalidInput("empty_text", f"{field}[{i}]: empty (after trimming whitespace)")
            if len(clean) > s.max_text_chars:
                raise InvalidInput(
                    "text_too_long",
                    f"{field}[{i}]: {len(clean)} characters, at most {s.max_text_chars}",
                )
            out.append(self.normalizer.mask(clean))
        return out

    def check_text(self, text: str, field: str = "text") -> str:
        """`check_texts` for one text; errors name `field` (e.g. `text: empty ...`)."""
        try:
            return self.check_texts([text])[0]
        except InvalidInput as e:
            e.message = e.message.replace("texts[0]", field, 1)
            raise

    async def close(self) -> None:
        await self.limiter.close()
        await self.sessions.close()
        await self.cache.close()
        await self.auth_throttle.close()
        if self._owns_redis and self.redis is not None:
            await self.redis.aclose()
