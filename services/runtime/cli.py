"""Command lines generated from a pydantic-settings class: one `--flag` per field (its description as help),
so a setting is the same whether it comes from `KEFU_*` variables or the command line."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic_settings import BaseSettings


def settings_parser(settings_cls: type[BaseSettings], prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with `--field-name` for every field of `settings_cls` (booleans get `--no-…`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            p.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            p.add_argument(flag, dest=name, default=None, help=field.description)
    return p


def overrides_of(args: argparse.Namespace, settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The settings given on the command line (the rest come from the environment and the defaults)."""
    return {k: v for k, v in vars(args).items() if k in settings_cls.model_fields and v is not None}
