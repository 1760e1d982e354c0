"""The floors every ERNIE model must beat, computed on the same split.

classification: character 1–3-gram TF-IDF + logistic regression, fitted on the training split;
retrieval: character 1–2-gram TF-IDF cosine, and BM25 over jieba words, both over the knowledge base.
Hyper-parameters are fixed (never tuned on dev).
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from models.metrics import classification_report, retrieval_report


def tfidf_logreg(
    train_texts: list[str], train_y: np.ndarray, texts: list[str], y: np.ndarray, labels: list[str]
) -> dict:
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
    clf = LogisticRegression(C=10.0, max_iter=3000)
    clf.fit(vectorizer.fit_transform(train_texts), train_y)
    probs = np.zeros((len(texts), len(labels)))
    probs[:, clf.classes_] = clf.predict_proba(vectorizer.transform(texts))
    report = classification_report(probs, y, labels)
    report.pop("per_label")
    return {"name": "tfidf_char_1-3gram_logreg", **report}


def tfidf_retrieval(kb: list[str], queries: list[str], gold: list[int]) -> dict:
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    kb_m = vectorizer.fit_transform(kb)
    scores = (vectorizer.transform(queries) @ kb_m.T).toarray()
    return {"name": "tfidf_char_1-2gram_cosine", **retrieval_report(scores, gold)}


def bm25_retrieval(kb: list[str], queries: list[str], gold: list[int]) -> dict:
    import jieba
    from rank_bm25 import BM25Okapi

    jieba.setLogLevel(logging.WARNING)
    with contextlib.redirect_stderr(io.StringIO()):
        tokenized = [jieba.lcut(t) for t in kb]
    bm25 = BM25Okapi(tokenized)
    scores = np.stack([bm25.get_scores(jieba.lcut(q)) for q in queries])
    return {"name": "bm25_jieba", **retrieval_report(scores, gold)}
