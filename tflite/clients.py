"""The `.tflite` in the client an Android app runs: MediaPipe Tasks, compared with LiteRT.

MediaPipe's Python `mediapipe.tasks.python.vision` API runs the same C++ task graphs as its
Android API (`ImageClassifier`, `ObjectDetector`, `ImageSegmenter`, `ImageEmbedder`): the
file's metadata decides how pixels go in and what comes out (labels, box layout, mask
activation). A file that loads here and agrees with `tfkd.tflite.evaluate` on real images is
one an app can drop in. `pip install tfkd[mediapipe]`.

- `mediapipe_outputs(path, images)`: what MediaPipe returns, per image (category names and
  scores, boxes, masks), by the file's kind (`metadata.model_kind`).
- `mediapipe_embeddings(path, images)`: the (N, D) embeddings of `ImageEmbedder`.
- `mediapipe_agreement(path, images)`: MediaPipe against LiteRT on the same file and images:
  classifiers' top-1 agreement and label names; detectors' matched detections (same class
  name, score and box); segmenters' category-mask agreement; embedders' cosine.

Images are uint8 (N, H, W, 3) at the model's input size (MediaPipe would resize others
itself, which is not what this compares).

Example (needs `mediapipe`):

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2), keras.layers.Softmax()])
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype("uint8")
    >>> _ = tfl.convert(m, "/tmp/mp.tflite", target="mediapipe", labels=["cat", "dog"])
    >>> tfl.mediapipe_agreement("/tmp/mp.tflite", x)["top1_agreement"]
    1.0
"""
from __future__ import annotations

import os

import numpy as np

from .errors import TFLiteError
from .inspection import inspect
from .metadata import read_metadata


class MediaPipeMissingError(TFLiteError):
    """`mediapipe` is not installed."""


def _vision():
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as e:
        raise MediaPipeMissingError(
            "Running a file in MediaPipe Tasks needs pip install 'tfkd[mediapipe]'.") from e
    return mp, BaseOptions, vision


def _images(images, report):
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    shape = tuple(report.inputs[0].shape[1:])
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise TFLiteError(f"MediaPipe check: images of shape {x.shape[1:]} for a model input "
                          f"{shape}: give (N, H, W, C) images at the model's size.")
    if shape[-1] != 3:
        # Measured (mediapipe 1.2.3, ImageEmbedder): a 1-channel input is refused at load
        # ("Only RGB color space is supported for now"; with RGB metadata: "depth = 3 or 4").
        raise TFLiteError("MediaPipe check: MediaPipe's vision tasks take RGB models and "
                          f"images; this model's input has {shape[-1]} channel(s), which "
                          "MediaPipe refuses when it loads the file. Export a 3-channel "
                          "model (grayscale images repeated on 3 channels).")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def _kind(path):
    meta = read_metadata(path)
    if meta is None:
        raise TFLiteError(
            f"'{path}' has no TFLite metadata: MediaPipe's vision tasks need it. Export with "
            "tfkd.tflite.convert(..., target='mediapipe', labels=...).")
    return meta["kind"], meta


def mediapipe_outputs(path, images):
    """MediaPipe's results for `images`, one entry per image.

    classifier: [(category_name, score), ...] best first; detector: [{"box": (x, y, w, h)
    pixels, "name", "score"}, ...]; segmenter: {"category_mask": (H, W) uint8,
    "confidence": (H, W, C) float32}; embedder: the embedding vector.
    """
    mp, BaseOptions, vision = _vision()
    path = os.fspath(path)
    report = inspect(path)
    x = _images(images, report)
    kind, _ = _kind(path)
    base = BaseOptions(model_asset_path=path)
    if kind == "classifier":
        options = vision.ImageClassifierOptions(base_options=base)
        task, call = vision.ImageClassifier.create_from_options(options), "classify"
    elif kind == "detector":
        options = vision.ObjectDetectorOptions(base_options=base, score_threshold=0.0)
        task, call = vision.ObjectDetector.create_from_options(options), "detect"
    elif kind == "segmenter":
        options = vision.ImageSegmenterOptions(base_options=base, output_category_mask=True,
                                               output_confidence_masks=True)
        task, call = vision.ImageSegmenter.create_from_options(options), "segment"
    elif kind == "embedder":
        options = vision.ImageEmbedderOptions(base_options=base)
        task, call = vision.ImageEmbedder.create_from_options(options), "embed"
    else:
        raise TFLiteError(f"'{path}' is a {kind!r} file; MediaPipe's vision tasks run "
                          "classifiers, detectors, segmenters and embedders.")
    results = []
    with task:
        for image in x:
            r = getattr(task, call)(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
            if kind == "classifier":
                results.append([(c.category_name, float(c.score))
                                for c in r.classifications[0].categories])
            elif kind == "detector":
                results.append([{"box": (d.bounding_box.origin_x, d.bounding_box.origin_y,
                                         d.bounding_box.width, d.bounding_box.height),
                                 "name": d.categories[0].category_name,
                                 "score": float(d.categories[0].score)}
                                for d in r.detections])
            elif kind == "segmenter":
                results.append({
                    "category_mask": np.array(r.category_mask.numpy_view())[..., 0],
                    "confidence": np.stack([np.array(m.numpy_view())[..., 0]
                                            for m in r.confidence_masks], -1)})
            else:
                results.append(np.asarray(r.embeddings[0].embedding, np.float32))
    return results


def mediapipe_embeddings(path, images, l2_normalize=False):
    """The embeddings MediaPipe's `ImageEmbedder` gives for `images`: float32 (N, D).

    The client of an Android app for an embedding file (`convert(..., output_meaning=
    "embedding")`, e.g. target="mediapipe" for uint8 pixels in): MediaPipe reads the file's
    metadata, feeds the uint8 pixels as they are (a float input through the metadata's
    normalization) and dequantizes a uint8 output. `images`: uint8 RGB (N, H, W, 3) at the
    model's input size. `l2_normalize`: MediaPipe's own option (the file's embeddings are
    normalised already when the model ends in L2 normalisation).
    """
    mp, BaseOptions, vision = _vision()
    path = os.fspath(path)
    x = _images(images, inspect(path))
    kind, _ = _kind(path)
    if kind != "embedder":
        raise TFLiteError(
            f"'{path}' is a {kind!r} file, not an embedder: convert the embedding model with "
            "output_meaning='embedding' (tfkd.tflite.convert(..., target='mediapipe', "
            "output_meaning='embedding')).")
    options = vision.ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=path),
                                          l2_normalize=bool(l2_normalize))
    out = []
    with vision.ImageEmbedder.create_from_options(options) as task:
        for image in x:
            r = task.embed(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
            out.append(np.asarray(r.embeddings[0].embedding, np.float32))
    return np.stack(out)


def mediapipe_agreement(path, images, box_tolerance=1.5):
    """How MediaPipe's results on `images` agree with LiteRT's on the same file.

    Returns {"kind", "num_images", "labels"} and, for a classifier, "top1_agreement" and
    "names_match" (MediaPipe's category names are the file's labels at LiteRT's top-1
    index); for a detector, "detection_agreement" (share of LiteRT's detections that
    MediaPipe returns with the same class name, score within 1e-5 and box within
    `box_tolerance` pixels; for a box that leaves the image MediaPipe clips the origin but
    keeps the box's extent, up to the image size, so the comparison does the same),
    "mediapipe_matched" (share of MediaPipe's detections found among LiteRT's),
    "count_agreement" (images where MediaPipe returns as many boxes as expected) and
    "duplicates_dropped": MediaPipe was measured to drop a detection whose whole-pixel
    rectangle repeats one of a higher-scoring detection (boxes that leave the image clip to
    the same rectangle), so those are not expected of it; for a segmenter, "pixel_agreement"
    (category masks) and "confidence_max_abs_diff" (against LiteRT's dequantized outputs,
    after the metadata's activation); for an embedder, "mean_cosine" and "min_cosine"
    (per image, MediaPipe's embedding against LiteRT's dequantized output).
    """
    from .evaluate import detections, run_on_data

    path = os.fspath(path)
    report = inspect(path)
    x = _images(images, report)
    kind, meta = _kind(path)
    labels = meta.get("labels")
    ours = mediapipe_outputs(path, x)
    result = {"kind": kind, "num_images": int(len(x)), "labels": labels}
    if kind == "classifier":
        _, outputs, _ = run_on_data(path, x)
        top = outputs.reshape(len(x), -1).argmax(-1)
        names = [r[0][0] if r else None for r in ours]
        expected = [labels[i] if labels else str(i) for i in top]
        result["top1_agreement"] = float(np.mean([a == b for a, b in zip(names, expected)]))
        result["names_match"] = bool(labels) and all(n in labels for n in names)
    elif kind == "detector":
        ref = detections(path, x, clip=False)
        h, w = report.inputs[0].shape[1:3]
        matched = found = total = counts = returned = dropped = 0
        for i, mp_dets in enumerate(ours):
            wanted, rects = [], set()
            for k in range(int(ref["count"][i])):  # LiteRT's are sorted by score
                y0, x0, y1, x1 = ref["boxes"][i, k]
                name = labels[int(ref["classes"][i, k])] if labels else None
                # MediaPipe's pixel rectangle: origin clipped to the image, extent the
                # box's own up to the image size (measured), truncated to whole pixels.
                box = (max(x0 * w, 0.0), max(y0 * h, 0.0), min((x1 - x0) * w, w),
                       min((y1 - y0) * h, h))
                rect = tuple(int(v) for v in box)
                if rect in rects:
                    dropped += 1
                    continue
                rects.add(rect)
                wanted.append((name, float(ref["scores"][i, k]), box))
            n = len(wanted)
            counts += int(len(mp_dets) == n)
            returned += len(mp_dets)

            def same(d, want):
                return d["name"] == want[0] and abs(d["score"] - want[1]) < 1e-5 and \
                    all(abs(a - b) <= box_tolerance for a, b in zip(d["box"], want[2]))

            total += n
            matched += sum(any(same(d, want) for d in mp_dets) for want in wanted)
            found += sum(any(same(d, want) for want in wanted) for d in mp_dets)
        result["detection_agreement"] = float(matched / total) if total else 1.0
        result["mediapipe_matched"] = float(found / returned) if returned else 1.0
        result["count_agreement"] = float(counts / len(x))
        result["num_detections"] = int(total)
        result["duplicates_dropped"] = int(dropped)
    elif kind == "segmenter":
        _, outputs, _ = run_on_data(path, x)
        if meta.get("segmenter_activation") == "SOFTMAX":
            e = np.exp(outputs - outputs.max(-1, keepdims=True))
            outputs = e / e.sum(-1, keepdims=True)
        elif meta.get("segmenter_activation") == "SIGMOID":
            outputs = 1.0 / (1.0 + np.exp(-outputs))
        masks = np.stack([r["category_mask"] for r in ours])
        conf = np.stack([r["confidence"] for r in ours])
        result["pixel_agreement"] = float(np.mean(masks == outputs.argmax(-1)))
        result["confidence_max_abs_diff"] = float(np.abs(conf - outputs).max())
    else:
        _, outputs, _ = run_on_data(path, x)
        emb = np.stack(ours)
        ref = outputs.reshape(len(x), -1)
        cos = np.sum(emb * ref, -1) / (np.linalg.norm(emb, axis=-1) *
                                       np.linalg.norm(ref, axis=-1) + 1e-12)
        result["mean_cosine"] = float(cos.mean())
        result["min_cosine"] = float(cos.min())
    return result


__all__ = ["mediapipe_outputs", "mediapipe_embeddings", "mediapipe_agreement",
           "MediaPipeMissingError"]
