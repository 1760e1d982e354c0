"""The gateway process's settings, in one object: built once in `main()` (or by the app factory) from the
environment and the command line, then passed down. Nothing below reads the environment again.

    Config.from_env(port=8080)  # KEFU_GATEWAY_* (core and edge), KEFU_FAQ_*, KEFU_FAQ_ADMIN_*

| section | class | prefix | what |
|---|---|---|---|
| `gateway` | `GatewaySettings` (settings.py) | `KEFU_GATEWAY_` | ports, workers, timeouts, breaker, policy, admission, canary |
| `edge` | `EdgeSettings` (edge/guard.py) | `KEFU_GATEWAY_` | keys, tokens, limits, Redis, sessions, cache |
| `faq` | `FaqSettings` (services/faq/settings.py) | `KEFU_FAQ_` | the knowledge-base store (the encoder version and dimension come from the served model) |
| `faq_admin` | `FaqAdminSettings` (services/faq/admin_http.py) | `KEFU_FAQ_ADMIN_` | the admin API mounted at /admin/faq |

Every field is listed in docs/settings.md (generated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.faq.admin_http import FaqAdminSettings
from services.faq.settings import FaqSettings
from services.gateway.edge.guard import EdgeSettings
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Config:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    faq: FaqSettings = field(default_factory=FaqSettings)
    faq_admin: FaqAdminSettings = field(default_factory=FaqAdminSettings)

    @classmethod
    def from_env(cls, **gateway_overrides: Any) -> Config:
        """Every section from the environment, the core section with `gateway_overrides` (command-line
        flags) on top. Raises `ValueError` (pydantic's ValidationError) naming the first bad setting, before
        anything starts: placeholder secrets in production included (EdgeSettings)."""
        return cls(GatewaySettings(**gateway_overrides), EdgeSettings(), FaqSettings(), FaqAdminSettings())
