"""Input normalisation and sensitive-word masking for customer text.

`normalize`: Unicode NFKC (which also folds full-width ASCII `ＡＢＣ１２３！` and the ideographic space to
half-width), an explicit full-width → half-width pass for anything NFKC leaves, removal of invisible
characters (controls, zero-width and other format characters, lone surrogates: they break encoders and
let a sensitive word hide as `傻\u200b逼`), and whitespace collapsed to single spaces and trimmed.
Chinese punctuation that has no half-width twin (`。、「」`) is kept.

`TextNormalizer(simplify=True)` then converts traditional Chinese to simplified (OpenCC `t2s`, character and
phrase tables, ~2 µs a message): the models' vocabulary and the knowledge base are simplified, so 退貨運費誰出
would otherwise reach the encoder with 貨 / 運 / 誰 as unknown tokens. Simplified text passes unchanged.

`mask`: every occurrence of a listed word (Aho-Corasick over the normalised, lower-cased text, so the cost is
linear in the text whatever the list size) has each of its characters replaced by `*`. The list file format
is documented in `defaults/sensitive_words.txt`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

import ahocorasick
import opencc

_FULL_TO_HALF = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_DROP = {"Cc", "Cf", "Cs", "Co", "Cn"}


def normalize(text: str) -> str:
    """NFKC, full-width → half-width, invisible characters dropped, whitespace collapsed and trimmed."""
    text = unicodedata.normalize("NFKC", text).translate(_FULL_TO_HALF)
    text = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROP
    )
    return " ".join(text.split())


def _fold(text: str) -> str:
    """Lower case, one character for one (matches index the original text)."""
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


class TextNormalizer:
    """`normalize` (then traditional → simplified unless `simplify=False`) plus masking of a fixed word list."""

    def __init__(self, words: Iterable[str] = (), simplify: bool = True):
        self._t2s = opencc.OpenCC("t2s") if simplify else None
        self._automaton = ahocorasick.Automaton()
        count = 0
        for word in words:
            w = _fold(self.normalize(word))
            if w and w not in self._automaton:
                self._automaton.add_word(w, len(w))
                count += 1
        self.word_count = count
        if count:
            self._automaton.make_automaton()

    @classmethod
    def from_file(cls, path: Path, simplify: bool = True) -> TextNormalizer:
        """Words from a list file (UTF-8, one a line, `#` comments); ValueError naming the file if unreadable."""
        try:
            lines = Path(path).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"sensitive words file {path}: cannot read it as UTF-8 ({e})") from e
        words = (line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        return cls(words, simplify)

    def normalize(self, text: str) -> str:
        text = normalize(text)
        return self._t2s.convert(text) if self._t2s is not None and text else text

    def mask(self, text: str) -> str:
        """Each character of every listed word found in `text` (already normalised) replaced by `*`."""
        if not self.word_count or not text:
            return text
        hidden = bytearray(len(text))
        found = False
        for end, length in self._automaton.iter(_fold(text)):
            hidden[end - length + 1 : end + 1] = b"\x01" * length
            found = True
        if not found:
            return text
        return "".join("*" if h else ch for ch, h in zip(text, hidden, strict=True))

    def clean(self, text: str) -> str:
        """normalize, then mask."""
        return self.mask(self.normalize(text))
