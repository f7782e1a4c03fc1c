"""A classical baseline beside every classifier: TF-IDF + logistic regression on the same splits.

Trained on the train split, its C chosen on the validation split only, scored on the split the
transformer is scored on. If a fine-tuned, distilled or int8 model does not beat it, that model
is not worth its cost, and `evaluate` and the report say so.
"""

from __future__ import annotations

import time

import numpy as np

from .data import ALL, DataSpec, Split, load_classification
from .errors import DataError, MissingPackage

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # inverse regularization; the best on validation wins
NAME = "TF-IDF + logistic regression"
_CACHE: dict = {}  # one fit per (data, split) in a process: a recipe's evaluate step scores many artifacts


def tfidf_baseline(spec: DataSpec, split: str = "test", max_samples: int | None = None, seed: int = 42) -> dict:
    """Fit TF-IDF (word 1-2 grams, sublinear tf) + logistic regression on train, choose C on validation,
    score `split`; accuracy and macro F1 as evaluate reports them.

    >>> tfidf_baseline(DataSpec("rotten-tomatoes"))["accuracy"]  # doctest: +SKIP
    0.7727
    """
    key = (spec, split, max_samples, seed)
    if key not in _CACHE:
        _CACHE[key] = _fit_and_score(spec, split, max_samples, seed)
    return dict(_CACHE[key])


def _fit_and_score(spec: DataSpec, split: str, max_samples: int | None, seed: int) -> dict:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise MissingPackage("the TF-IDF baseline needs scikit-learn", "pip install scikit-learn") from None
    from .metrics import classification_metrics

    if split == ALL:
        raise DataError("the baseline trains on a train split, and split 'all' has none",
                        "pass the train file with --data and the held-out file with --test-data")
    started = time.perf_counter()
    data = load_classification(spec)
    train, val, scored = data.split("train"), data.split("validation"), data.split(split).subset(max_samples)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform(_texts(train))
    x_val = vectorizer.transform(_texts(val))
    fits = {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_train, train.labels)
        fits[c] = (float((model.predict(x_val) == val.labels).mean()), model)
    best = max(C_GRID, key=lambda c: (fits[c][0], -abs(np.log10(c))))  # ties: the C nearest 1
    pred = fits[best][1].predict(vectorizer.transform(_texts(scored)))
    result = classification_metrics(scored.labels, pred, len(data.label_names))
    return result | {"model": NAME, "C": best, "validation_accuracy": round(fits[best][0], 4),
                     "c_grid": {str(c): round(fits[c][0], 4) for c in C_GRID}, "train_examples": len(train),
                     "split": split, "split_origin": data.origin, "seconds": round(time.perf_counter() - started, 2),
                     "label_names": data.label_names}


def _texts(split: Split) -> list[str]:
    if split.pairs is None:
        return split.texts
    return [f"{a} [SEP] {b}" for a, b in zip(split.texts, split.pairs)]


def verdict(name: str, accuracy: float, baseline: dict) -> str | None:
    """A plain sentence when a model does not beat the baseline; None when it does."""
    if accuracy > baseline["accuracy"]:
        return None
    return (f"{name} does not beat the {NAME} baseline ({accuracy:.4f} vs {baseline['accuracy']:.4f} on "
            f"{baseline['split']}, n={baseline['n']}): it is not worth its cost on this data")
