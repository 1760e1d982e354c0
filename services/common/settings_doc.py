"""Settings tables generated from the settings classes themselves (`python -m services.common.settings_doc`).

Every `KEFU_*` variable is a field of one pydantic-settings class, with its default and a `description`;
the markdown tables in the READMEs are rendered from them between `<!-- settings:<Class>:begin -->` and
`<!-- settings:<Class>:end -->` markers, so a new field, a changed default or a reworded description reaches
the documentation by running this (`--check`, in `make test`, fails when a table is stale).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]


def documented() -> dict[str, type[BaseSettings]]:
    """Every settings class a process of the platform reads, by the name its markers use."""
    from services.canary.settings import CanarySettings
    from services.faq.admin_http import FaqAdminSettings
    from services.faq.settings import FaqSettings
    from services.gateway.edge.guard import EdgeSettings
    from services.gateway.settings import GatewaySettings
    from services.worker.settings import WorkerSettings

    classes = (GatewaySettings, EdgeSettings, WorkerSettings, FaqSettings, FaqAdminSettings, CanarySettings)
    return {c.__name__: c for c in classes}


def _default(field) -> str:
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = value.relative_to(ROOT) if value.is_absolute() and value.is_relative_to(ROOT) else value
        value = str(value)
    if value is None or value == "" or value == [] or value == {} or value == ():
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | list | tuple):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    return f"`{value}`"


def table(cls: type[BaseSettings]) -> str:
    """The markdown table of `cls`: variable, default, meaning (the field's description)."""
    prefix = cls.model_config.get("env_prefix", "")
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        if not field.description:
            raise ValueError(f"{cls.__name__}.{name} has no description")
        text = " ".join(field.description.split()).replace("|", "\\|")
        default = _default(field).replace("|", "\\|")
        lines.append(f"| `{prefix}{name.upper()}` | {default} | {text} |")
    return "\n".join(lines)


def render(text: str, classes: dict[str, type[BaseSettings]]) -> str:
    """`text` with every settings block replaced by the current table of its class."""

    def block(m: re.Match) -> str:
        name = m.group(1)
        if name not in classes:
            raise ValueError(f"settings block for an unknown class {name!r}")
        return f"<!-- settings:{name}:begin -->\n{table(classes[name])}\n<!-- settings:{name}:end -->"

    return re.sub(r"<!-- settings:(\w+):begin -->.*?<!-- settings:\1:end -->", block, text, flags=re.S)


DOCUMENTS = ("services/gateway/README.md", "docs/settings.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.common.settings_doc", description=__doc__.split("\n")[0]
    )
    p.add_argument("--check", action="store_true", help="fail (exit 1) when a table is stale; write nothing")
    args = p.parse_args(argv)
    classes, stale = documented(), []
    for rel in DOCUMENTS:
        path = ROOT / rel
        text = path.read_text("utf-8")
        new = render(text, classes)
        if new != text:
            stale.append(rel)
            if not args.check:
                path.write_text(new, "utf-8")
    if args.check and stale:
        print(f"stale settings tables in {', '.join(stale)}: run python -m services.common.settings_doc")
        return 1
    print(f"settings tables: {'rewritten ' + ', '.join(stale) if stale else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
