"""Hard negatives for the FAQ encoder: texts that share words with a question but do not mean the same.

In-batch negatives are mostly easy (a random 花呗 question beside a 发货 question); the mistakes the encoder
makes are between neighbours that share words (登录密码 / 支付密码). `train_encoder --hard-negatives N` adds one
such neighbour per pair to the contrastive loss, drawn from the question's **labelled** negatives (label-0 rows of
the training file, `labelled_negatives`).

Where do they come from: ATEC's own label-0 pairs, and, for the demo knowledge base, `mine_hard_negatives`: the
phrasings of *other* FAQs that BM25 (jieba words) ranks highest for a phrasing, written as label-0 rows by
`models.default_data`. Mining is done there, on a closed world, and not over ATEC at training time: ATEC is full
of unlabelled paraphrases (我的手机丢了，花呗该怎么还 → BM25's best non-positive is 我手机丢了，蚂蚁花呗，怎么还),
so open-world BM25 "negatives" are often positives, while two FAQs of one knowledge base never are.

Positives are transitive: a text paired (label 1) with a text paired with the anchor is not a negative either, so
texts are grouped by the connected components of the positive pairs and a candidate of the anchor's group is
never chosen.

Scores are rank_bm25's `BM25Okapi` (k1 1.5, b 0.75, its idf), computed as one sparse matrix product instead
of its per-query Python loop over the corpus (seconds instead of hours for 7k questions over 40k texts).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import sparse


def jieba_words(text: str) -> list[str]:
    """Words as the FAQ store's BM25 sees them: jieba's, without spaces."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    with contextlib.redirect_stderr(io.StringIO()):  # jieba prints its dictionary loading once
        return [w for w in jieba.lcut(text) if w.strip()]


def positive_groups(pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """text -> group id, texts connected by positive pairs sharing one id (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    roots: dict[str, int] = {}
    return {text: roots.setdefault(find(text), len(roots)) for text in list(parent)}


class Bm25Index:
    """Okapi BM25 over a fixed corpus, scores identical to `rank_bm25.BM25Okapi.get_scores`, many queries at once."""

    def __init__(self, texts: Sequence[str], tokenize: Callable[[str], list[str]] = jieba_words):
        from rank_bm25 import BM25Okapi

        if not texts:
            raise ValueError("BM25 needs a non-empty corpus")
        self.texts, self.tokenize = list(texts), tokenize
        bm25 = BM25Okapi([tokenize(t) or [""] for t in self.texts])
        self.vocab = {word: i for i, word in enumerate(bm25.idf)}
        rows, cols, vals = [], [], []
        for d, freqs in enumerate(bm25.doc_freqs):
            norm = bm25.k1 * (1 - bm25.b + bm25.b * bm25.doc_len[d] / bm25.avgdl)
            for word, f in freqs.items():
                rows.append(d)
                cols.append(self.vocab[word])
                vals.append(bm25.idf[word] * f * (bm25.k1 + 1) / (f + norm))
        self.weights = sparse.csr_matrix((vals, (rows, cols)), shape=(len(self.texts), len(self.vocab)))

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """[queries, corpus] BM25 scores (a repeated query word counts twice, as in rank_bm25)."""
        rows, cols = [], []
        for n, query in enumerate(queries):
            for word in self.tokenize(query):
                if word in self.vocab:
                    rows.append(n)
                    cols.append(self.vocab[word])
        counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(self.vocab)))
        return (counts @ self.weights.T).toarray()


def mine_hard_negatives(
    pairs: Sequence[tuple[str, str]], corpus: Sequence[str], pool: int, chunk: int = 512
) -> list[list[str]]:
    """For each positive (question, match) pair, up to `pool` corpus texts in BM25 order for the question, none of
    them in the question's positive group and none scoring zero (no shared word). Texts are deduplicated."""
    if pool < 1:
        raise ValueError(f"pool must be at least 1, got {pool}")
    groups = positive_groups(pairs)
    texts = list(dict.fromkeys(corpus))
    index = Bm25Index(texts)
    text_group = np.array([groups.get(t, -1) for t in texts])
    anchors = list(dict.fromkeys(a for a, _ in pairs))
    mined: dict[str, list[str]] = {}
    for start in range(0, len(anchors), chunk):
        block = anchors[start : start + chunk]
        scores = index.scores(block)
        for anchor, row in zip(block, scores, strict=True):
            row = np.where(text_group == groups[anchor], 0.0, row)
            # a few more than `pool` by partial sort, then in score order (ties: corpus order)
            k = min(len(row), pool)
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = sorted(top, key=lambda i: (-row[i], i))
            mined[anchor] = [texts[i] for i in top if row[i] > 0]
    return [mined[a] for a, _ in pairs]


def labelled_negatives(
    rows: Iterable[tuple[str, str, int]], anchors: Sequence[str], groups: dict[str, int], limit: int
) -> list[list[str]]:
    """Per anchor, the first `limit` texts it is paired with by a label-0 row (either side, file order), without
    texts of its positive group (a row contradicting the positives loses)."""
    partners: dict[str, list[str]] = {}
    for a, b, label in rows:
        if label == 0:
            partners.setdefault(a, []).append(b)
            partners.setdefault(b, []).append(a)
    out = []
    for anchor in anchors:
        mine = groups.get(anchor, -1)
        seen = [t for t in dict.fromkeys(partners.get(anchor, [])) if mine < 0 or groups.get(t, -2) != mine]
        out.append(seen[:limit])
    return out
