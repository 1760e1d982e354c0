"""Writes one generated section of docs/reliability.md (between `<!-- <name>:begin -->` and `<!-- <name>:end -->`),
leaving the rest of the file as it is, so `make load` and `make reliability` each refresh their own figures."""

from __future__ import annotations

from pathlib import Path


def replace_section(document: str, name: str, text: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in document and end in document:
        head, _, rest = document.partition(begin)
        _, _, tail = rest.partition(end)
        return head + block + tail
    return document.rstrip("\n") + f"\n\n{block}\n"


def write_section(path: Path, name: str, text: str) -> None:
    document = path.read_text("utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(document, name, text), "utf-8")
