"""Multi-turn conversation state: recent intents and actions, unresolved count, slots extracted by rule.

A `Session` is what the chat policy needs to remember between turns, and nothing more:
- `turns`: the last `max_turns` turns, most recent last, each `Turn(intent, action, at, text_digest)`. The
  customer's text itself is never kept, only a short sha256 digest (to spot a customer repeating themselves).
- `unresolved`: consecutive turns that did not end in `answer` (the policy hands over after a few).
- `slots`: values extracted by rule (`extract_slots`): `order_no` (kept whole: the flow looks orders up by it)
  and `phone`, kept MASKED (`138****5678`): a human agent confirms the number with its last four digits, and the
  full number would otherwise sit in Redis for the session's TTL. ID and bank card numbers are never kept.

Stores: `MemorySessionStore` (one process; LRU-bounded in sessions, bounded in turns, sliding TTL) and
`RedisSessionStore` (shared by replicas; one JSON value per session with the TTL, turns bounded the same way).
Both return a new empty `Session` for an unknown or expired id and hand out copies: a change is kept only by
`save`. When Redis fails, `get` answers a new session and `save` drops the update (both logged): the chat keeps
answering, it only forgets context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from services.gateway.errors import ApiError
from services.gateway.redaction import _CARD, _ID, luhn_ok, mask_phone

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_ORDER_KEYWORD = re.compile(
    r"(?:订单|单号|order)\s*(?:号|编号|号码|no\.?|number|id)?[\s:：#是为]{0,4}"
    r"((?=[A-Za-z-]*\d)[A-Za-z0-9-]{6,32})(?![A-Za-z0-9-])",
    re.I,
)
_BARE_ORDER = re.compile(r"(?<![0-9A-Za-z])\d{10,24}(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<![0-9])(?:\+?86[- ]?)?(1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?![0-9])")


@dataclass
class Turn:
    intent: str | None  # top intent label of the turn (None when the intent model was down)
    action: str  # answer / suggest / clarify / handoff
    at: float  # unix time
    text_digest: str = ""  # first 16 hex of sha256(normalised text); never the text


@dataclass
class Session:
    session_id: str
    turns: list[Turn] = field(default_factory=list)  # most recent last, bounded (max_turns)
    unresolved: int = 0  # consecutive turns not ending in `answer`
    slots: dict[str, str] = field(default_factory=dict)  # {"order_no": "...", "phone": "138****1234"}

    def add_turn(self, intent: str | None, action: str, text: str = "", max_turns: int | None = None) -> Turn:
        """Records a turn: updates `unresolved` and the slots found in `text` (normalised customer text)."""
        turn = Turn(intent, action, time.time(), text_digest(text) if text else "")
        self.turns.append(turn)
        if max_turns is not None:
            del self.turns[:-max_turns]
        self.unresolved = 0 if action == "answer" else self.unresolved + 1
        if text:
            self.slots.update(extract_slots(text))
        return turn

    def recent_intents(self, n: int = 3) -> list[str]:
        return [t.intent for t in self.turns[-n:] if t.intent]

    def repeats(self, text: str) -> bool:
        """True when the customer sent the same text in an earlier kept turn."""
        d = text_digest(text)
        return any(t.text_digest == d for t in self.turns)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Session:
        d = json.loads(raw)
        return cls(
            session_id=d["session_id"],
            turns=[Turn(**t) for t in d.get("turns", [])],
            unresolved=int(d.get("unresolved", 0)),
            slots={str(k): str(v) for k, v in d.get("slots", {}).items()},
        )


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise ApiError(
            400, "invalid_session_id", "session_id must be 1-128 characters of letters, digits, _ . : -"
        )
    return session_id


def extract_slots(text: str) -> dict[str, str]:
    """Slots found in `text` by rule: `order_no` after a keyword (`订单号 123456789012`, `order no: A-123456`)
    or as a bare 10-24 digit number that is not a phone, ID or bank card number; `phone` (masked)."""
    slots: dict[str, str] = {}
    phones = list(_PHONE.finditer(text))
    if phones:
        slots["phone"] = mask_phone(phones[-1].group(1))
    if m := _ORDER_KEYWORD.search(text):
        slots["order_no"] = m.group(1)
        return slots
    taken = [(p.start(), p.end()) for p in phones] + [(x.start(), x.end()) for x in _ID.finditer(text)]
    for m in _BARE_ORDER.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in taken):
            continue
        digits = m.group(0)
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and _CARD.fullmatch(digits):
            continue  # looks like a bank card: never kept
        slots["order_no"] = digits
    return slots


def _check_bounds(max_turns: int, ttl_s: float, max_sessions: int = 1) -> None:
    if max_turns < 1 or max_sessions < 1 or ttl_s <= 0:
        raise ValueError("sessions: max_turns and max_sessions must be at least 1 and ttl_s positive")


class SessionStore(Protocol):
    async def get(self, session_id: str) -> Session: ...  # a new empty Session when unknown/expired

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
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (expires, json)

    async def get(self, session_id: str) -> Session:
        check_session_id(session_id)
        item = self._data.get(session_id)
        if item is None:
            return Session(session_id)
        expires, raw = item
        if expires <= self._clock():
            del self._data[session_id]
            return Session(session_id)
        self._data.move_to_end(session_id)
        return Session.from_json(raw)

    async def save(self, session: Session) -> None:
        check_session_id(session.session_id)
        del session.turns[: -self.max_turns]
        self._data[session.session_id] = (self._clock() + self.ttl_s, session.to_json())
        self._data.move_to_end(session.session_id)
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    async def close(self) -> None:
        self._data.clear()


class RedisSessionStore:
    """Sessions in Redis: `<prefix><id>` holds the JSON, expiring `ttl_s` after the last save."""

    def __init__(self, redis, max_turns: int = 10, ttl_s: float = 1800.0, prefix: str = "kefu:session:"):
        _check_bounds(max_turns, ttl_s)
        self._redis, self.max_turns, self.ttl_s, self._prefix = redis, max_turns, ttl_s, prefix

    async def get(self, session_id: str) -> Session:
        check_session_id(session_id)
        try:
            raw = await self._redis.get(self._prefix + session_id)
        except (RedisError, OSError) as e:
            log.warning("sessions: Redis get failed (%s); answering without context", e)
            return Session(session_id)
        if raw is None:
            return Session(session_id)
        try:
            session = Session.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("sessions: unreadable session value in Redis; starting afresh")
            return Session(session_id)
        del session.turns[: -self.max_turns]
        return session

    async def save(self, session: Session) -> None:
        check_session_id(session.session_id)
        del session.turns[: -self.max_turns]
        try:
            await self._redis.set(
                self._prefix + session.session_id, session.to_json(), px=max(1, int(self.ttl_s * 1000))
            )
        except (RedisError, OSError) as e:
            log.warning("sessions: Redis save failed (%s); this turn's context is lost", e)

    async def close(self) -> None:
        return None
