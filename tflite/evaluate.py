"""Running a `.tflite` on data: metrics with LiteRT.

The file runs through LiteRT's `CompiledModel` where it supports it, else through the
`Interpreter` (`runtime=` on `evaluate`, `detections` and the runners chooses; see
`tfkd.tflite.runtime` for when "auto" falls back); the tensor details and so the
quantization below come from the interpreter either way, and the outputs are the same.

Samples run one at a time (the file's batch is 1 by default; a dynamic batch is resized to 1).
When the model takes int8 or uint8, data of any other numeric dtype (float, or the uint8
pixels of `tfkd.data`'s loaders for an int8 input) is quantized with the input's scale / zero
point, and data of the input's own dtype is taken as already quantized; integer outputs are
dequantized, so metrics see the same numbers as the Keras model.

Dense outputs (per-pixel scores, (H, W, C) per sample) also get "miou", "pixel_accuracy" and
"per_class_iou", counted by `tfkd.tflite.segmentation_scores` as the samples come: only the
argmax of a chunk of outputs is held, never the whole stack of logits.

Detection files (ending in `TFLite_Detection_PostProcess`, as `convert` writes a
`tfkd.students.detection.export_model`) get the COCO metrics of `tfkd.tflite.coco_map`
("map", "map50", "map75", "map_small", "map_medium", "map_large", "per_class_ap",
"per_class_ap50"); `detections(path, images)` returns the file's raw detections. Their data
is images with boxes, in the layout of `tfkd.data.detection_dataset` (batched or not):

- `(images, {"boxes": (N, M, 4), "classes": (N, M)})` arrays, or a `tf.data.Dataset` /
  generator of such `(x, {"boxes", "classes"})` pairs (`detection_dataset(..., encode=None)`
  yields exactly these); boxes normalised [ymin, xmin, ymax, xmax], class -1 on padding;
- `(images, boxes, classes)` arrays;
- a `tfkd.data` `DetectionSplit` (anything with `.images`, `.boxes`, `.classes`): its `.sizes`
  (the original image sizes) then give COCO's small / medium / large split.

Image-to-image files (super-resolution: pixels in [0, 255] in, `scale` times larger pixels
out) get "psnr" and "ssim" (`tfkd.tflite.sr_scores`: SR clipped and rounded, Y channel,
`scale` pixels shaved, means over images). Their data is `(lr, hr)` pairs, a list of them
when sizes differ (`tfkd.data.sr_pairs`); each LR image runs whole through
`super_resolve`, tiled when the file's input has a fixed size.

Embedding models (faces, re-identification: pixels in [0, 255] in, an L2-normalised (N, D)
out) get the verification / identification metrics of `tfkd.tflite.verification`: "roc_auc",
"tar@far=<far>", "verification_accuracy", "verification_threshold" over every pair of samples
i < j, and "rank<k>", leave-one-out over the set or against `gallery=(images, identities)`
(`evaluate_embeddings`). Their data is images with integer identities, and `model` may be
the Keras model as well as its file, so that both are scored by the same code;
`embeddings(model, images)` gives the float (N, D) of either (dequantized for an int8
output).

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = tfl.convert(m, "/tmp/d.tflite")
    >>> x, y = np.random.rand(20, 4).astype("float32"), np.zeros(20, "int64")
    >>> sorted(tfl.evaluate("/tmp/d.tflite", (x, y)))
    ['accuracy', 'num_samples']
    >>> seg = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 1)])
    >>> _ = tfl.convert(seg, "/tmp/seg.tflite")
    >>> masks = np.random.randint(0, 5, (10, 6, 6))          # 4 classes, 4 = void
    >>> r = tfl.evaluate("/tmp/seg.tflite", (np.random.rand(10, 6, 6, 3), masks),
    ...                  metrics=("miou", "pixel_accuracy"), ignore_class=4)
    >>> sorted(r), 0 <= r["miou"] <= 1
    (['miou', 'num_samples', 'pixel_accuracy'], True)
"""
from __future__ import annotations

import os

import numpy as np

from .data import _as_batch, _elements, _to_numpy, _X_KEYS, _Y_KEYS, iter_samples
from .errors import EmptyDataError, InputDtypeError, RepresentativeDataError, TFLiteError
from .image_quality import SR_METRICS, as_image, iter_sr_pairs, pair_scale, pair_scores, \
    summarize, tiles
from .inspection import _schema, load_interpreter, read_model_bytes
from .metadata import recorded_output_meaning
from .runtime import check_runtime, open_executor
from .metrics import _CHUNK_PIXELS, DENSE_METRICS, _ConfusionCounter, _num_classes, \
    check_ignore_class
from .verification import identification, parse_metric, verification


class Runner:
    """One single-input `.tflite`, fed one sample at a time.

    The tensor details (`input`, `output`, their dtype, shape, scale and zero point) come
    from a LiteRT `Interpreter` (`self.interpreter`); the runs go through LiteRT's
    `CompiledModel` where it supports the file, else through that interpreter (see
    `tfkd.tflite.runtime`: dynamic-shape inputs, which are resized per sample, I/O dtypes
    TensorBuffer lacks, files CompiledModel refuses). `runtime`: "auto" (that choice),
    "compiled_model" (an error where it does not apply) or "interpreter". After
    construction `self.runtime` says which one runs ("compiled_model" or "interpreter") and
    `self.fallback_reason` why "auto" fell back (None otherwise).
    """

    def __init__(self, model, num_threads=None, output_index=0, runtime="auto"):
        check_runtime(runtime)
        content = bytes(model) if isinstance(model, (bytes, bytearray)) else \
            read_model_bytes(model)
        self.interpreter = load_interpreter(model, num_threads=num_threads, delegates=True)
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise InputDtypeError(
                f"The model has {len(inputs)} inputs; evaluate/parity feed single-input "
                "models. Run multi-input models with ai_edge_litert's Interpreter directly.")
        self.input = inputs[0]
        outputs = self.interpreter.get_output_details()
        self.output = outputs[output_index]
        sig = self.input.get("shape_signature", self.input["shape"])
        self.sample_shape = tuple(None if d < 0 else int(d) for d in sig[1:])
        self.dynamic = any(d < 0 for d in sig)
        self.input_dtype = np.dtype(self.input["dtype"])
        self.executor = open_executor(content, self.interpreter, runtime=runtime,
                                      num_threads=num_threads)
        self.runtime = self.executor.runtime
        self.fallback_reason = self.executor.fallback_reason

    def prepare(self, x):
        """One sample (no batch axis) -> the array to set, with a batch axis of 1."""
        return quantize_input(x, self.input)[None]

    def invoke(self, x):
        """Sets one sample (resizing a dynamic input to it: interpreter only) and runs."""
        batch = self.prepare(x)
        idx = self.input["index"]
        if self.dynamic and tuple(self.interpreter.get_input_details()[0]["shape"]) != \
                batch.shape:
            self.interpreter.resize_tensor_input(idx, list(batch.shape))
            self.interpreter.allocate_tensors()
        try:
            self.executor.set(idx, batch)
        except ValueError as e:
            raise InputDtypeError(
                f"Input of shape {batch.shape} and dtype {batch.dtype} does not fit the "
                f"model's input {list(self.input['shape'])} {self.input_dtype.name}: {e}") from e
        self.executor.invoke()

    def get(self, index):
        """The raw value of output tensor `index` after the last run."""
        return self.executor.get(index)

    def run(self, x):
        """Output for one sample, dequantized to float32, batch axis removed."""
        self.invoke(x)
        out = self.get(self.output["index"])
        return dequantize(out, self.output)[0]


# The post-process op's outputs, in its order (the file's layout: `reorder.detection_outputs`).
DETECTION_OUTPUTS = ("boxes", "classes", "scores", "count")
DETECTION_METRICS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                     "per_class_ap", "per_class_ap50")
_POSTPROCESS = "TFLite_Detection_PostProcess"


def postprocess_outputs(model):
    """Tensor indices of the file's `TFLite_Detection_PostProcess` outputs (boxes, classes,
    scores, count), or None when the file has no such op."""
    content = bytes(model) if isinstance(model, (bytes, bytearray)) else \
        read_model_bytes(model)
    try:
        fb = _schema().Model.GetRootAs(content, 0)
        graph = fb.Subgraphs(0)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = fb.OperatorCodes(op.OpcodeIndex()).CustomCode()
            if code is not None and code.decode() == _POSTPROCESS:
                return [int(op.Outputs(j)) for j in range(op.OutputsLength())]
    except Exception:  # not a flatbuffer: loading the file says so, with its own error
        return None
    return None


class DetectionRunner(Runner):
    """A `Runner` for a detection file: `detect(x)` gives the four post-process outputs."""

    def __init__(self, model, num_threads=None, runtime="auto"):
        super().__init__(model, num_threads=num_threads, runtime=runtime)
        content = model if isinstance(model, (bytes, bytearray)) else read_model_bytes(model)
        outs = postprocess_outputs(content)
        details = {d["index"]: d for d in self.interpreter.get_output_details()}
        if outs is None or len(outs) != 4 or not set(outs) <= set(details):
            raise TFLiteError(
                "This .tflite is not a detector: it has no TFLite_Detection_PostProcess op whose "
                "four outputs are the model's. Convert a tfkd.students.detection.export_model "
                "with tfkd.tflite.convert, or evaluate classifier / dense outputs with "
                "metrics such as 'accuracy' / 'miou'.")
        self.outputs = [details[i] for i in outs]

    def detect(self, x, clip=True):
        """One sample -> dict boxes (K, 4), classes (K,), scores (K,), count () (float32),
        rows past `count` zeros.

        `TFLite_Detection_PostProcess` does not clip its boxes to the image (a box decoded
        past the border keeps its coordinates < 0 or > 1); with `clip` (the default) they
        are clipped to [0, 1], as the Keras layer and `tfkd.Anchors.detect` do."""
        self.invoke(x)
        out = {name: self.get(d["index"])[0].astype(np.float32)
               for name, d in zip(DETECTION_OUTPUTS, self.outputs)}
        # The op writes only the first `count` rows; the rest is whatever the buffer held.
        # Padding is zeros, as in the Keras layer's output.
        k = int(np.clip(np.nan_to_num(out["count"]), 0, len(out["scores"])))
        for name in ("boxes", "classes", "scores"):
            out[name][k:] = 0.0
        if clip:
            out["boxes"] = np.clip(out["boxes"], 0.0, 1.0)
        return out


def is_detector(model):
    """Whether a `.tflite` (path or bytes) ends in `TFLite_Detection_PostProcess`."""
    if isinstance(model, DetectionRunner):
        return True
    if isinstance(model, Runner):
        return False
    return postprocess_outputs(model) is not None


def _stack_detections(dets):
    out = {k: np.stack([d[k] for d in dets]) for k in DETECTION_OUTPUTS}
    out["count"] = np.round(out["count"]).astype(np.int64)
    return out


def detections(model, images, max_samples=None, num_threads=None, clip=True, runtime="auto"):
    """The detections of a detection `.tflite` on images, stacked.

    Args:
      model: path to the file (or its bytes, or a `DetectionRunner`).
      images: images (N, H, W, 3) in any source `tfkd.tflite.data` takes (labels, if any,
        are ignored); pixels of any dtype are quantized for an int8 / uint8 input.
      max_samples: stop after this many images.
      clip: clip the boxes to [0, 1], as the Keras post-process does (the op itself does
        not: False gives the file's raw boxes).
      runtime: "auto", "compiled_model" or "interpreter": which LiteRT API runs the file
        (see `Runner`; ignored when `model` is a `DetectionRunner`).

    Returns:
      dict `boxes` (N, K, 4) normalised [ymin, xmin, ymax, xmax], `classes` (N, K) float32
      class ids, `scores` (N, K), `count` (N,) int64: the rows past `count` are padding.
      The input of `coco_map` and of `parity`'s detection comparison.

    Example (a toy detector: 4 anchors, 2 classes; a real one is
    `tfkd.students.detection.export_model`):

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5],
        ...                     [0.75, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], "float32")
        >>> image = keras.Input((8, 8, 3), batch_size=1)
        >>> f = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(image))
        >>> box = keras.layers.Reshape((4, 4))(keras.layers.Dense(16)(f))
        >>> score = keras.layers.Reshape((4, 2))(keras.layers.Dense(8, "sigmoid")(f))
        >>> post = tfl.DetectionPostProcess(anchors, num_classes=2, max_detections=5)
        >>> detector = keras.Model(image, post([box, score]))
        >>> _ = tfl.convert(detector, "/tmp/det.tflite")
        >>> d = tfl.detections("/tmp/det.tflite", np.random.rand(3, 8, 8, 3))
        >>> d["boxes"].shape, d["classes"].shape, d["count"].shape
        ((3, 5, 4), (3, 5), (3,))
    """
    runner = model if isinstance(model, DetectionRunner) else \
        DetectionRunner(model, num_threads=num_threads, runtime=runtime)
    dets = [runner.detect(x, clip=clip) for x, _ in
            iter_samples(images, runner.sample_shape, max_samples=max_samples)]
    if not dets:
        raise EmptyDataError("The data set is empty: it yielded no image.")
    return _stack_detections(dets)


def _tile_size(tile):
    """(th, tw) of a `tile=` argument: an int (square tiles) or a pair of ints."""
    pair = (tile, tile) if isinstance(tile, (int, np.integer)) else tuple(tile)
    if len(pair) != 2 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or
                             t < 1 for t in pair):
        raise TFLiteError(f"tile must be a positive int or (height, width) in LR pixels; got "
                          f"{tile!r}.")
    return int(pair[0]), int(pair[1])


def super_resolve(model, lr_image, tile=None, overlap=None, num_threads=None, runtime="auto"):
    """Runs a super-resolution model on one whole LR image: its (H, W, C) output.

    Args:
      model: a Keras model, a `.tflite` path (or its bytes), or a `Runner` made for one.
        It takes pixels in [0, 255] (N, h, w, C) and returns them `s` times larger,
        unclipped. A `.tflite` with int8 / uint8 input gets the pixels quantized with the
        input's scale and zero point (`quantize_input`) and its output is dequantized.
      lr_image: one image (h, w, C) (or (1, h, w, C), or (h, w) for one channel) of pixel
        values in [0, 255]; integer pixels are values too, never taken as quantized codes.
      tile: None: a model whose input has a fixed spatial size (an Edge TPU export) runs
        on tiles of that size, one with dynamic dims (-1 in the file's shape signature,
        None in a Keras input) on the whole image, its input resized to it. An int or
        (th, tw): tiles of that size (a fixed-size input must have that size).
      overlap: LR pixels of context kept on each side of a tile's centre (default: a
        quarter of the tile's smaller side, at most 8). The tiles are stitched seamlessly
        when it covers the model's receptive field (see `tfkd.tflite.image_quality.tiles`:
        the image border is padded by reflection).
      num_threads, runtime: for a `.tflite` path, as in `Runner`.

    Returns:
      float32 (h s, w s, C'), unclipped (`sr_scores` clips and rounds).

    Example (a toy 2x model, run whole and on 8x8 tiles):

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> net = keras.Sequential([keras.Input((None, None, 1)),
        ...                         keras.layers.Conv2DTranspose(1, 2, strides=2)])
        >>> _ = tfl.convert(net, "/tmp/sr.tflite")
        >>> lr = np.random.rand(20, 30, 1).astype("float32") * 255
        >>> tfl.super_resolve("/tmp/sr.tflite", lr).shape
        (40, 60, 1)
        >>> whole, tiled = tfl.super_resolve(net, lr), tfl.super_resolve(net, lr, tile=8)
        >>> bool(np.abs(whole - tiled).max() < 1e-3)       # a 1-pixel receptive field
        True
    """
    image = as_image(lr_image, "The LR image")
    if isinstance(model, (str, os.PathLike, bytes, bytearray)):
        model = Runner(model, num_threads=num_threads, runtime=runtime)
    if isinstance(model, Runner):
        sample = tuple(model.sample_shape)
        what = "The .tflite"
        run = model.run
    else:
        inputs = getattr(model, "inputs", None)
        sample = tuple(inputs[0].shape[1:]) if inputs else (None, None, None)
        what = f"The Keras model '{getattr(model, 'name', type(model).__name__)}'"

        def run(x):
            return np.asarray(model(x[None], training=False))[0]
    if len(sample) != 3:
        raise TFLiteError(
            f"{what} takes inputs of shape {list(sample)} per sample: a super-resolution "
            "model takes images (h, w, C).")
    if sample[-1] is not None and sample[-1] != image.shape[-1]:
        raise InputDtypeError(
            f"{what} takes {sample[-1]}-channel images but the LR image has "
            f"{image.shape[-1]} channels. A Y-channel model takes Y images "
            "(tfkd.data.load_sr_folder(..., mode='y'), tfkd.tflite.rgb_to_y).")
    fixed = tuple(sample[:2]) if None not in sample[:2] else None
    if tile is not None:
        tile = _tile_size(tile)
        if fixed is not None and tile != fixed:
            raise TFLiteError(
                f"tile={tile} but the model's input is {fixed[0]}x{fixed[1]}: leave tile=None "
                "to tile at the input's size.")
    tile = tile or fixed
    if tile is None:
        out = np.asarray(run(image), np.float32)
        if out.ndim != 3:
            raise TFLiteError(f"{what} returned an output of shape {out.shape} for one image: "
                              "a super-resolution model returns an image (H, W, C).")
        return out
    return tiles(run, image, tile, overlap)


def evaluate_super_resolution(model, data, metrics=SR_METRICS, scale=None, y_channel=True,
                              max_samples=None, num_threads=None, output_index=0,
                              overlap=None, runtime="auto"):
    """PSNR / SSIM of an image-to-image `.tflite` on (lr, hr) pairs (see `evaluate`, which
    calls it): each LR image through `super_resolve`, each result scored against its HR
    image by `tfkd.tflite.image_quality.pair_scores`, the means as `sr_scores` takes them."""
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in SR_METRICS]
    if unknown:
        raise TFLiteError(f"{unknown} are not image-quality metrics: use "
                          f"{', '.join(map(repr, SR_METRICS))}.")
    runner = _runner(model, num_threads, output_index, runtime)
    if len(runner.output["shape"]) != 4:
        raise TFLiteError(
            f"{metrics[0]!r} scores images: output {output_index} of this model has shape "
            f"{[int(d) for d in runner.output['shape'][1:]]} per sample, not an image (H, W, "
            "C). Use 'accuracy' for a classifier, 'miou' for per-pixel class scores.")
    per_image = []
    for i, (lr, hr) in enumerate(iter_sr_pairs(data, max_samples=max_samples)):
        scale = pair_scale(lr, hr, scale, index=i)  # the first pair's, then checked
        sr = super_resolve(runner, lr, overlap=overlap)
        per_image.append(pair_scores(hr, sr, scale, y_channel, index=i))
    scores = summarize(per_image)
    results = EvaluateResult({m: scores[m] for m in metrics}, runner=runner)
    results["num_samples"] = len(per_image)
    return results


def _ground_truth_of(y, where):
    if isinstance(y, dict) and {"boxes", "classes"} <= set(y):
        return y["boxes"], y["classes"]
    got = sorted(y) if isinstance(y, dict) else type(y).__name__
    hint = (" (per-anchor training targets: build the data set with encode=None)"
            if isinstance(y, dict) and "class_logits" in y else "")
    raise RepresentativeDataError(
        f"Detection data needs ground truth {{'boxes': (M, 4), 'classes': (M,)}} per image "
        f"{where}; got {got}{hint}. Pass (images, {{'boxes', 'classes'}}), (images, boxes, "
        "classes), a tfkd.data DetectionSplit, or tfkd.data.detection_dataset(..., "
        "encode=None).")


def _detection_element(element):
    """(x, boxes, classes) of one element of a detection data source."""
    if isinstance(element, dict):
        x_key = next((k for k in _X_KEYS if k in element), None)
        if x_key is None:
            raise RepresentativeDataError(
                f"Cannot tell the images in a dict with keys {sorted(element)}: name them one "
                f"of {_X_KEYS}.")
        y_key = next((k for k in _Y_KEYS if k in element), None)
        boxes, classes = _ground_truth_of(element[y_key] if y_key else element, "in the dict")
        return element[x_key], boxes, classes
    if isinstance(element, (tuple, list)):
        if len(element) == 3 and not isinstance(element[1], dict):
            return element[0], element[1], element[2]
        if len(element) in (2, 3):
            boxes, classes = _ground_truth_of(element[1], "as the second part of the element")
            return element[0], boxes, classes
    raise RepresentativeDataError(
        f"Detection data elements must be (images, {{'boxes', 'classes'}}) or (images, "
        f"boxes, classes); got {type(element).__name__}"
        f"{f' of {len(element)} parts' if isinstance(element, (tuple, list)) else ''}.")


def iter_detection_samples(data, sample_shape=None, max_samples=None):
    """Yields `(image, boxes (M, 4), classes (M,))` per image of a detection data source."""
    if data is None:
        raise RepresentativeDataError("No data given.")
    if all(hasattr(data, a) for a in ("images", "boxes", "classes")):
        data = (data.images, data.boxes, data.classes)
    count = 0
    for element in _elements(data):
        x, boxes, classes = _detection_element(element)
        xb, single = _as_batch(x, sample_shape)
        boxes = _to_numpy(boxes).astype(np.float32)
        classes = _to_numpy(classes)
        if single:
            boxes, classes = boxes[None], classes[None]
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:2] or \
                len(boxes) != len(xb):
            raise RepresentativeDataError(
                f"{len(xb)} images with boxes {boxes.shape} and classes {classes.shape}: give "
                "boxes (M, 4) and classes (M,) per image ((N, M, 4) and (N, M) for a batch).")
        for i in range(len(xb)):
            yield xb[i], boxes[i], classes[i]
            count += 1
            if max_samples is not None and count >= max_samples:
                return


def _pad_ground_truth(boxes, classes):
    m = max([len(b) for b in boxes] + [1])
    gb = np.zeros((len(boxes), m, 4), np.float32)
    gc = np.full((len(boxes), m), -1, np.int64)
    for i, (b, c) in enumerate(zip(boxes, classes)):
        gb[i, :len(b)] = b
        gc[i, :len(c)] = np.round(c).astype(np.int64)
    return gb, gc


def evaluate_detections(model, data, metrics=("map", "map50"), max_samples=None,
                        num_threads=None, image_sizes=None, class_names=None, classes=None,
                        num_classes=None, runtime="auto"):
    """COCO metrics of a detection `.tflite` (see `evaluate`, which calls it)."""
    from .coco import coco_map

    metrics = list(metrics)
    unknown = [m for m in metrics if m not in DETECTION_METRICS]
    if unknown:
        raise TFLiteError(
            f"This .tflite is a detector (it ends in {_POSTPROCESS}); {unknown} are not "
            f"detection metrics: use {', '.join(map(repr, DETECTION_METRICS))}.")
    runner = model if isinstance(model, DetectionRunner) else \
        DetectionRunner(model, num_threads=num_threads, runtime=runtime)
    if image_sizes is None and all(hasattr(data, a) for a in ("images", "sizes")):
        image_sizes = np.asarray(data.sizes)[:max_samples] if max_samples else data.sizes
    dets, boxes, labels = [], [], []
    for x, b, c in iter_detection_samples(data, runner.sample_shape, max_samples=max_samples):
        dets.append(runner.detect(x))
        boxes.append(b)
        labels.append(c)
    if not dets:
        raise EmptyDataError("The data set is empty: it yielded no image.")
    if image_sizes is None:  # the model's input frame
        image_sizes = tuple(int(d) for d in runner.sample_shape[:2])
    gt_boxes, gt_classes = _pad_ground_truth(boxes, labels)
    scores = coco_map(gt_boxes, gt_classes, _stack_detections(dets), image_sizes=image_sizes,
                      class_names=class_names, classes=classes, num_classes=num_classes)
    results = EvaluateResult({m: scores[m] for m in metrics}, runner=runner)
    if class_names is not None and "per_class" in scores and \
            {"per_class_ap", "per_class_ap50"} & set(metrics):
        results["per_class"] = scores["per_class"]
    results["num_samples"] = len(dets)
    return results


def is_keras_model(model):
    """Whether `model` is to be run as a Keras model (not a `.tflite` path, bytes or
    `Runner`)."""
    return not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, Runner))


def _keras_outputs(out, output_index):
    if isinstance(out, dict):
        out = list(out.values())[output_index]
    elif isinstance(out, (list, tuple)):
        out = out[output_index]
    return np.asarray(out, np.float32)


def _keras_embed(model, data, batch_size, max_samples, output_index):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise TFLiteError(
            f"Cannot run {type(model).__name__}: give a built Keras model (with inputs) or "
            "the path to a .tflite file (or its bytes).")
    if len(inputs) != 1:
        raise TFLiteError(f"The Keras model has {len(inputs)} inputs; embeddings are of "
                          "single-input image models.")
    sample = tuple(None if d is None else int(d) for d in inputs[0].shape[1:])
    fixed = inputs[0].shape[0]
    step = int(fixed) if fixed is not None else max(1, int(batch_size))
    dtype = np.dtype(getattr(inputs[0], "dtype", "float32") or "float32")
    if dtype.kind not in "f":
        dtype = np.dtype(np.float32)
    chunks, xs, ys = [], [], []

    def flush():
        n = len(xs)
        batch = np.stack(xs).astype(dtype)
        if fixed is not None and n < step:  # a fixed batch: pad the last chunk
            batch = np.concatenate([batch, np.zeros((step - n,) + batch.shape[1:], dtype)])
        chunks.append(_keras_outputs(model.predict_on_batch(batch), output_index)[:n])
        xs.clear()

    for x, y in iter_samples(data, sample, max_samples=max_samples):
        xs.append(np.asarray(x))
        ys.append(y)
        if len(xs) == step:
            flush()
    if xs:
        flush()
    if not chunks:
        raise EmptyDataError("The data set is empty: it yielded no sample.")
    return np.concatenate(chunks), ys, f"The Keras model '{model.name}'"


def _file_embed(runner, data, max_samples):
    outs, ys = [], []
    for x, y in iter_samples(data, runner.sample_shape, max_samples=max_samples):
        outs.append(runner.run(x))
        ys.append(y)
    if not outs:
        raise EmptyDataError("The data set is empty: it yielded no sample.")
    return np.stack(outs), ys, "The .tflite"


def _embed(model, data, batch_size=64, max_samples=None, num_threads=None, output_index=0,
          runtime="auto"):
    """(embeddings float32 (N, D), labels (N,) or None, runner or None) of a data source."""
    runner = None
    if is_keras_model(model):
        out, ys, what = _keras_embed(model, data, batch_size, max_samples, output_index)
    else:
        runner = _runner(model, num_threads, output_index, runtime)
        out, ys, what = _file_embed(runner, data, max_samples)
    if out.ndim != 2:
        raise TFLiteError(
            f"{what}'s output {output_index} has shape {list(out.shape[1:])} per sample, not "
            "an embedding (D,): an embedding model ends in Dense + L2 normalisation "
            "(pick another output with output_index=).")
    labels = None if any(y is None for y in ys) else np.stack([np.asarray(y) for y in ys])
    if labels is not None and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return out.astype(np.float32), labels, runner


def embeddings(model, images, batch_size=64, max_samples=None, num_threads=None,
               output_index=0, runtime="auto"):
    """Float embeddings (N, D) of images, by a Keras model or a `.tflite`.

    Args:
      model: a Keras model, or a `.tflite` path / bytes (float or int8; an int8 / uint8
        output is dequantized with its scale and zero point).
      images: images in any source `tfkd.tflite.data` takes (labels, if any, are ignored):
        pixels as the Keras model takes them (uint8 or float 0-255 for a
        `Rescaling(1 / 255)` model); an int8 / uint8 file input quantizes them.
      batch_size: samples per `predict_on_batch` of a Keras model (a `.tflite` runs one
        sample at a time, its batch being 1).
      max_samples: stop after this many images.
      num_threads, output_index, runtime: for a `.tflite`, as in `Runner`
        (`output_index` also picks a Keras model's output).

    Returns:
      float32 (N, D), as the model gives them (not renormalised).

    Example (`tfl.L2Normalization` converts to TFLite's L2_NORMALIZATION, int8 included;
    Keras' `UnitNormalization` does not):

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> net = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
        ...                         keras.layers.Flatten(), keras.layers.Dense(16),
        ...                         tfl.L2Normalization()])
        >>> x = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3)).astype("uint8")
        >>> ids = np.repeat(np.arange(4), 3)
        >>> _ = tfl.convert(net, "/tmp/emb.tflite", output_meaning="embedding")
        >>> tfl.embeddings("/tmp/emb.tflite", x).shape
        (12, 16)
        >>> r = tfl.evaluate("/tmp/emb.tflite", (x, ids), metrics=("roc_auc", "rank1"))
        >>> sorted(r)
        ['num_probes', 'num_samples', 'rank1', 'roc_auc']
    """
    return _embed(model, images, batch_size, max_samples, num_threads, output_index,
                 runtime)[0]


def evaluate_embeddings(model, data, metrics=("roc_auc", "tar@far=0.01", "rank1"),
                        gallery=None, pairs=None, max_samples=None, num_threads=None,
                        output_index=0, runtime="auto", batch_size=64):
    """Verification / identification metrics of an embedding model (see `evaluate`, which
    calls it for embedding metric names).

    Args:
      model: a Keras model or a `.tflite` path / bytes.
      data: images with integer identities: `(images, labels)`, a dict, a dataset...
      metrics: "roc_auc", "tar@far=<far>" (any far: "tar@far=0.01", "tar@far=1e-3"),
        "verification_accuracy" (best over thresholds), "verification_threshold" (the
        cosine that gives it), "rank<k>" ("rank1", "rank5").
      gallery: for the rank metrics, the enrolled images with their identities (a data
        source like `data`); `data` are then the probes. None: leave-one-out over `data`
        (each image a probe against all the others; identities with one image are not
        probes).
      pairs: for the verification metrics, (P, 2) indices into the samples of `data` to
        score instead of every pair (LFW's pair list).

    Returns:
      an `EvaluateResult`: each metric, "num_samples", and "num_probes" with rank metrics;
      `.runtime` is "keras" for a Keras model.
    """
    metrics = list(metrics)
    parsed = []
    for m in metrics:
        p = parse_metric(m)
        if p is None:
            raise TFLiteError(f"{m!r} is not an embedding metric: use 'roc_auc', "
                              "'tar@far=0.01', 'verification_accuracy', "
                              "'verification_threshold' or 'rank1' (rank<k>).")
        parsed.append((m, p))
    ranks = sorted({key for _, (kind, key, _) in parsed if kind == "rank"})
    fars = tuple(dict.fromkeys(far for _, (kind, _, far) in parsed if far is not None))
    wants_verification = any(kind == "verification" for _, (kind, _, _) in parsed)
    if gallery is not None and not ranks:
        raise TFLiteError("gallery= is the enrolled set of the rank metrics: ask for 'rank1' "
                          "(rank<k>), or drop gallery=.")
    if pairs is not None and not wants_verification:
        raise TFLiteError("pairs= lists the pairs of the verification metrics: ask for "
                          "'roc_auc' / 'tar@far=...' / 'verification_accuracy', or drop it.")
    emb, labels, runner = _embed(model, data, batch_size, max_samples, num_threads,
                                output_index, runtime)
    if labels is None:
        raise RepresentativeDataError(
            "Embedding metrics need identity labels: pass (images, labels) with one integer "
            "identity per image, or a dict with a 'label' key.")
    results = EvaluateResult(runner=runner)
    if runner is None:
        results.runtime = "keras"
    scores = {}
    if wants_verification:
        scores.update(verification(emb, labels, far=fars or (0.1,), pairs=pairs))
    if ranks:
        if gallery is None:
            ident = identification(emb, labels, ranks=ranks)
        else:
            g_emb, g_labels, _ = _embed(runner if runner is not None else model, gallery,
                                       batch_size, None, num_threads, output_index, runtime)
            if g_labels is None:
                raise RepresentativeDataError(
                    "gallery= needs identity labels: pass (images, labels).")
            ident = identification(g_emb, g_labels, emb, labels, ranks=ranks)
    for name, (kind, key, _) in parsed:
        results[name] = scores[key] if kind == "verification" else ident[f"rank{key}"]
    results["num_samples"] = int(len(emb))
    if ranks:
        results["num_probes"] = ident["num_probes"]
    return results


def quantize_input(x, detail):
    """Data -> the dtype of a `.tflite` input (`detail`: an entry of `get_input_details()`).

    For a float input the data is cast. For an int8 / uint8 input, data of that very dtype is
    taken as already quantized (with the input's scale and zero point); data of any other
    numeric dtype (uint8 pixels for an int8 input, float32, int64, ...) holds the values the
    Keras model takes, and is cast to float and quantized here.
    """
    x = np.asarray(x)
    dt = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if x.dtype.kind not in "biuf":
        raise InputDtypeError(
            f"Input data of dtype {x.dtype} cannot feed the model's {dt.name} input: "
            "pass numeric arrays (images as integer or float pixels).")
    if dt.kind == "f":
        return x.astype(dt)
    if x.dtype == dt:  # already quantized by the caller
        return x
    if not scale:
        raise InputDtypeError(
            f"The model's {dt.name} input has no quantization parameters, so {x.dtype} data "
            f"cannot be quantized for it: pass {dt.name} data.")
    info = np.iinfo(dt)
    q = np.round(x.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dt)


def input_values(x, detail):
    """Data -> the float32 values it stands for, i.e. what the Keras model is fed alongside.

    The inverse view of `quantize_input`: data already in the file's int8 / uint8 input dtype
    is dequantized; any other data is the values themselves.
    """
    x = np.asarray(x)
    dt = np.dtype(detail["dtype"])
    if dt.kind in "iu" and x.dtype == dt:
        return dequantize(x, detail)
    return x.astype(np.float32)


def dequantize(values, detail):
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


class EvaluateResult(dict):
    """`evaluate`'s dict (metric name -> value, plus "num_samples"), which also says which
    LiteRT API ran the file: `.runtime` ("compiled_model" or "interpreter") and
    `.fallback_reason` (why runtime="auto" fell back to the interpreter; None otherwise).
    Attributes, not keys, so that the dict holds the metrics only (JSON, `sorted(r)`)."""

    def __init__(self, *args, runner=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.runtime = getattr(runner, "runtime", None)
        self.fallback_reason = getattr(runner, "fallback_reason", None)


def _runner(model, num_threads=None, output_index=0, runtime="auto"):
    return model if isinstance(model, Runner) else \
        Runner(model, num_threads=num_threads, output_index=output_index, runtime=runtime)


def run_on_data(model, data, max_samples=None, num_threads=None, output_index=0,
                runtime="auto"):
    """(inputs, outputs, labels) as stacked arrays; labels None when the data has none.

    `model`: a path, bytes, or a `Runner` already made for it (then `runtime` is its own)."""
    runner = _runner(model, num_threads, output_index, runtime)
    xs, outs, ys = [], [], []
    for x, y in iter_samples(data, runner.sample_shape, max_samples=max_samples):
        xs.append(x)
        outs.append(runner.run(x))
        ys.append(y)
    if not outs:
        raise EmptyDataError("The data set is empty: it yielded no sample.")
    labels = None if any(y is None for y in ys) else np.stack([np.asarray(y) for y in ys])
    return np.stack(xs), np.stack(outs), labels


def output_is_dense(runner):
    """Whether the runner's output holds per-pixel scores: (H, W, C) or more per sample."""
    return len(runner.output["shape"]) - 1 >= 3


def _dense_scores(runner, data, max_samples, num_classes, ignore_class):
    """segmentation_scores of the file's outputs, streamed: argmaxed and counted a chunk at
    a time, so neither the logits nor the inputs are ever stacked."""
    channels = int(runner.output["shape"][-1])
    if channels == 1:
        raise TFLiteError(
            f"The model's output {list(runner.output['shape'])} has a single channel, which "
            "is not a choice of class: for a binary mask, threshold the outputs yourself "
            "(run_on_data) and score the ids with tfkd.tflite.segmentation_scores(..., "
            "num_classes=2).")
    counter = _ConfusionCounter(_num_classes(num_classes, channels), ignore_class)
    per_sample = int(np.prod(runner.output["shape"][1:-1]))
    chunk = max(1, _CHUNK_PIXELS // max(1, per_sample))
    ids, labels, count = [], [], 0

    def flush():
        counter.add(np.stack(labels), np.stack(ids), scores=False)
        ids.clear()
        labels.clear()

    for x, y in iter_samples(data, runner.sample_shape, max_samples=max_samples):
        if y is None:
            raise RepresentativeDataError(
                "evaluate needs labels: pass (x, y) pairs or a dict with a 'label' key.")
        out = runner.run(x)
        y = np.asarray(y)
        if y.ndim == out.ndim and y.shape[-1] == 1:
            y = y[..., 0]  # (H, W, 1) masks
        if y.shape != out.shape[:-1]:
            raise RepresentativeDataError(
                f"A label of shape {y.shape} does not match the model's output "
                f"{out.shape} pixel for pixel: give one class id per output pixel, (H, W), "
                "resized with nearest-neighbour interpolation.")
        ids.append(np.argmax(out, axis=-1))
        labels.append(y)
        count += 1
        if len(ids) >= chunk:
            flush()
    if not count:
        raise EmptyDataError("The data set is empty: it yielded no sample.")
    if ids:
        flush()
    return counter.scores(), count


def accuracy(y_true, y_pred):
    """Top-1 accuracy for integer or one-hot labels; a single output is a binary score."""
    y_true = np.asarray(y_true)
    if y_pred.ndim >= 2 and y_pred.shape[-1] > 1:
        pred = np.argmax(y_pred, axis=-1)
        true = np.argmax(y_true, axis=-1) if y_true.shape == y_pred.shape else \
            y_true.reshape(pred.shape)
    else:
        pred = (y_pred.reshape(len(y_pred), -1)[:, 0] > 0.5).astype(np.int64)
        true = y_true.reshape(len(y_true), -1)[:, 0]
    return float(np.mean(pred == true))


def evaluate(model, data, metrics=("accuracy",), max_samples=None, num_threads=None,
             output_index=0, ignore_class=None, num_classes=None, image_sizes=None,
             class_names=None, classes=None, runtime="auto", scale=None, y_channel=None,
             overlap=None, gallery=None, pairs=None, batch_size=64):
    """Metrics of a `.tflite` model on labelled data.

    Args:
      model: path to a `.tflite` file (or its bytes); for the embedding metrics also a
        Keras model (so that both score the same way).
      data: labelled samples: `(x, y)` arrays, a dict with image/label keys, a
        `tf.data.Dataset` or generator of `(x, y)` (batched or not). For dense outputs the
        labels are class ids per pixel, (H, W) per sample.
      metrics: names ("accuracy" is computed here; "miou", "pixel_accuracy" and
        "per_class_iou" by `segmentation_scores`, for dense outputs; other names go through
        `keras.metrics.get`) or Keras metric objects.
      max_samples: stop after this many samples.
      ignore_class: for the dense metrics, the label id left out of every figure (the void
        class: CamVid's 11).
      num_classes: for the dense metrics, the number of classes (default: output channels);
        for the detection metrics, the number of classes (default: the largest id seen + 1).
      image_sizes, class_names, classes: detection files only, passed to `coco_map`:
        (height, width) frames of the images (default: a DetectionSplit's `.sizes`, else the
        model's input size), names of the classes, a subset of classes to average over.
      runtime: which LiteRT API runs the file: "auto" (the default: `CompiledModel` where it
        supports the file, else the `Interpreter`; see `Runner`), "compiled_model" (an error
        where it does not apply) or "interpreter". Outputs are the same either way.
      scale, y_channel, overlap: image-to-image (super-resolution) files only, with metrics
        "psnr" / "ssim": the upscaling factor (default: HR size / LR size of the first pair;
        every HR image must be exactly `scale` times its LR image), whether RGB images are
        scored on their Y channel (default True, as papers do), and the tiles' overlap for a
        file with a fixed input size (`super_resolve`).
      gallery, pairs, batch_size: embedding metrics only (`evaluate_embeddings`): the enrolled images with their identities for "rank<k>"
        (`data` are then the probes; None: leave-one-out over `data`), (P, 2) sample
        indices of the pairs to verify instead of every pair, and a Keras model's batch.

    Embedding files (faces, re-identification: an L2-normalised (N, D) output): `metrics`
    are verification / identification names, "roc_auc", "tar@far=<far>" ("tar@far=0.01",
    "tar@far=1e-3"), "verification_accuracy", "verification_threshold", "rank<k>" ("rank1"),
    asked on their own, and `data` holds images with integer identities; the scores are
    `tfkd.tflite.verification`'s over every pair of samples i < j (see
    `evaluate_embeddings`). "accuracy" of a file whose metadata says its output is an
    embedding is an error.

    Super-resolution files: `metrics` are ("psnr", "ssim") (`SR_METRICS`, asked on their
    own) and `data` holds (lr, hr) pairs (see the module docstring).

    Detection files: `metrics` are COCO's ("map", "map50", ... `DETECTION_METRICS`, given
    by `coco_map`) and `data` holds images with ground-truth boxes (see the module
    docstring); a detection metric asked of any other file is an error, and so is a
    non-detection metric of a detection file.

    Returns:
      dict metric name -> float ("per_class_iou": a list, None for a class absent from both
      labels and predictions; "per_class_ap" / "per_class_ap50": lists by class id, None for
      a class without ground truth), plus "num_samples". The dict is an `EvaluateResult`:
      its `.runtime` says which API ran ("compiled_model" or "interpreter") and
      `.fallback_reason` why "auto" fell back (None otherwise).

    Example, a toy detector (2 anchors, 1 class; as in `detections`):

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], "float32")
        >>> image = keras.Input((8, 8, 3), batch_size=1)
        >>> f = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(image))
        >>> box = keras.layers.Reshape((2, 4))(keras.layers.Dense(8)(f))
        >>> score = keras.layers.Reshape((2, 1))(keras.layers.Dense(2, "sigmoid")(f))
        >>> post = tfl.DetectionPostProcess(anchors, num_classes=1)
        >>> _ = tfl.convert(keras.Model(image, post([box, score])), "/tmp/det_e.tflite")
        >>> boxes = np.tile([[[0.0, 0.0, 0.5, 0.5]]], (4, 1, 1))   # one box per image
        >>> data = (np.random.rand(4, 8, 8, 3), {"boxes": boxes, "classes": np.zeros((4, 1))})
        >>> r = tfl.evaluate("/tmp/det_e.tflite", data, metrics=("map", "map50"))
        >>> sorted(r), 0 <= r["map"] <= r["map50"] <= 1
        (['map', 'map50', 'num_samples'], True)

    Raises:
      InputDtypeError: data of a dtype or shape the model does not take.
      EmptyDataError / RepresentativeDataError: no samples, no labels, or labels that do not
        fit the outputs.
      TFLiteError: a dense metric asked of a non-dense output, an unknown metric name,
        'psnr' / 'ssim' mixed with other metrics or asked of a non-image output.
    """
    metrics = list(metrics)
    embedding = [m for m in metrics if parse_metric(m) is not None]
    if embedding:
        others = [m for m in metrics if m not in embedding]
        if others:
            raise TFLiteError(
                f"{embedding[0]!r} is an embedding metric, for models whose output is an "
                f"L2-normalised embedding scored on identity labels; {others} are not: ask "
                "for the verification / identification metrics in a call of their own.")
        given = [name for name, v in (("ignore_class", ignore_class),
                                      ("num_classes", num_classes),
                                      ("image_sizes", image_sizes),
                                      ("class_names", class_names), ("classes", classes),
                                      ("scale", scale), ("y_channel", y_channel),
                                      ("overlap", overlap)) if v is not None]
        if given:
            raise TFLiteError(f"{', '.join(given)} do not apply to the embedding metrics "
                              f"{embedding}: drop them.")
        return evaluate_embeddings(model, data, metrics=embedding, gallery=gallery,
                                   pairs=pairs, max_samples=max_samples,
                                   num_threads=num_threads, output_index=output_index,
                                   runtime=runtime, batch_size=batch_size)
    if gallery is not None or pairs is not None:
        raise TFLiteError(
            "gallery= and pairs= apply to the embedding metrics ('rank1', 'roc_auc', "
            "'tar@far=0.01', ...): ask for one of them with metrics=, or drop them.")
    if is_keras_model(model):
        raise TFLiteError(
            f"evaluate runs a .tflite file (a path or its bytes), not a "
            f"{type(model).__name__}: for a Keras model use model.evaluate (a Keras model "
            "is taken for the embedding metrics only).")
    if any(m in ("accuracy", "acc") for m in metrics) and \
            recorded_output_meaning(model) == "embedding":
        raise TFLiteError(
            "This .tflite outputs embeddings (its metadata says so): 'accuracy' would be the "
            "argmax of an embedding. Ask for verification / identification metrics, e.g. "
            "metrics=('roc_auc', 'tar@far=0.01', 'rank1'), on images with identity labels.")
    detection = [m for m in metrics if isinstance(m, str) and m in DETECTION_METRICS]
    detector = is_detector(model)
    if detector or detection:
        if not detector:
            raise TFLiteError(
                f"{detection[0]!r} is a detection metric, for a file that ends in "
                f"{_POSTPROCESS} (convert a tfkd.students.detection.export_model); this one "
                "does not. Use 'accuracy' for a classifier or 'miou' for dense outputs.")
        if metrics == ["accuracy"]:
            raise TFLiteError(
                f"This .tflite is a detector (it ends in {_POSTPROCESS}): ask for COCO "
                f"metrics, e.g. metrics=('map', 'map50') (any of {', '.join(DETECTION_METRICS)}"
                "), and pass images with ground-truth boxes.")
        if ignore_class is not None:
            raise TFLiteError("ignore_class= applies to the dense metrics, not to detection.")
        return evaluate_detections(model, data, metrics=metrics, max_samples=max_samples,
                                   num_threads=num_threads, image_sizes=image_sizes,
                                   class_names=class_names, classes=classes,
                                   num_classes=num_classes, runtime=runtime)
    if image_sizes is not None or class_names is not None or classes is not None:
        raise TFLiteError("image_sizes=, class_names= and classes= apply to detection files "
                          f"(ending in {_POSTPROCESS}) and their COCO metrics.")
    image_quality = [m for m in metrics if isinstance(m, str) and m in SR_METRICS]
    if image_quality:
        others = [m for m in metrics if m not in image_quality]
        if others:
            raise TFLiteError(
                f"{image_quality[0]!r} is an image-quality metric, for super-resolution files "
                f"scored on (lr, hr) pairs; {others} are not: ask for "
                f"{', '.join(map(repr, SR_METRICS))} in a call of their own.")
        if ignore_class is not None or num_classes is not None:
            raise TFLiteError("ignore_class= and num_classes= apply to the dense metrics "
                              f"{', '.join(DENSE_METRICS)}, not to 'psnr' / 'ssim'.")
        return evaluate_super_resolution(
            model, data, metrics=image_quality, scale=scale,
            y_channel=True if y_channel is None else bool(y_channel), max_samples=max_samples,
            num_threads=num_threads, output_index=output_index, overlap=overlap,
            runtime=runtime)
    if scale is not None or y_channel is not None or overlap is not None:
        raise TFLiteError(
            "scale=, y_channel= and overlap= apply to super-resolution files and their "
            f"image-quality metrics {', '.join(map(repr, SR_METRICS))}; ask for them with "
            "metrics=, or drop these arguments.")
    dense = [m for m in metrics if isinstance(m, str) and m in DENSE_METRICS]
    ignore_class = check_ignore_class(ignore_class)
    if not dense and (ignore_class is not None or num_classes is not None):
        raise TFLiteError(
            "ignore_class= and num_classes= apply to the dense metrics "
            f"{', '.join(DENSE_METRICS)}; ask for one of them with metrics=, or drop them.")
    check_runtime(runtime)
    runner = _runner(model, num_threads, output_index, runtime)
    if dense and not output_is_dense(runner):
        raise TFLiteError(
            f"{dense[0]!r} is a segmentation metric, for per-pixel outputs (H, W, C); output "
            f"{output_index} of this model has shape {list(runner.output['shape'][1:])} per "
            "sample. Use 'accuracy' for a classifier, or pick the dense output with "
            "output_index=.")
    results = EvaluateResult(runner=runner)
    if len(dense) == len(metrics):  # only dense metrics: stream, hold no stack of logits
        scores, count = _dense_scores(runner, data, max_samples, num_classes, ignore_class)
        results.update({m: scores[m] for m in dense})
        results["num_samples"] = count
        return results
    _, outputs, labels = run_on_data(runner, data, max_samples=max_samples)
    if labels is None:
        raise RepresentativeDataError(
            "evaluate needs labels: pass (x, y) pairs or a dict with a 'label' key.")
    if dense:
        from .metrics import segmentation_scores

        scores = segmentation_scores(labels, outputs, num_classes=num_classes,
                                     ignore_class=ignore_class)
    for metric in metrics:
        if isinstance(metric, str) and metric in DENSE_METRICS:
            results[metric] = scores[metric]
            continue
        if isinstance(metric, str) and metric in ("accuracy", "acc"):
            results[metric] = accuracy(labels, outputs)
            continue
        import keras

        try:
            obj = keras.metrics.get(metric) if isinstance(metric, str) else metric
        except ValueError as e:
            raise TFLiteError(
                f"Unknown metric {metric!r}: use 'accuracy', {', '.join(map(repr, DENSE_METRICS))}"
                " (dense outputs), a Keras metric name or a Keras metric object.") from e
        name = metric if isinstance(metric, str) else getattr(obj, "name", str(obj))
        if hasattr(obj, "update_state"):
            obj.reset_state()
            obj.update_state(labels, outputs)
            results[name] = float(np.asarray(obj.result()))
        else:  # a plain metric function: mean over samples
            results[name] = float(np.mean(np.asarray(obj(labels, outputs))))
    results["num_samples"] = int(len(outputs))
    return results


__all__ = ["evaluate", "detections", "evaluate_detections", "super_resolve",
           "evaluate_super_resolution", "is_detector", "Runner",
           "DetectionRunner", "EvaluateResult", "run_on_data", "quantize_input", "input_values",
           "dequantize", "accuracy", "embeddings", "evaluate_embeddings", "is_keras_model",
           "DETECTION_METRICS", "DETECTION_OUTPUTS"]
