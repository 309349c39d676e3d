"""How closely a `.tflite` follows its Keras model.

For quantized outputs the error is given in LSB (units of the output scale): a mean below one
LSB means the int8 graph computes what the Keras (QAT) model computes, up to rounding. For
float outputs it is the absolute error.

Agreement of decisions: `top1_agreement` is the fraction of positions where the argmax over
the last (class) axis is the same in both models. A classifier has one position per sample,
so it is the share of samples given the same class; a dense output (H, W, C) per sample has
one per pixel, so it is the share of pixels, and `pixel_agreement` (None for non-dense
outputs) says so by name. Neither looks at labels: parity compares the two models, not either
with the truth (that is `evaluate`).

Detectors (a file ending in `TFLite_Detection_PostProcess`): the outputs are lists of boxes,
not arrays to subtract, so `parity` compares detections instead (`compare_detections`): the
share of the Keras model's detections scoring at least `score_threshold` that the file
found too (same class, IoU >= `iou_threshold`), the reverse, the score differences of the
matched pairs and how often both find as many detections above the threshold.

Embedding outputs (L2-normalised (N, D): the file's metadata says "embedding", a threshold
is given, or the Keras outputs are unit vectors that are not probabilities): the same error
figures, plus `compare_embeddings`' per-sample cosine between the two models and the share
of pairs of samples whose same / different decision agrees at one threshold (the given one,
else the Keras model's best balanced-accuracy threshold on the labelled pairs), and both
models' TAR at a FAR.

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = tfl.convert(m, "/tmp/p.tflite")
    >>> r = tfl.parity(m, "/tmp/p.tflite", np.random.rand(10, 4).astype("float32"))
    >>> r["top1_agreement"], r["num_samples"]
    (1.0, 10)
"""
from __future__ import annotations

import numpy as np

from .data import iter_samples
from .errors import EmptyDataError, RepresentativeDataError, TFLiteError
from .evaluate import DETECTION_OUTPUTS, DetectionRunner, Runner, input_values, is_detector, \
    run_on_data
from .verification import cosine, decisions, far_key, verification
from .metadata import recorded_output_meaning


def parity(keras_model, model, data, max_samples=1000, batch_size=64, output_index=0,
           score_threshold=0.3, iou_threshold=0.5, threshold=None, far=0.1, embedding=None):
    """Compares a Keras model with a `.tflite` on the same inputs.

    Args:
      keras_model: the Keras model the file came from (a QAT model for "qat" files). For a
        detection file: the Keras export model (`tfkd.students.detection.export_model`,
        whose `predict` gives boxes / classes / scores / count), or its detections on `data`
        already computed, as a dict (e.g. `tfkd.Anchors.detect` of the raw detector's
        outputs).
      model: path to the `.tflite` (or its bytes).
      data: inputs; see `tfkd.tflite.data`. Labels, if any, are ignored, except an
        embedding output's identities (the threshold and TARs of `compare_embeddings`).
      max_samples: how many samples to compare.
      score_threshold, iou_threshold: detection files only, see `compare_detections`.
      threshold, far: embedding outputs only (`compare_embeddings`): the cosine at which a
        pair is "same" (default: the Keras model's best balanced-accuracy threshold on the
        pairs of the samples, when `data` has identity labels) and the false accept rate of
        the TARs reported.
      embedding: whether the output is an embedding; None: when the file's metadata says
        so (output_meaning="embedding"), when `threshold` is given, or when the Keras
        model's outputs are unit vectors (N, D) that are not probabilities.

    Raises:
      TFLiteError: the Keras model's output does not have the file's width.

    Returns:
      For a detection file, `compare_detections`' dict. Otherwise a
      dict: num_samples; top1_agreement (argmax agreement over the class axis, per sample
      for classifiers and per pixel for dense outputs; None for single-value outputs);
      pixel_agreement (dense outputs, (H, W, C) per sample: the fraction of pixels whose
      argmax matches; None otherwise); mean_abs_error and max_abs_error (float units);
      output_scale, mean_lsb, max_lsb (None for float outputs). For an embedding output,
      top1_agreement is None (the argmax of an embedding decides nothing) and
      `compare_embeddings`' keys are added: mean_cosine, min_cosine (per sample),
      decision_agreement (share of pairs i < j with the same same / different decision at
      `threshold`), threshold, threshold_source, "keras_tar@far=0.1", "file_tar@far=0.1".

    Example, a dense output:

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> seg = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 1)])
        >>> _ = tfl.convert(seg, "/tmp/pseg.tflite")
        >>> r = tfl.parity(seg, "/tmp/pseg.tflite", np.random.rand(5, 6, 6, 3))
        >>> r["pixel_agreement"] == r["top1_agreement"] == 1.0
        True
    """
    if is_detector(model):
        return _detection_parity(keras_model, model, data, max_samples, batch_size,
                                 score_threshold, iou_threshold)
    runner = Runner(model, output_index=output_index)
    xs, tfl_out, labels = run_on_data(runner, data, max_samples=max_samples)
    # The Keras model takes the values the data stands for: int8 / uint8 data in the file's
    # own input dtype is already quantized and is dequantized for it (see quantize_input).
    keras_out = keras_model.predict(input_values(xs, runner.input), batch_size=batch_size,
                                    verbose=0)
    if isinstance(keras_out, (list, tuple)):
        keras_out = keras_out[output_index]
    elif isinstance(keras_out, dict):
        keras_out = list(keras_out.values())[output_index]
    keras_out = np.asarray(keras_out, dtype=np.float32)
    if keras_out.size != tfl_out.size:
        raise TFLiteError(
            f"The Keras model's output {output_index} has shape {tuple(keras_out.shape[1:])} "
            f"per sample (width {keras_out.shape[-1] if keras_out.ndim > 1 else 1}) but the "
            f".tflite file's has {tuple(tfl_out.shape[1:])} (width "
            f"{tfl_out.shape[-1] if tfl_out.ndim > 1 else 1}): pass the Keras model the file "
            "was converted from (the quantization-aware model for a 'qat' file), or pick the "
            "matching output with output_index=.")
    keras_out = keras_out.reshape(tfl_out.shape)
    err = np.abs(keras_out - tfl_out)
    detail = runner.output
    scale = detail["quantization"][0] if np.dtype(detail["dtype"]).kind in "iu" else 0.0
    top1 = None
    if tfl_out.ndim >= 2 and tfl_out.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(keras_out, -1) == np.argmax(tfl_out, -1)))
    dense = tfl_out.ndim - 1 >= 3  # (H, W, C) per sample
    if embedding is None:
        embedding = threshold is not None or recorded_output_meaning(model) == "embedding" \
            or _unit_rows(keras_out)
    if embedding and tfl_out.ndim != 2:
        raise TFLiteError(
            f"An embedding is (D,) per sample; output {output_index} of the file has shape "
            f"{list(tfl_out.shape[1:])}: pick the embedding with output_index=.")
    result = {
        "num_samples": int(len(xs)),
        "top1_agreement": None if embedding else top1,
        "pixel_agreement": top1 if dense else None,
        "mean_abs_error": float(err.mean()),
        "max_abs_error": float(err.max()),
        "output_scale": float(scale) if scale else None,
        "mean_lsb": float(err.mean() / scale) if scale else None,
        "max_lsb": float(err.max() / scale) if scale else None,
    }
    if embedding:
        result.update(compare_embeddings(keras_out, tfl_out, labels=labels,
                                         threshold=threshold, far=far))
    return result


def _unit_rows(out):
    """Whether (N, D) outputs are unit vectors that are not probabilities (a softmax row
    has norm 1 only when one-hot): what an L2-normalised embedding head gives."""
    if out.ndim != 2 or out.shape[1] < 2:
        return False
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    probabilities = np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)
    return bool(np.all(np.abs(norms - 1.0) < 1e-3) and not probabilities)


def _detection_parity(keras_model, model, data, max_samples, batch_size, score_threshold,
                      iou_threshold):
    from .evaluate import _stack_detections

    runner = DetectionRunner(model)
    xs, dets = [], []
    for x, _ in iter_samples(data, runner.sample_shape, max_samples=max_samples):
        xs.append(x)
        dets.append(runner.detect(x))
    if not dets:
        raise EmptyDataError("The data set is empty: it yielded no sample.")
    file_dets = _stack_detections(dets)
    if isinstance(keras_model, dict):
        keras_dets = keras_model
    else:
        values = input_values(np.stack(xs), runner.input)
        # The export model has a static batch of 1 (it is what the file is made from).
        keras_dets = keras_model.predict(
            values, batch_size=batch_size if _dynamic_batch(keras_model) else 1, verbose=0)
    if not isinstance(keras_dets, dict) or not set(DETECTION_OUTPUTS) <= set(keras_dets):
        got = sorted(keras_dets) if isinstance(keras_dets, dict) else type(keras_dets).__name__
        raise TFLiteError(
            f"The .tflite is a detector, so the Keras side must give detections {{'boxes', "
            f"'classes', 'scores', 'count'}}; got {got}. Pass the export model the file was "
            "converted from (tfkd.students.detection.export_model(model, anchors)), not the raw "
            "detector, or a dict of its detections (tfkd.Anchors.detect).")
    if len(np.asarray(keras_dets["boxes"])) != len(dets):
        raise TFLiteError(
            f"The Keras detections cover {len(np.asarray(keras_dets['boxes']))} images but "
            f"the data has {len(dets)} (max_samples={max_samples}): compute them on the same "
            "images.")
    return compare_detections(keras_dets, file_dets, score_threshold=score_threshold,
                              iou_threshold=iou_threshold)


def _dynamic_batch(model):
    try:
        return all(t.shape[0] is None for t in model.inputs)
    except (AttributeError, TypeError, ValueError):
        return True


def _iou(a, b):
    """IoU of every box of a (n, 4) with every box of b (m, 4), [ymin, xmin, ymax, xmax]."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _match(ref, other, score_threshold, iou_threshold):
    """Greedy, highest score first: each detection of `ref` scoring >= the threshold takes the
    unmatched detection of `other` (any score) of its class that overlaps it most, if the IoU
    is >= iou_threshold. Returns (number of ref detections, [(ref i, other j, iou)])."""
    rb, rc, rs, rn = ref
    ob, oc, os_, on = other
    keep = [i for i in np.argsort(-rs[:rn], kind="stable") if rs[i] >= score_threshold]
    if not keep:
        return 0, []
    iou = _iou(rb[keep], ob[:on]) if on else np.zeros((len(keep), 0))
    used, pairs = set(), []
    for row, i in enumerate(keep):
        best, best_iou = None, iou_threshold
        for j in range(on):
            if j not in used and oc[j] == rc[i] and iou[row, j] >= best_iou:
                best, best_iou = j, iou[row, j]
        if best is not None:
            used.add(best)
            pairs.append((i, best, float(iou[row, best])))
    return len(keep), pairs


def _per_image(dets, n):
    boxes = np.asarray(dets["boxes"], np.float64)
    classes = np.round(np.nan_to_num(np.asarray(dets["classes"], np.float64), nan=-1)
                       ).astype(np.int64)
    scores = np.asarray(dets["scores"], np.float64)
    count = np.round(np.asarray(dets.get("count", np.full(n, boxes.shape[1])))).astype(int)
    count = np.minimum(count.reshape(n), boxes.shape[1])
    return [(boxes[i], classes[i], scores[i], int(count[i])) for i in range(n)]


def compare_detections(reference, candidate, score_threshold=0.3, iou_threshold=0.5):
    """How closely two sets of detections of the same images agree (Keras vs `.tflite`).

    Args:
      reference, candidate: dicts `boxes` (N, K, 4) normalised [ymin, xmin, ymax, xmax],
        `classes` (N, K), `scores` (N, K), `count` (N,) (K may differ between the two).
      score_threshold: detections scoring below it are not required to be found (those
        above may still be matched by a lower-scoring one: a score of 0.29 vs 0.31 is a
        score difference, not a miss).
      iou_threshold: the IoU at which two detections of the same class are the same.

    Returns:
      dict: num_samples; keras_detections / file_detections (detections scoring >=
      score_threshold: reference / candidate); keras_matched (share of those reference
      detections that a candidate detection of the same class overlaps by IoU >=
      iou_threshold, greedy by score; None when there are none) and file_matched (the
      reverse); mean_abs_score_diff, max_abs_score_diff and mean_iou of the matched
      pairs (reference side; None without pairs); count_agreement (share of images in which
      both find as many detections above score_threshold).

    Example:

        >>> import numpy as np, tfkd.tflite as tfl
        >>> a = {"boxes": np.array([[[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]]),
        ...      "classes": np.array([[0, 1]]), "scores": np.array([[0.9, 0.5]]),
        ...      "count": np.array([2])}
        >>> b = dict(a, scores=np.array([[0.88, 0.2]]))
        >>> r = tfl.compare_detections(a, b)
        >>> r["keras_matched"], r["file_matched"], round(r["mean_abs_score_diff"], 2)
        (1.0, 1.0, 0.16)
    """
    n = len(np.asarray(reference["boxes"]))
    if len(np.asarray(candidate["boxes"])) != n:
        raise TFLiteError(
            f"compare_detections: {n} reference images but "
            f"{len(np.asarray(candidate['boxes']))} candidate ones; compare the same images.")
    ref, cand = _per_image(reference, n), _per_image(candidate, n)
    n_ref = n_cand = matched_ref = matched_cand = agree = 0
    diffs, ious = [], []
    for r, c in zip(ref, cand):
        k, pairs = _match(r, c, score_threshold, iou_threshold)
        n_ref += k
        matched_ref += len(pairs)
        diffs += [abs(r[2][i] - c[2][j]) for i, j, _ in pairs]
        ious += [v for _, _, v in pairs]
        k2, pairs2 = _match(c, r, score_threshold, iou_threshold)
        n_cand += k2
        matched_cand += len(pairs2)
        agree += int(k == k2)
    return {
        "num_samples": n,
        "keras_detections": n_ref,
        "file_detections": n_cand,
        "keras_matched": matched_ref / n_ref if n_ref else None,
        "file_matched": matched_cand / n_cand if n_cand else None,
        "mean_abs_score_diff": float(np.mean(diffs)) if diffs else None,
        "max_abs_score_diff": float(np.max(diffs)) if diffs else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "count_agreement": agree / n if n else None,
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
    }


def compare_embeddings(keras_embeddings, file_embeddings, labels=None, threshold=None,
                       far=0.1):
    """How closely a file's embeddings follow its Keras model's on the same samples.

    Args:
      keras_embeddings, file_embeddings: (N, D) of the same samples.
      labels: (N,) identities, or None: gives the Keras model's balanced-accuracy threshold
        (when `threshold` is None) and both models' TAR at `far`.
      threshold: the cosine at which a pair is "same"; None: the Keras model's
        best balanced-accuracy threshold on these samples' pairs (needs labels).

    Returns:
      dict: mean_cosine, min_cosine (per sample, Keras vs file); decision_agreement (share
      of pairs i < j given the same same / different decision by both at `threshold`; None
      without a threshold or a pair), threshold, threshold_source ("given",
      "keras_balanced_accuracy" or None); "keras_tar@far=<far>" and "file_tar@far=<far>"
      (None without labels).
    """
    cos = cosine(keras_embeddings, file_embeddings)
    source = "given" if threshold is not None else None
    tar = {}
    key = far_key(far)
    if labels is not None:
        try:
            keras_v = verification(keras_embeddings, labels, far=(far,))
        except RepresentativeDataError as e:
            raise RepresentativeDataError(
                f"{e} (parity compares the embedding file's verification with the Keras "
                "model's on the labelled samples; pass data without labels and threshold= "
                "to compare decisions only.)") from e
        file_v = verification(file_embeddings, labels, far=(far,))
        tar = {"keras_" + key: keras_v[key], "file_" + key: file_v[key]}
        if threshold is None:
            threshold, source = keras_v["balanced_threshold"], "keras_balanced_accuracy"
    agreement = None
    if threshold is not None and len(cos) >= 2:
        agreement = float(np.mean(decisions(keras_embeddings, threshold) ==
                                  decisions(file_embeddings, threshold)))
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "decision_agreement": agreement,
        "threshold": None if threshold is None else float(threshold),
        "threshold_source": source,
        "keras_" + key: tar.get("keras_" + key),
        "file_" + key: tar.get("file_" + key),
    }


__all__ = ["parity", "compare_detections", "compare_embeddings"]
