"""Running a `.tflite` on data: metrics with the LiteRT interpreter.

Samples run one at a time (the file's batch is 1 by default; a dynamic batch is resized to 1).
When the model takes int8 or uint8, data of any other numeric dtype (float, or the uint8
pixels of `tfkd.data`'s loaders for an int8 input) is quantized with the input's scale / zero
point, and data of the input's own dtype is taken as already quantized; integer outputs are
dequantized, so metrics see the same numbers as the Keras model.

Dense outputs (per-pixel scores, (H, W, C) per sample) also get "miou", "pixel_accuracy" and
"per_class_iou", counted by `tfkd.tflite.segmentation_scores` as the samples come: only the
argmax of a chunk of outputs is held, never the whole stack of logits.

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

import numpy as np

from .data import iter_samples
from .errors import EmptyDataError, InputDtypeError, RepresentativeDataError, TFLiteError
from .inspection import load_interpreter
from .metrics import _CHUNK_PIXELS, DENSE_METRICS, _ConfusionCounter, _num_classes, \
    check_ignore_class


class Runner:
    """One LiteRT interpreter for a single-input model, fed one sample at a time."""

    def __init__(self, model, num_threads=None, output_index=0):
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

    def prepare(self, x):
        """One sample (no batch axis) -> the array to set, with a batch axis of 1."""
        return quantize_input(x, self.input)[None]

    def run(self, x):
        """Output for one sample, dequantized to float32, batch axis removed."""
        batch = self.prepare(x)
        idx = self.input["index"]
        if self.dynamic and tuple(self.interpreter.get_input_details()[0]["shape"]) != \
                batch.shape:
            self.interpreter.resize_tensor_input(idx, list(batch.shape))
            self.interpreter.allocate_tensors()
        try:
            self.interpreter.set_tensor(idx, batch)
        except ValueError as e:
            raise InputDtypeError(
                f"Input of shape {batch.shape} and dtype {batch.dtype} does not fit the "
                f"model's input {list(self.input['shape'])} {self.input_dtype.name}: {e}") from e
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        return dequantize(out, self.output)[0]


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


def _runner(model, num_threads=None, output_index=0):
    return model if isinstance(model, Runner) else \
        Runner(model, num_threads=num_threads, output_index=output_index)


def run_on_data(model, data, max_samples=None, num_threads=None, output_index=0):
    """(inputs, outputs, labels) as stacked arrays; labels None when the data has none.

    `model`: a path, bytes, or a `Runner` already made for it."""
    runner = _runner(model, num_threads, output_index)
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
             output_index=0, ignore_class=None, num_classes=None):
    """Metrics of a `.tflite` model on labelled data.

    Args:
      model: path to a `.tflite` file (or its bytes).
      data: labelled samples: `(x, y)` arrays, a dict with image/label keys, a
        `tf.data.Dataset` or generator of `(x, y)` (batched or not). For dense outputs the
        labels are class ids per pixel, (H, W) per sample.
      metrics: names ("accuracy" is computed here; "miou", "pixel_accuracy" and
        "per_class_iou" by `segmentation_scores`, for dense outputs; other names go through
        `keras.metrics.get`) or Keras metric objects.
      max_samples: stop after this many samples.
      ignore_class: for the dense metrics, the label id left out of every figure (the void
        class: CamVid's 11).
      num_classes: for the dense metrics, the number of classes (default: output channels).

    Returns:
      dict metric name -> float ("per_class_iou": a list, None for a class absent from both
      labels and predictions), plus "num_samples".

    Raises:
      InputDtypeError: data of a dtype or shape the model does not take.
      EmptyDataError / RepresentativeDataError: no samples, no labels, or labels that do not
        fit the outputs.
      TFLiteError: a dense metric asked of a non-dense output, an unknown metric name.
    """
    metrics = list(metrics)
    dense = [m for m in metrics if isinstance(m, str) and m in DENSE_METRICS]
    ignore_class = check_ignore_class(ignore_class)
    if not dense and (ignore_class is not None or num_classes is not None):
        raise TFLiteError(
            "ignore_class= and num_classes= apply to the dense metrics "
            f"{', '.join(DENSE_METRICS)}; ask for one of them with metrics=, or drop them.")
    runner = _runner(model, num_threads, output_index)
    if dense and not output_is_dense(runner):
        raise TFLiteError(
            f"{dense[0]!r} is a segmentation metric, for per-pixel outputs (H, W, C); output "
            f"{output_index} of this model has shape {list(runner.output['shape'][1:])} per "
            "sample. Use 'accuracy' for a classifier, or pick the dense output with "
            "output_index=.")
    results = {}
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


__all__ = ["evaluate", "Runner", "run_on_data", "quantize_input", "input_values",
           "dequantize", "accuracy"]
