"""The FAQ admin API's bulk formats: import (detect, decode, parse, plan against the store) and export.

Import formats (`POST /admin/faq/import`), one FAQ per record:

- JSONL: the `data/faq_kb_demo/faq.jsonl` format, one JSON object a line:
  `{"id", "question", "answer", "category", "alternatives": [...], "tags": [...]}` (`faq_id` may stand for
  `id`; `category`, `alternatives`, `tags` may be left out). Blank lines are skipped.
- CSV (RFC 4180, a header line first): columns `id` (or `faq_id`), `question`, `answer`, and optionally
  `category`, `alternatives`, `tags`, in any order. `alternatives` and `tags` hold several values separated by
  `|`; a literal `|` inside a value is written `\\|` and a literal backslash before `|` or `\\` as `\\\\`.

Text is UTF-8 (a BOM is accepted, as Excel writes it) unless the request's Content-Type names another charset
(`text/csv; charset=gb18030` for a CSV saved by Chinese Excel as "CSV"). An error names the record by its line
number in the file (`row`; a CSV's header is line 1, so its first FAQ is row 2), as an editor or a spreadsheet
shows it. Exports write the same formats (CSV with a BOM so that Excel opens it as UTF-8). A CSV cell that starts
with `=`, `+`, `-`, `@`, tab or CR is exported with a leading `'` so that a spreadsheet shows it as text instead of
evaluating it (OWASP CSV injection); imports remove that one `'` again, so export -> import -> export is stable.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.faq.admin_errors import ImportRejected, InvalidCharset
from services.faq.admin_schemas import ImportFormat, ImportMode
from services.faq.domain import (
    RECORD_FIELDS,
    RECORD_KEYS,
    FaqEntry,
    InvalidFaq,
    JsonlLine,
    entry_of,
    parse_faq_jsonl,
    phrasing_key,
)

IMPORT_FORMATS = ("jsonl", "csv")
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/json-lines": "jsonl",
}
MAX_ROW_ERRORS = 1000  # per-row errors listed in one response (the message gives the total)


# ── import: parse, then plan against the store ──────────────────────────────────────────────────────


ParsedRow = JsonlLine  # a record of an import file (JSONL or CSV) with its line number, or its error


@dataclass
class ImportPlan:
    entries: list[FaqEntry]  # every record of the file, in order
    create: list[FaqEntry] = field(default_factory=list)
    update: list[FaqEntry] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def writes(self) -> list[FaqEntry]:
        return [*self.create, *self.update]


def detect_format(fmt: str | None, content_type: str | None) -> ImportFormat:
    if fmt:
        if fmt not in IMPORT_FORMATS:
            raise ImportRejected(f"format must be jsonl or csv, not {fmt!r}")
        return fmt  # type: ignore[return-value]
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]  # type: ignore[return-value]
    raise ImportRejected(
        f"cannot tell the format from Content-Type {media or '(none)'!r}: pass format=jsonl or format=csv, "
        "or send Content-Type application/x-ndjson or text/csv"
    )


def charset_of(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            name = value.strip().strip('"').lower()[:40]
            try:
                info = codecs.lookup(name)
            except LookupError:
                raise InvalidCharset(f"unknown charset {name!r} in Content-Type") from None
            if not getattr(info, "_is_text_encoding", True):  # what bytes.decode() itself checks
                raise InvalidCharset(
                    f"charset {name!r} in Content-Type is not a text encoding; send UTF-8 or name the file's "
                    "text encoding (e.g. text/csv; charset=gb18030)"
                )
            return "utf-8-sig" if info.name == "utf-8" else info.name
    return "utf-8-sig"


def decode(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset)
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise ImportRejected(
            f"the file is not valid {charset.removesuffix('-sig')} text (line {line}); save it as UTF-8, "
            "or name its charset in Content-Type (e.g. text/csv; charset=gb18030)",
            [{"row": line, "error": f"bytes at offset {e.start} are not {charset.removesuffix('-sig')}"}],
        ) from None
    except (UnicodeError, ValueError, TypeError) as e:  # codecs such as idna or punycode fail otherwise
        raise InvalidCharset(f"the body cannot be decoded as {charset}: {type(e).__name__}") from None


def parse_import(text: str, fmt: ImportFormat) -> list[ParsedRow]:
    """Records of the file, each with its line number; a record that cannot be read carries its error."""
    return parse_faq_jsonl(text) if fmt == "jsonl" else _parse_csv(text)


def _parse_csv(text: str) -> list[ParsedRow]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise ImportRejected("the CSV header cannot be read", [{"row": 1, "error": f"CSV: {e}"}]) from None
    if header is None:
        return []
    names = [h.strip().lower() for h in header]
    problems = []
    if unknown := [h for h in names if h not in RECORD_FIELDS]:
        problems.append(f"unknown column(s) {unknown}; columns are id, {', '.join(RECORD_KEYS[1:])}")
    if len(set(names)) != len(names) or ("id" in names and "faq_id" in names):
        problems.append("a column appears twice (id and faq_id are the same column)")
    if missing := [c for c in ("question", "answer") if c not in names]:
        problems.append(f"missing column(s) {missing}")
    if "id" not in names and "faq_id" not in names:
        problems.append("missing column 'id'")
    if problems:
        raise ImportRejected("the CSV header is wrong", [{"row": 1, "error": "; ".join(problems)}])
    rows, last = [], reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.append(ParsedRow(start, error=f"CSV: {e}"))
            break  # the reader cannot resynchronise after a broken quote
        last = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            rows.append(ParsedRow(start, error=f"{len(cells)} fields, the header has {len(names)}"))
            continue
        record: dict[str, Any] = {}
        for name, cell in zip(names, cells, strict=True):
            cell = restore_cell(cell)
            record[name] = split_multi(cell) if name in ("alternatives", "tags") else cell
        rows.append(ParsedRow(start, record=record))
    return rows


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet evaluates a cell that starts so (OWASP)


def _formula_like(text: str) -> bool:
    """Starts with a formula character, after any number of `'` (so that the escape below is reversible)."""
    return text.lstrip("'").startswith(FORMULA_START)


def neutralise_cell(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: `=1+1` -> `'=1+1` (OWASP CSV injection). A cell that already
    starts with `'` before a formula character gets one more, so `restore_cell` undoes exactly this."""
    return f"'{cell}" if _formula_like(cell) else cell


def restore_cell(cell: str) -> str:
    """The inverse of `neutralise_cell` on import: `'=1+1` -> `=1+1`; `'abc` stays as it is."""
    return cell[1:] if cell.startswith("'") and _formula_like(cell[1:]) else cell


def split_multi(cell: str) -> list[str]:
    """`a|b\\|c` -> ["a", "b|c"]; blanks dropped."""
    parts, cur, i = [], [], 0
    while i < len(cell):
        ch = cell[i]
        if ch == "\\" and i + 1 < len(cell) and cell[i + 1] in "|\\":
            cur.append(cell[i + 1])
            i += 2
            continue
        if ch == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def join_multi(values: Iterable[str]) -> str:
    return "|".join(v.replace("\\", "\\\\").replace("|", "\\|") for v in values)


def plan_import(rows: Sequence[ParsedRow], existing: Sequence[FaqEntry], mode: ImportMode) -> ImportPlan:
    """Checks every record (its rules, ids and phrasings repeated in the file, phrasings that belong to a
    stored FAQ the file does not carry) and says what applying the file changes. Any error raises
    `ImportRejected` listing every bad row."""
    errors: list[dict[str, Any]] = []
    valid: list[tuple[int, FaqEntry]] = []
    first_row: dict[str, int] = {}
    for r in rows:
        if r.error is not None:
            errors.append({"row": r.row, "error": r.error})
            continue
        try:
            e = entry_of(r.record or {})
        except InvalidFaq as err:
            errors.append({"row": r.row, "error": err.message})
            continue
        if e.faq_id in first_row:
            errors.append({"row": r.row, "error": f"faq_id {e.faq_id} repeats row {first_row[e.faq_id]}"})
            continue
        first_row[e.faq_id] = r.row
        valid.append((r.row, e))
    if not rows:
        errors.append({"row": 0, "error": "the file holds no FAQ"})

    in_file = {e.faq_id for _, e in valid}
    # ids of records that were refused still count as "in the file": their stored phrasings are being replaced
    in_file |= {
        str(i).strip() for r in rows if r.record for i in (r.record.get("faq_id"), r.record.get("id")) if i
    }
    stored = {e.faq_id: e for e in existing}
    owner: dict[str, tuple[str, int | None]] = {}  # phrasing key -> (faq_id, row in the file or None)
    if mode == "upsert":
        for e in existing:
            if e.faq_id not in in_file:
                for p in e.phrasings:
                    owner[phrasing_key(p)] = (e.faq_id, None)
    for row, e in valid:
        for p in e.phrasings:
            key = phrasing_key(p)
            other = owner.get(key)
            if other is None:
                owner[key] = (e.faq_id, row)
            elif other[1] is None:
                errors.append(
                    {
                        "row": row,
                        "error": f"phrasing {p!r} of {e.faq_id} already belongs to {other[0]} in the "
                        "knowledge base (a phrasing may belong to one FAQ only)",
                    }
                )
            else:
                errors.append(
                    {
                        "row": row,
                        "error": f"phrasing {p!r} of {e.faq_id} is also a phrasing of {other[0]} "
                        f"(row {other[1]}); a phrasing may belong to one FAQ only",
                    }
                )
    if errors:
        errors.sort(key=lambda x: x["row"])
        bad = len({x["row"] for x in errors})
        raise ImportRejected(
            f"{bad} of {len(rows)} records are invalid ({len(errors)} errors); nothing was imported",
            errors[:MAX_ROW_ERRORS],
        )
    plan = ImportPlan(entries=[e for _, e in valid])
    for e in plan.entries:
        old = stored.get(e.faq_id)
        if old is None:
            plan.create.append(e)
        elif same_content(old, e):
            plan.unchanged.append(e.faq_id)
        else:
            plan.update.append(e)
    if mode == "replace_all":
        plan.delete = sorted(set(stored) - in_file)
    return plan


def same_content(a: FaqEntry, b: FaqEntry) -> bool:
    return a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})


# ── export ──────────────────────────────────────────────────────────────────────────────────────────


def record_of(e: FaqEntry) -> dict[str, Any]:
    """An entry in the `faq.jsonl` format."""
    return {
        "id": e.faq_id,
        "question": e.question,
        "answer": e.answer,
        "category": e.category,
        "alternatives": list(e.alternatives),
        "tags": list(e.tags),
    }


def export_chunks(entries: Iterable[FaqEntry], fmt: ImportFormat, per_chunk: int = 200) -> Iterator[bytes]:
    """The knowledge base in an import format, a few hundred FAQs per chunk."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n") if fmt == "csv" else None
    if writer is not None:
        buf.write("\ufeff")
        writer.writerow(RECORD_KEYS)
    n = 0
    for e in entries:
        if writer is None:
            buf.write(json.dumps(record_of(e), ensure_ascii=False) + "\n")
        else:
            cells = [
                e.faq_id,
                e.question,
                e.answer,
                e.category,
                join_multi(e.alternatives),
                join_multi(e.tags),
            ]
            writer.writerow([neutralise_cell(c) for c in cells])
        n += 1
        if n % per_chunk == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")
