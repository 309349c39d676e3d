"""Verification / identification metrics of embeddings, against float64 NumPy references.

The references are brute force: every pair i < j by two loops, every threshold tried, the
AUC as the Mann-Whitney probability that a positive pair outscores a negative one (ties
half), rank-k by sorting each probe's gallery (ties against the probe). A hand-built case
with known answers pins the TAR@FAR convention (the largest TAR among thresholds whose FAR
does not exceed the target, no interpolation).
"""
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

import tfkd.tflite as tfl  # noqa: E402

V = sys.modules["tfkd.tflite.verification"]  # `tfl.verification` is the function


def _ref_pairs(e, y):
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    sims, same = [], []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            sims.append(float(np.dot(u[i], u[j])))
            same.append(y[i] == y[j])
    return np.array(sims), np.array(same)


def _ref_verification(e, y, fars):
    s, same = _ref_pairs(e, y)
    pos, neg = s[same], s[~same]
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    thresholds = np.concatenate([[np.inf], np.sort(np.unique(s))[::-1]])
    tar = {f: max(np.mean(pos >= t) for t in thresholds if np.mean(neg >= t) <= f)
           for f in fars}
    acc = [(np.sum(pos >= t) + np.sum(neg < t)) / len(s) for t in thresholds]
    return auc, tar, max(acc), thresholds[int(np.argmax(acc))]


def _ref_rank(g, gy, p, py, k, leave_one_out=False):
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    hits = []
    for i in range(len(p)):
        others = [j for j in range(len(g)) if not (leave_one_out and j == i)]
        if leave_one_out and not any(gy[j] == py[i] for j in others):
            continue
        sims = {j: float(np.dot(p[i], g[j])) for j in others}
        best_own = max(sims[j] for j in others if gy[j] == py[i])
        rank = 1 + sum(1 for j in others if gy[j] != py[i] and sims[j] >= best_own)
        hits.append(rank <= k)
    return np.mean(hits), len(hits)


def _clusters(rng, identities=5, per=6, dim=8, noise=0.6):
    centres = rng.normal(size=(identities, dim))
    y = np.repeat(np.arange(identities), per)
    return centres[y] + noise * rng.normal(size=(len(y), dim)), y


def test_separable_identities_score_perfectly():
    rng = np.random.default_rng(0)
    e, y = _clusters(rng, noise=0.01)
    v = tfl.verification(e, y, far=(1e-3, 1e-2, 0.1))
    assert v["roc_auc"] == 1.0 and v["accuracy"] == 1.0
    assert v["tar@far=0.001"] == v["tar@far=0.01"] == v["tar@far=0.1"] == 1.0
    s, same = tfl.pair_similarities(e, y)
    assert s[~same].max() < v["threshold"] <= s[same].min()
    assert (v["positive_pairs"], v["negative_pairs"]) == (5 * 15, 435 - 75)
    assert tfl.identification(e, y, ranks=(1, 2)) == {"rank1": 1.0, "rank2": 1.0,
                                                      "num_probes": 30}
    np.testing.assert_array_equal(tfl.decisions(e, v["threshold"]), same)


def _known_case():
    """Sample 0 against samples 1..14 (pairs (0, k) only): 4 positive pairs of cosine 0.9,
    0.8, 0.6, 0.3 and 10 negatives of 0.7, 0.5, 0.4, 0.2 ... -0.4."""
    pos = [0.9, 0.8, 0.6, 0.3]
    neg = [0.7, 0.5, 0.4, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]
    angles = np.arccos(np.array(pos + neg))
    e = np.concatenate([[[1.0, 0.0]], np.stack([np.cos(angles), np.sin(angles)], 1)])
    y = np.array([0] + [0] * 4 + list(range(1, 11)))
    pairs = np.array([[0, k] for k in range(1, 15)])
    return e, y, pairs


def test_known_tar_at_far_auc_and_accuracy():
    e, y, pairs = _known_case()
    v = tfl.verification(e, y, far=(0.01, 0.1, 0.2), pairs=pairs)
    # FAR 0.1 lets one negative (0.7) through: the lowest such threshold, 0.6, accepts 3 of
    # the 4 positives. FAR 0.01 lets none: threshold above 0.7, 2 positives. FAR 0.2: 0.5.
    assert v["tar@far=0.1"] == 0.75 and v["tar@far=0.01"] == 0.5
    assert v["tar@far=0.2"] == 0.75
    assert v["roc_auc"] == pytest.approx(36 / 40)  # positives above negatives: 10+10+9+7
    # Best accuracy 12/14 at 0.8 and at 0.6: the highest such threshold is reported.
    assert v["accuracy"] == pytest.approx(12 / 14)
    assert v["threshold"] == pytest.approx(0.8)
    # Balanced: (TAR + TRR) / 2 is 0.75 at 0.8, 0.825 at 0.6, (1 + 0.7) / 2 = 0.85 at 0.3.
    assert v["balanced_accuracy"] == pytest.approx(0.85)
    assert v["balanced_threshold"] == pytest.approx(0.3)
    assert (v["positive_pairs"], v["negative_pairs"]) == (4, 10)
    fpr, tpr, thresholds = tfl.roc(e, y, pairs=pairs)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.isinf(thresholds[0])
    assert np.trapezoid(tpr, fpr) == pytest.approx(v["roc_auc"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verification_matches_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    e, y = _clusters(rng, identities=4, per=5, noise=1.2)
    fars = (0.01, 0.05, 0.1, 0.3)
    v = tfl.verification(e, y, far=fars)
    auc, tar, acc, threshold = _ref_verification(e, y, fars)
    assert v["roc_auc"] == pytest.approx(auc, abs=1e-12)
    for f in fars:
        assert v[f"tar@far={f:g}"] == pytest.approx(tar[f], abs=1e-12)
    assert v["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert v["threshold"] == pytest.approx(threshold, abs=1e-12)
    s, same = tfl.pair_similarities(e, y)
    rs, rsame = _ref_pairs(e, y)
    np.testing.assert_allclose(s, rs, atol=1e-12)
    np.testing.assert_array_equal(same, rsame)
    i, j = np.triu_indices(len(e), 1)  # the documented pair order
    np.testing.assert_array_equal(same, y[i] == y[j])
    np.testing.assert_array_equal(tfl.decisions(e, 0.2), rs >= 0.2)


def test_dequantized_and_unnormalised_embeddings_score_as_their_directions():
    rng = np.random.default_rng(3)
    e, y = _clusters(rng, noise=1.0)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    # int8 outputs of L2_NORMALIZATION: scale 1/128, zero point 0; norms only about 1.
    q = np.clip(np.round(u * 128), -128, 127) / 128
    scaled = u * rng.uniform(0.5, 3.0, (len(u), 1))
    assert tfl.verification(scaled, y) == tfl.verification(u, y)
    reference = _ref_verification(q, y, (0.1,))
    assert tfl.verification(q, y)["roc_auc"] == pytest.approx(reference[0], abs=1e-12)


def test_identification_matches_the_reference_with_a_gallery_and_leave_one_out():
    rng = np.random.default_rng(4)
    e, y = _clusters(rng, identities=6, per=4, noise=1.3)
    gallery, probes = np.arange(len(e)) % 4 == 0, np.arange(len(e)) % 4 != 0
    r = tfl.identification(e[gallery], y[gallery], e[probes], y[probes], ranks=(1, 3))
    for k in (1, 3):
        ref, n = _ref_rank(e[gallery], y[gallery], e[probes], y[probes], k)
        assert r[f"rank{k}"] == pytest.approx(ref) and r["num_probes"] == n
    # Leave-one-out: identity 6 has a single sample, so it is not a probe.
    e2, y2 = np.concatenate([e, rng.normal(size=(1, 8))]), np.append(y, 6)
    r = tfl.identification(e2, y2, ranks=(1, 2))
    for k in (1, 2):
        ref, n = _ref_rank(e2, y2, e2, y2, k, leave_one_out=True)
        assert r[f"rank{k}"] == pytest.approx(ref) and r["num_probes"] == n == 24


def test_ties_count_against_the_probe():
    constant = np.ones((6, 4))
    y = np.array([0, 0, 1, 1, 2, 2])
    assert tfl.identification(constant, y)["rank1"] == 0.0
    v = tfl.verification(constant, y)
    assert v["roc_auc"] == 0.5 and v["tar@far=0.1"] == 0.0


def test_zero_embedding_is_similar_to_nothing():
    e = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    s, _ = tfl.pair_similarities(e)
    np.testing.assert_array_equal(s, [0.0, 0.0, 0.0])


def test_errors_name_the_fix(monkeypatch):
    e = np.random.default_rng(5).normal(size=(6, 4))
    with pytest.raises(tfl.RepresentativeDataError, match="at least 2 identities"):
        tfl.verification(e, np.zeros(6))
    with pytest.raises(tfl.RepresentativeDataError, match="No pair of samples shares"):
        tfl.verification(e, np.arange(6))
    with pytest.raises(tfl.RepresentativeDataError, match="6 embeddings but 5 labels"):
        tfl.verification(e, np.arange(5))
    bad = e.copy()
    bad[2, 1] = np.nan
    with pytest.raises(tfl.TFLiteError, match=r"NaN or inf in 1 of 6 rows \(first: \[2\]\)"):
        tfl.verification(bad, [0, 0, 1, 1, 2, 2])
    with pytest.raises(tfl.TFLiteError, match=r"\(N, D\)"):
        tfl.verification(e[:, :, None], [0, 0, 1, 1, 2, 2])
    with pytest.raises(tfl.RepresentativeDataError, match="one-hot"):
        tfl.verification(e, np.eye(6))
    with pytest.raises(tfl.TFLiteError, match=r"\(0, 1\]"):
        tfl.verification(e, [0, 0, 1, 1, 2, 2], far=(0.0,))
    with pytest.raises(tfl.RepresentativeDataError, match="indices 0..n-1"):
        tfl.verification(e, [0, 0, 1, 1, 2, 2], pairs=[[0, 6]])
    with pytest.raises(tfl.RepresentativeDataError, match="not in the gallery"):
        tfl.identification(e[:4], [0, 0, 1, 1], e[4:], [2, 2])
    with pytest.raises(tfl.RepresentativeDataError, match="at least 2 samples"):
        tfl.identification(e, np.arange(6))
    with pytest.raises(tfl.TFLiteError, match="threshold"):
        tfl.decisions(e, None)
    monkeypatch.setattr(V, "MAX_PAIRS", 10)
    with pytest.raises(tfl.RepresentativeDataError, match="pairs="):
        tfl.verification(e, [0, 0, 1, 1, 2, 2])


def test_metric_names_parse():
    assert V.parse_metric("tar@far=1e-3") == ("verification", "tar@far=0.001", 0.001)
    assert V.parse_metric("rank5") == ("rank", 5, None)
    assert V.parse_metric("verification_accuracy") == ("verification", "accuracy", None)
    assert V.parse_metric("accuracy") is None and V.parse_metric("rank0") is None
    with pytest.raises(tfl.TFLiteError, match="is a number"):
        V.parse_metric("tar@far=one")
