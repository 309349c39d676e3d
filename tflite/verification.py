"""Verification and identification metrics of embeddings (faces, re-identification).

An embedding model maps an image to a vector (N, D) whose cosine similarity says whether two
images show the same identity. Two questions are asked of it, as face papers ask them:

- verification ("are these two the same person?"): every pair of samples is scored by the
  cosine of their embeddings; same-identity pairs are positives, the others negatives. The
  ROC over thresholds gives `roc_auc`, the true accept rate at a false accept rate
  (`tar@far=0.01`: the largest TAR whose FAR does not exceed 1%, read off the ROC step
  function without interpolation) and the best accuracy over thresholds with the threshold
  that gives it (a pair is "same" when its similarity is >= the threshold);
- identification ("who is this?"): each probe takes the identity of its nearest gallery
  samples by cosine; `rank1` is the share of probes whose nearest gallery sample has their
  identity (rank-k: one of the k nearest, CMC as re-identification papers count it).

The ROC and the AUC are scikit-learn's (`sklearn.metrics.roc_curve`, `roc_auc_score`;
`pip install 'tfkd[faces]'`); pairs and similarities are computed here in float64.
Embeddings are renormalised before the cosine, so dequantized int8 outputs (whose norm is
only about 1) and unnormalised features score as their directions do; an all-zero
embedding has similarity 0 with everything.

Pairs: by default every pair i < j of the set, in the order of `numpy.triu_indices(n, 1)`
(n (n - 1) / 2 pairs: 500k for 1000 samples); `pairs=` (P, 2) indices scores a fixed list
instead (LFW's 6000 pairs, say).

Example:

    >>> import numpy as np, tfkd.tflite as tfl
    >>> e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])       # 2 identities, 2 each
    >>> v = tfl.verification(e, [0, 0, 1, 1])
    >>> v["roc_auc"], v["tar@far=0.1"], v["accuracy"]
    (1.0, 1.0, 1.0)
    >>> tfl.identification(e, [0, 0, 1, 1])                          # leave-one-out
    {'rank1': 1.0, 'num_probes': 4}
    >>> tfl.decisions(e, v["threshold"]).tolist()                    # pairs (0,1) (0,2) ...
    [True, False, False, False, False, True]
"""
from __future__ import annotations

import numbers
import re

import numpy as np

from .errors import RepresentativeDataError, TFLiteError

# Beyond this many pairs the similarities and sklearn's sorting take gigabytes: ask for a
# fixed pair list or fewer samples instead of swapping.
MAX_PAIRS = 50_000_000
# Probes scored against the gallery per block (bounds the similarity block to ~64 MB).
_BLOCK = 2048


# The names `tfkd.tflite.evaluate` computes here (embedding outputs): "tar@far=<far>" takes
# any false accept rate ("tar@far=1e-3") and "rank<k>" any k ("rank5").
EMBEDDING_METRICS = ("roc_auc", "tar@far=0.01", "tar@far=0.1", "verification_accuracy",
                     "verification_threshold", "rank1")
_VERIFICATION_NAMES = {"roc_auc": "roc_auc", "verification_accuracy": "accuracy",
                       "verification_threshold": "threshold"}


def parse_metric(name):
    """("verification", key in `verification`'s dict, far or None) / ("rank", k, None) for
    an embedding metric name, None for any other name."""
    if not isinstance(name, str):
        return None
    if name in _VERIFICATION_NAMES:
        return "verification", _VERIFICATION_NAMES[name], None
    m = re.fullmatch(r"tar@far=(.+)", name)
    if m:
        try:
            far = float(m.group(1))
        except ValueError:
            raise TFLiteError(f"{name!r}: the false accept rate after 'tar@far=' is a number, "
                              "e.g. 'tar@far=0.001' or 'tar@far=1e-3'.") from None
        _check_far(far)
        return "verification", far_key(far), far
    m = re.fullmatch(r"rank(\d+)", name)
    if m and int(m.group(1)) >= 1:
        return "rank", int(m.group(1)), None
    return None


def _sklearn_metrics():
    try:
        from sklearn import metrics
    except ImportError as e:
        raise TFLiteError(
            "Verification metrics use scikit-learn's ROC: pip install 'tfkd[faces]' "
            "(or scikit-learn>=1.3).") from e
    return metrics


def check_embeddings(embeddings, what="embeddings"):
    """(N, D) float64 embeddings, with clear errors for other shapes and NaN / inf."""
    e = np.asarray(embeddings)
    if e.dtype.kind not in "biuf":
        raise TFLiteError(f"The {what} have dtype {e.dtype}: give numbers, (N, D).")
    e = e.astype(np.float64)
    if e.ndim != 2:
        raise TFLiteError(
            f"The {what} have shape {e.shape}: give one vector per sample, (N, D) (an "
            "embedding model ends in Dense + L2 normalisation, not in a feature map).")
    bad = ~np.isfinite(e).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise TFLiteError(
            f"The {what} hold NaN or inf in {len(rows)} of {len(e)} rows (first: "
            f"{rows[:5].tolist()}): the model diverged or was fed values it does not expect "
            "(pixels 0-255 for a model that starts with Rescaling(1/255)). Check the inputs "
            "and the trained weights; drop those samples to score the others.")
    return e


def check_labels(labels, n, what="labels"):
    """Identity labels as a 1-D array of length `n`."""
    if labels is None:
        raise RepresentativeDataError(
            "Verification needs identity labels: pass (images, labels) with one integer "
            "identity per sample.")
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise RepresentativeDataError(
            f"The {what} have shape {y.shape}: give one identity per sample, (N,) integers "
            "(not one-hot rows).")
    if len(y) != n:
        raise RepresentativeDataError(
            f"{n} embeddings but {len(y)} {what}: give one identity per embedding (same "
            "samples, same order).")
    return y


def _normalized(e):
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norm, 1e-12)


def _check_pairs(pairs, n):
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or p.dtype.kind not in "iu":
        raise RepresentativeDataError(
            f"pairs of shape {p.shape} and dtype {p.dtype}: give (P, 2) integer indices into "
            "the samples.")
    if len(p) == 0:
        raise RepresentativeDataError("pairs is empty: give at least one (i, j) pair.")
    if p.min() < 0 or p.max() >= n:
        raise RepresentativeDataError(
            f"pairs index samples {int(p.min())}..{int(p.max())} but there are {n} samples "
            "(indices 0..n-1, after max_samples).")
    return p.astype(np.int64)


def _similarities(e, pairs=None):
    """Cosine of each pair: every i < j (triu order) or the given (P, 2) pairs."""
    u = _normalized(e)
    n = len(u)
    if pairs is not None:
        p = _check_pairs(pairs, n)
        return np.einsum("ij,ij->i", u[p[:, 0]], u[p[:, 1]])
    count = n * (n - 1) // 2
    if count > MAX_PAIRS:
        raise RepresentativeDataError(
            f"{n} samples make {count:,} pairs (more than {MAX_PAIRS:,}): score a fixed list "
            "with pairs= (LFW's 6000, say) or fewer samples (max_samples=).")
    return np.concatenate([u[i + 1:] @ u[i] for i in range(n - 1)]) if n > 1 else \
        np.zeros(0)


def _same(y, pairs=None):
    n = len(y)
    if pairs is not None:
        p = _check_pairs(pairs, n)
        return y[p[:, 0]] == y[p[:, 1]]
    return np.concatenate([y[i + 1:] == y[i] for i in range(n - 1)]) if n > 1 else \
        np.zeros(0, bool)


def pair_similarities(embeddings, labels=None, pairs=None):
    """(similarities, same) of every pair i < j (or of `pairs`).

    Args:
      embeddings: (N, D), any scale (renormalised here).
      labels: (N,) identities, or None.
      pairs: optional (P, 2) sample indices; default every i < j, in
        `numpy.triu_indices(N, 1)` order.

    Returns:
      float64 (P,) cosine similarities and bool (P,) same-identity flags (None without
      labels).
    """
    e = check_embeddings(embeddings)
    sims = _similarities(e, pairs)
    if labels is None:
        return sims, None
    return sims, _same(check_labels(labels, len(e)), pairs)


def _verification_pairs(embeddings, labels, pairs):
    e = check_embeddings(embeddings)
    y = check_labels(labels, len(e))
    identities = np.unique(y)
    if len(identities) < 2:
        raise RepresentativeDataError(
            f"Verification needs at least 2 identities; the labels hold {len(identities)}: "
            "different-identity pairs are what measures false accepts. Add samples of other "
            "identities.")
    sims, same = _similarities(e, pairs), _same(y, pairs)
    if not same.any():
        raise RepresentativeDataError(
            f"No pair of samples shares an identity ({len(identities)} identities, "
            f"{len(same)} pairs): verification needs same-identity pairs. Give at least 2 "
            "images of some identities" + (", or pairs= that include such pairs."
                                          if pairs is not None else "."))
    if same.all():
        raise RepresentativeDataError(
            "Every pair given shares an identity: verification needs different-identity "
            "pairs too. Include pairs of different identities in pairs=.")
    return sims, same


def _check_far(far):
    fars = (far,) if isinstance(far, numbers.Real) else tuple(far)
    for f in fars:
        if not isinstance(f, numbers.Real) or not 0 < f <= 1:
            raise TFLiteError(f"far={f!r}: a false accept rate is a number in (0, 1], e.g. "
                              "1e-3 for TAR@FAR=0.1%.")
    return tuple(float(f) for f in fars)


def far_key(far):
    """The result key of TAR at `far`: "tar@far=0.01" (the `:g` form of the number)."""
    return f"tar@far={float(far):g}"


def _tar_at(fpr, tpr, far):
    # Exact comparison is safe: sklearn's fpr is fp / negatives, correctly rounded, as is the
    # literal far; the margin only absorbs far given as a computed value (1 / 100).
    return float(tpr[fpr <= far * (1 + 1e-9)].max())


def verification(embeddings, labels, far=(1e-2, 1e-1), pairs=None):
    """Verification scores of embeddings of labelled samples, over all pairs i < j.

    Args:
      embeddings: (N, D) (float or dequantized int8; renormalised here).
      labels: (N,) integer identities.
      far: the false accept rates to report TAR at.
      pairs: optional (P, 2) sample indices to score instead of every pair.

    Returns:
      dict: roc_auc; "tar@far=<far>" for each far (`far_key`): the largest true accept
      rate among thresholds whose false accept rate is <= far (0 when even the highest
      threshold lets more through); accuracy, the best share of pairs decided right over
      thresholds (same when similarity >= threshold), and threshold, the highest one that
      gives it; balanced_accuracy and balanced_threshold, the same on the mean of the true
      accept and true reject rates (the accuracy of a protocol with as many same as
      different pairs, LFW's: over all pairs of a test set, where different pairs are ~90%,
      "always different" already scores ~0.9 in `accuracy`); positive_pairs and
      negative_pairs.

    Raises:
      RepresentativeDataError: fewer than 2 identities, no same-identity pair, labels that
        do not match the embeddings.
      TFLiteError: NaN / inf embeddings, embeddings that are not (N, D), a bad far.
    """
    fars = _check_far(far)
    sims, same = _verification_pairs(embeddings, labels, pairs)
    metrics = _sklearn_metrics()
    fpr, tpr, thresholds = metrics.roc_curve(same, sims, drop_intermediate=False)
    positives, negatives = int(same.sum()), int((~same).sum())
    result = {"roc_auc": float(metrics.roc_auc_score(same, sims))}
    for f in fars:
        result[far_key(f)] = _tar_at(fpr, tpr, f)
    correct = tpr * positives + (1.0 - fpr) * negatives
    best = int(np.argmax(correct))  # the first maximum: the highest such threshold
    threshold = float(thresholds[best])
    if not np.isfinite(threshold):  # "nothing is the same" wins: just above every pair
        threshold = float(np.nextafter(sims.max(), np.inf))
    balanced = (tpr + 1.0 - fpr) / 2.0
    b = int(np.argmax(balanced))
    b_threshold = float(thresholds[b]) if np.isfinite(thresholds[b]) else threshold
    result.update(accuracy=float(correct[best] / (positives + negatives)),
                  threshold=threshold, balanced_accuracy=float(balanced[b]),
                  balanced_threshold=b_threshold, positive_pairs=positives,
                  negative_pairs=negatives)
    return result


def roc(embeddings, labels, pairs=None, drop_intermediate=True):
    """(fpr, tpr, thresholds) of the verification ROC, from `sklearn.metrics.roc_curve`
    over every pair i < j (or `pairs`): for plotting (thresholds decrease; the first is
    inf, where nothing is accepted)."""
    sims, same = _verification_pairs(embeddings, labels, pairs)
    return _sklearn_metrics().roc_curve(same, sims, drop_intermediate=drop_intermediate)


def decisions(embeddings, threshold, pairs=None):
    """The same / different decision (True = same: cosine >= threshold) of every pair i < j
    (`numpy.triu_indices` order) or of `pairs`: compare a Keras model's with its file's."""
    if not isinstance(threshold, numbers.Real) or not np.isfinite(threshold):
        raise TFLiteError(f"threshold={threshold!r}: give a cosine similarity, a number "
                          "(e.g. verification(...)['threshold']).")
    return _similarities(check_embeddings(embeddings), pairs) >= threshold


def cosine(a, b):
    """Row-wise cosine similarity of two (N, D) sets of embeddings (float64 (N,))."""
    a, b = check_embeddings(a, "first embeddings"), check_embeddings(b, "second embeddings")
    if a.shape != b.shape:
        raise TFLiteError(f"Embeddings of shapes {a.shape} and {b.shape}: compare the same "
                          "samples with models of the same width.")
    return np.einsum("ij,ij->i", _normalized(a), _normalized(b))


def _check_ranks(ranks):
    ranks = (ranks,) if isinstance(ranks, numbers.Integral) else tuple(ranks)
    if not ranks or any(not isinstance(k, numbers.Integral) or k < 1 for k in ranks):
        raise TFLiteError(f"ranks={ranks!r}: give positive integers, e.g. (1, 5).")
    return tuple(int(k) for k in ranks)


def identification(gallery_embeddings, gallery_labels, probe_embeddings=None,
                   probe_labels=None, ranks=(1,)):
    """Closed-set identification by cosine nearest neighbours: rank-k accuracy.

    A probe is identified at rank k when one of its k most similar gallery samples has its
    identity (CMC, per sample). Ties count against the probe: a gallery sample of another
    identity as similar as the best one of its own ranks before it, so a model that maps
    everything to one point scores 0, not 1.

    Args:
      gallery_embeddings, gallery_labels: the enrolled samples (N, D) and identities (N,).
      probe_embeddings, probe_labels: the queries (M, D), (M,); every probe identity must be
        in the gallery. None (both): leave-one-out over the gallery, each sample a probe
        against all the others, samples whose identity has no other sample left out.
      ranks: the k of each "rank<k>" key.

    Returns:
      {"rank1": ..., "rank5": ..., "num_probes": M}.
    """
    ranks = _check_ranks(ranks)
    g = _normalized(check_embeddings(gallery_embeddings, "gallery embeddings"))
    gy = check_labels(gallery_labels, len(g), "gallery labels")
    leave_one_out = probe_embeddings is None
    if leave_one_out:
        if probe_labels is not None:
            raise TFLiteError("probe_labels without probe_embeddings: give both, or neither "
                              "for leave-one-out over the gallery.")
        values, counts = np.unique(gy, return_counts=True)
        keep = np.flatnonzero(np.isin(gy, values[counts >= 2]))
        if not len(keep):
            raise RepresentativeDataError(
                f"Leave-one-out identification needs identities with at least 2 samples; "
                f"none of the {len(values)} has: add images, or pass a gallery and probes.")
        p, py = g[keep], gy[keep]
    else:
        p = _normalized(check_embeddings(probe_embeddings, "probe embeddings"))
        py = check_labels(probe_labels, len(p), "probe labels")
        if p.shape[1] != g.shape[1]:
            raise TFLiteError(f"Probe embeddings of width {p.shape[1]} against a gallery of "
                              f"width {g.shape[1]}: embed both with the same model.")
        missing = np.setdiff1d(np.unique(py), np.unique(gy))
        if len(missing):
            raise RepresentativeDataError(
                f"{len(missing)} probe identities are not in the gallery (first: "
                f"{missing[:5].tolist()}): closed-set identification enrols every probe "
                "identity. Add them to the gallery, or drop those probes.")
        keep = None
    # The rank of each probe's first correct match: 1 + the gallery samples of other
    # identities at least as similar as its best own-identity one.
    first = np.empty(len(p), np.int64)
    for start in range(0, len(p), _BLOCK):
        s = p[start:start + _BLOCK] @ g.T
        if leave_one_out:
            rows = np.arange(len(s))
            s[rows, keep[start:start + _BLOCK]] = -np.inf  # not its own match
        mate = gy[None, :] == py[start:start + _BLOCK, None]
        if leave_one_out:
            mate[rows, keep[start:start + _BLOCK]] = False
        best = np.where(mate, s, -np.inf).max(axis=1)
        first[start:start + _BLOCK] = 1 + np.sum(~mate & (s >= best[:, None]), axis=1)
    result = {f"rank{k}": float(np.mean(first <= k)) for k in ranks}
    result["num_probes"] = int(len(p))
    return result


__all__ = ["verification", "roc", "identification", "decisions", "pair_similarities",
           "cosine", "far_key", "parse_metric", "check_embeddings", "EMBEDDING_METRICS",
           "MAX_PAIRS"]
