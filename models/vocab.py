"""A character vocabulary for training ERNIE from scratch, in ERNIE's vocab.txt format."""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from services.runtime.tokenizer import SPECIAL_TOKENS


def build_char_vocab(texts: Iterable[str], min_freq: int = 2, max_size: int = 8000) -> list[str]:
    """Special tokens, then ASCII letters/digits (also as `##` continuations, so WordPiece can spell any
    Latin word or number), then the most frequent other characters (lower-cased, NFKC-normalised)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(unicodedata.normalize("NFKC", text).lower())
    ascii_core = list(string.ascii_lowercase + string.digits)
    vocab = list(SPECIAL_TOKENS) + ascii_core + ["##" + c for c in ascii_core]
    seen = set(vocab)
    for char, n in counts.most_common():
        if len(vocab) >= max_size or n < min_freq:
            break
        if char.isspace() or char in seen or unicodedata.category(char).startswith("C"):
            continue
        vocab.append(char)
        seen.add(char)
    return vocab


def write_vocab(vocab: list[str], path: str | Path) -> None:
    Path(path).write_text("\n".join(vocab) + "\n", encoding="utf-8")
