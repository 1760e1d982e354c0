"""Multi-turn conversation state: recent intents and actions, unresolved count, slots extracted by rule.

Sessions belong to a tenant: a `SessionKey(tenant, session_id)` names one, and every store method takes it
(or the `Session` that carries it), so tenant B sending tenant A's session id gets a new, empty session of
its own, never A's slots or unresolved count. The tenant comes from the authenticated caller, never from the
request body. Redis keys are `<prefix><tenant>:<session id>` (a tenant id has no `:`).

A `Session` is what the chat policy needs to remember between turns, and nothing more:
- `turns`: the last `max_turns` turns, most recent last, each `Turn(intent, action, at, text_digest)`. The
  customer's text itself is never kept, only a short sha256 digest of it with phone, ID and card numbers
  redacted first (to spot a customer repeating themselves without a digest one could brute-force).
- `unresolved`: consecutive turns that did not end in `answer` (the policy hands over after a few).
- `slots`: values extracted by rule (`slots.SlotExtractor`): `order_no` (kept whole: the flow looks orders
  up by it; only in the shop's format, `order_no_pattern`) and `phone`, kept MASKED (`138****5678`): a human
  agent confirms the number with its last four digits, and the full number would otherwise sit in Redis for
  the session's TTL. Resident ID and bank card numbers are never kept (see `slots.py`).

Stores: `MemorySessionStore` (one process; LRU-bounded in sessions, bounded in turns, sliding TTL) and
`RedisSessionStore` (shared by replicas; one JSON value per session with the TTL, turns bounded the same way).
Both return a new empty `Session` for an unknown or expired key and hand out copies: a change is kept only by
`save`. When Redis fails, `get` answers a new session and `save` drops the update (both logged): the chat keeps
answering, it only forgets context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from cachetools import TTLCache
from redis.exceptions import RedisError

from services.canary.routing import sticky_id
from services.gateway.core.errors import InvalidInput
from services.gateway.core.slots import DEFAULT_EXTRACTOR, SlotExtractor, extract_slots
from services.gateway.edge.redaction import redact

__all__ = ["SessionKey", "Session", "Turn", "extract_slots", "check_session_id", "SessionStore"]

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# as security.TENANT_RE; no `:` or `/`, so storage keys and sticky ids stay unambiguous
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class SessionKey:
    """One conversation of one tenant. Both parts are checked: the session id (client-chosen) with a 400,
    the tenant (from the authenticated principal) with ValueError."""

    tenant: str
    session_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not TENANT_ID_RE.match(self.tenant):
            raise ValueError("sessions: a tenant id is 1-64 letters, digits, _ . -")
        check_session_id(self.session_id)

    @property
    def sticky_id(self) -> str:
        """What canary routing is sticky by: tenant and session id, so equal ids of two tenants are independent."""
        return sticky_id(self.tenant, self.session_id)

    def storage_key(self) -> str:
        return f"{self.tenant}:{self.session_id}"


def _require_key(key: object) -> SessionKey:
    if not isinstance(key, SessionKey):
        raise TypeError(
            f"sessions are keyed by tenant and session id: pass a SessionKey, not {type(key).__name__}"
        )
    return key


@dataclass
class Turn:
    intent: str | None  # top intent label of the turn (None when the intent model was down)
    action: str  # answer / suggest / clarify / handoff
    at: float  # unix time
    text_digest: str = ""  # first 16 hex of sha256(redacted normalised text); never the text


@dataclass
class Session:
    key: SessionKey
    turns: list[Turn] = field(default_factory=list)  # most recent last, bounded (max_turns)
    unresolved: int = 0  # consecutive turns not ending in `answer`
    slots: dict[str, str] = field(default_factory=dict)  # {"order_no": "...", "phone": "138****1234"}

    @property
    def session_id(self) -> str:
        return self.key.session_id

    @property
    def tenant(self) -> str:
        return self.key.tenant

    def add_turn(
        self,
        intent: str | None,
        action: str,
        text: str = "",
        max_turns: int | None = None,
        extractor: SlotExtractor = DEFAULT_EXTRACTOR,
    ) -> tuple[str, ...]:
        """Records a turn: updates `unresolved` and the slots found in `text` (normalised customer text).
        Returns the kinds of personal numbers seen in `text` (never stored)."""
        turn = Turn(intent, action, time.time(), text_digest(text) if text else "")
        self.turns.append(turn)
        if max_turns is not None:
            del self.turns[:-max_turns]
        self.unresolved = 0 if action == "answer" else self.unresolved + 1
        if not text:
            return ()
        found = extractor.extract(text)
        self.slots.update(found.slots)
        return found.pii

    def recent_intents(self, n: int = 3) -> list[str]:
        return [t.intent for t in self.turns[-n:] if t.intent]

    def repeats(self, text: str) -> bool:
        """True when the customer sent the same text in an earlier kept turn."""
        d = text_digest(text)
        return any(t.text_digest == d for t in self.turns)

    def to_json(self) -> str:
        d = asdict(self)
        d["key"] = {"tenant": self.tenant, "session_id": self.session_id}
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Session:
        d = json.loads(raw)
        return cls(
            key=SessionKey(d["key"]["tenant"], d["key"]["session_id"]),
            turns=[Turn(**t) for t in d.get("turns", [])],
            unresolved=int(d.get("unresolved", 0)),
            slots={str(k): str(v) for k, v in d.get("slots", {}).items()},
        )


def text_digest(text: str) -> str:
    """16 hex of sha256 of `text` with phone, ID and card numbers redacted (so it cannot be brute-forced
    back to one of them)."""
    return hashlib.sha256(redact(text).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise InvalidInput(
            "invalid_session_id", "session_id must be 1-128 characters of letters, digits, _ . : -"
        )
    return session_id


def _check_bounds(max_turns: int, ttl_s: float, max_sessions: int = 1) -> None:
    if max_turns < 1 or max_sessions < 1 or ttl_s <= 0:
        raise ValueError("sessions: max_turns and max_sessions must be at least 1 and ttl_s positive")


class SessionStore(Protocol):
    """Every method is keyed by tenant and session id (`SessionKey`, or the `Session` carrying one)."""

    async def get(self, key: SessionKey) -> Session: ...  # a new empty Session when unknown/expired

    async def save(self, session: Session) -> None: ...

    async def close(self) -> None: ...


class MemorySessionStore:
    """Sessions in this process: at most `max_sessions` (least recently used evicted), `max_turns` each,
    expiring `ttl_s` after their last save."""

    def __init__(
        self,
        max_sessions: int = 10_000,
        max_turns: int = 10,
        ttl_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        _check_bounds(max_turns, ttl_s, max_sessions)
        self.max_sessions, self.max_turns, self.ttl_s = max_sessions, max_turns, ttl_s
        # key -> session JSON; least recently used evicted past max_sessions, expiring ttl_s after its save
        self._data: TTLCache[SessionKey, str] = TTLCache(max_sessions, ttl_s, timer=clock)

    async def get(self, key: SessionKey) -> Session:
        key = _require_key(key)
        raw = self._data.get(key)
        return Session(key) if raw is None else Session.from_json(raw)

    async def save(self, session: Session) -> None:
        key = _require_key(session.key)
        del session.turns[: -self.max_turns]
        self._data[key] = session.to_json()

    def __len__(self) -> int:
        self._data.expire()
        return len(self._data)

    async def close(self) -> None:
        self._data.clear()


class RedisSessionStore:
    """Sessions in Redis: `<prefix><tenant>:<session id>` holds the JSON, expiring `ttl_s` after the last save."""

    def __init__(self, redis, max_turns: int = 10, ttl_s: float = 1800.0, prefix: str = "kefu:session:"):
        _check_bounds(max_turns, ttl_s)
        self._redis, self.max_turns, self.ttl_s, self._prefix = redis, max_turns, ttl_s, prefix

    async def get(self, key: SessionKey) -> Session:
        key = _require_key(key)
        try:
            raw = await self._redis.get(self._prefix + key.storage_key())
        except (RedisError, OSError) as e:
            log.warning("sessions: Redis get failed (%s); answering without context", e)
            return Session(key)
        if raw is None:
            return Session(key)
        try:
            session = Session.from_json(raw)
        except (ValueError, KeyError, TypeError, InvalidInput):
            log.warning("sessions: unreadable session value in Redis; starting afresh")
            return Session(key)
        if session.key != key:  # never hand out another conversation's state, whatever the value says
            log.warning("sessions: Redis value under another session's key; starting afresh")
            return Session(key)
        del session.turns[: -self.max_turns]
        return session

    async def save(self, session: Session) -> None:
        key = _require_key(session.key)
        del session.turns[: -self.max_turns]
        try:
            await self._redis.set(
                self._prefix + key.storage_key(), session.to_json(), px=max(1, int(self.ttl_s * 1000))
            )
        except (RedisError, OSError) as e:
            log.warning("sessions: Redis save failed (%s); this turn's context is lost", e)

    async def close(self) -> None:
        return None
