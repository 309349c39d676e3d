"""Keras model -> `.tflite`, with a static batch-1 signature and a verified int8 graph.

How the static batch is obtained: the model is called on a new `keras.Input(batch_size=1)`
inside a functional wrapper, which `tf.lite.TFLiteConverter.from_keras_model` converts with
every shape fixed. (`from_concrete_functions` leaves Keras 3 variables unfrozen, and
`model.export(format="litert")` turns Flex ops on by default; neither is used.)

After an `int8` or `qat` conversion the graph is checked: a float op, a QUANTIZE/DEQUANTIZE
pair inside the graph, or float I/O where int8 was asked raises
`QuantizationVerificationError` naming the op and the Keras layer responsible, and no file is
written. Files are written atomically: a temporary file in the target folder, then
`os.replace`, so a failure never leaves a half-written model (an old file stays as it was).

Detectors: a model that ends in `DetectionPostProcess` (what `tfkd.students.detection.
export_model` builds) is traced inside `postprocess.exporting()`, so that the converter fuses
the layer into the custom op `TFLite_Detection_PostProcess`; custom ops are allowed for that
op only (any other custom op in the result is a `ConversionError`). The file's operators are
then re-ordered by `reorder.cpu_ops_last` (every int8 op before the DEQUANTIZEs that feed the
op: the Edge TPU compiler cuts the graph at the first op it cannot map) and its outputs laid
out by `reorder.detection_outputs` (boxes, classes, scores, count by index; pycoral's and
TF2's `output_0`..`output_3` signature names). The op computes in float: its outputs are
float32 whatever `output_type` says (an int8/uint8 `output_type` is refused), while the input
may be int8/uint8; `verify_int8` accepts the DEQUANTIZEs that feed the op and the op itself,
and nothing else in float.

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                       keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> report = tfl.convert(m, "/tmp/m_int8.tflite", quantization="int8",
    ...                      representative_data=x, input_type="int8")
    >>> report.is_fully_int8
    True
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

from .data import take_samples
from .errors import (ConversionError, QuantizationVerificationError, RepresentativeDataError,
                     TFLiteError)
from .files import check_folder, write_atomic
from .inspection import inspect, keras_layer_names, layer_for_op
from .metadata import add_metadata, check_normalization, has_schema, model_kind, write_sidecars
from .postprocess import OP_NAME, exporting, has_postprocess
from .reorder import cpu_ops_last, detection_outputs

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "qat")
IO_TYPES = ("float32", "int8", "uint8")
TARGETS = ("mediapipe", "coral", "litert")
METADATA_FIELDS = ("name", "description", "version", "author", "license")


def _static_batch_model(model, batch_size):
    """A functional wrapper whose inputs have a fixed batch size (shapes otherwise kept)."""
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ConversionError(
            f"Model '{model.name}' has no defined inputs: build it on a keras.Input first "
            "(e.g. keras.Sequential([keras.Input(shape), ...]) or call model.build(shape)).")
    new_inputs = [keras.Input(shape=tuple(t.shape[1:]), batch_size=batch_size, dtype=t.dtype,
                              name=_input_name(t, i)) for i, t in enumerate(inputs)]
    outputs = model(new_inputs[0] if len(new_inputs) == 1 else new_inputs)
    return keras.Model(new_inputs, outputs, name=model.name + "_static")


def _input_name(t, i):
    name = getattr(t, "name", None) or f"input_{i}"
    return name.split(":")[0].replace("/", "_")


def _sample_shape(model):
    inputs = model.inputs
    if len(inputs) != 1:
        raise ConversionError(
            f"Representative data for a model with {len(inputs)} inputs is not supported: "
            "calibrate a single-input model (wrap the extra inputs as constants).")
    return tuple(None if d is None else int(d) for d in inputs[0].shape[1:])


def _tf_type(name):
    import tensorflow as tf

    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[name]


def convert(model, path, quantization="float32", representative_data=None,
            input_type=None, output_type=None, batch_size=1, allow_flex=False,
            num_calibration_steps=100, labels=None, normalization=None, output_meaning=None,
            verify=True, target=None, metadata=None):
    """Converts a Keras model to a `.tflite` file and returns its `inspect` report.

    Args:
      model: a built Keras 3 model (functional, sequential or subclassed with inputs).
      path: where to write the `.tflite` file (written atomically).
      quantization: "float32"; "float16" (fp16 weights); "dynamic" (int8 weights, float
        activations); "int8" (full-integer post-training quantization, needs
        `representative_data`); "qat" (a quantization-aware model whose fake-quant ops carry
        the ranges; no representative data needed).
      representative_data: calibration samples for "int8" (optional for "qat"): a numpy
        array, (x, y) arrays, a dict, a `tf.data.Dataset` (batched or not) or a generator.
      input_type, output_type: "float32", "int8" or "uint8"; integer I/O only with "int8" or
        "qat". Default: what `target` needs, else float32 in and `output_type` = `input_type`
        (float32 for a detector ending in `DetectionPostProcess`: the post-process op's
        outputs are float by definition).
      batch_size: the static batch of the signature (1, for mobile and Edge TPU); None keeps
        the batch dynamic.
      allow_flex: allow TensorFlow (Flex) ops; off, only builtin ops are accepted.
      num_calibration_steps: how many samples calibrate "int8".
      labels, normalization, output_meaning: the TFLite metadata (`write_metadata`): class
        names, the `(mean, std)` the model expects of a pixel, what the output holds
        ("probabilities", "logits", "embedding"...).
      verify: check int8/qat graphs for float islands (on by default).
      target: the client the file is for (`TARGETS`), which picks the I/O types and the
        metadata: "mediapipe" (MediaPipe Tasks / an Android app: uint8 pixels in, uint8 or
        float out, metadata inside the file, the input's quantization checked to read raw
        pixels), "coral" (Edge TPU: full integer, uint8 in and out), "litert" (LiteRT
        Interpreter / CompiledModel in your own code: uint8 in, int8 out). None: as the
        type arguments say.
      metadata: descriptive fields of the embedded metadata, {"name", "description",
        "version", "author", "license"}.

    Returns:
      `ModelReport` of the written file.

    Raises:
      ConversionError: bad arguments, a folder that is not writable, or a converter failure.
      RepresentativeDataError / EmptyDataError: "int8" without data, or an empty data set.
      QuantizationVerificationError: an int8/qat graph that is not fully int8.
    """
    detector = has_postprocess(model)
    input_type, output_type = target_io(target, quantization, input_type, output_type,
                                        detector, model)
    if detector and output_type not in (None, "float32"):
        raise ConversionError(
            f"output_type={output_type!r} cannot apply to a detector: '{model.name}' ends in "
            f"DetectionPostProcess, whose {OP_NAME} op outputs float32 boxes, classes, scores "
            "and count by definition (the int8 network ends at the DEQUANTIZEs feeding it). "
            "Leave output_type unset (or 'float32'); input_type='uint8'/'int8' is fine.")
    output_type = output_type or ("float32" if detector else input_type)
    if quantization not in QUANTIZATIONS:
        raise ConversionError(
            f"quantization={quantization!r} is not one of {QUANTIZATIONS}.")
    for arg, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ConversionError(f"{arg}={value!r} is not one of {IO_TYPES}.")
        if value != "float32" and quantization not in ("int8", "qat"):
            raise ConversionError(
                f"{arg}={value!r} needs an integer graph: use quantization='int8' (with "
                "representative_data) or 'qat', or keep float32 I/O.")
    if quantization == "int8" and representative_data is None:
        raise RepresentativeDataError(
            "quantization='int8' (post-training) needs representative_data to calibrate "
            "activation ranges: pass ~100 training samples (array, tf.data.Dataset or "
            "generator), or use quantization='qat' for a quantization-aware model, or "
            "'dynamic' for int8 weights only.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConversionError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    path = os.fspath(path)
    check_folder(path)

    samples = None
    if representative_data is not None and quantization in ("int8", "qat"):
        samples = take_samples(representative_data, _sample_shape(model),
                               max_samples=num_calibration_steps, what="representative data")

    keras_model = model if batch_size is None else _static_batch_model(model, batch_size)
    content = run_converter(keras_model, quantization, samples, input_type, output_type,
                            allow_flex, detector)

    if detector:
        _check_custom_ops(content, model)
        content = detection_outputs(cpu_ops_last(content))
    report = inspect(content)
    if verify and quantization in ("int8", "qat"):
        try:
            verify_int8(report, input_type=input_type, output_type=output_type,
                        layer_names=keras_layer_names(model), quantization=quantization)
        except QuantizationVerificationError as e:
            hint = _unit_normalization_hint(model, e.problems)
            if hint is None:
                raise
            raise QuantizationVerificationError(f"{e} {hint}", e.problems) from None
    if target == "mediapipe":
        check_mediapipe(report, model, normalization, output_meaning)
    wants_metadata = bool(target is not None or labels is not None or
                          normalization is not None or output_meaning is not None or metadata)
    info = None
    if wants_metadata:
        extra = set(metadata or {}) - set(METADATA_FIELDS)
        if extra:
            raise ConversionError(f"metadata has unknown fields {sorted(extra)}; use "
                                  f"{METADATA_FIELDS}.")
        embed = target == "mediapipe" or has_schema()
        if not embed:
            warnings.warn(
                f"'{path}': labels and normalization go only to the JSON / labels sidecars: "
                "embedding TFLite metadata (what MediaPipe Tasks and the Task Library read) "
                "needs pip install 'tfkd[mediapipe]'.", stacklevel=2)
        try:
            content, info = add_metadata(
                content, os.path.basename(path), labels=labels, normalization=normalization,
                output_meaning=output_meaning, target=target, embed=embed,
                **(metadata or {}))
        except TFLiteError as e:
            raise ConversionError(f"Metadata for '{path}': {e}") from e
        report = inspect(content)
    # One write of the finished file (model + metadata), then its sidecars.
    write_atomic(path, content)
    report.path = path
    if info is not None:
        write_sidecars(path, info)
    return report


def run_converter(keras_model, quantization, samples, input_type, output_type, allow_flex,
                  detector):
    """The TFLite flatbuffer of `keras_model`: the one place tfkd calls a converter.

    TensorFlow's release notes say `tf.lite` will leave the TensorFlow wheel; the standalone
    `litert-converter` (0.5.0, checked) is not a drop-in yet: a low-level MLIR toolkit
    (`converter_api_ext.run_convert_to_tfl_passes`, flatbuffer read / write) with no
    `convert(model)`, pinning typing_extensions < 4.13. So this stays on
    `tf.lite.TFLiteConverter`; switching converters is a change to this function only.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization in ("int8", "qat"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if samples is not None:
            xs = [np.asarray(x, dtype=np.float32) for x, _ in samples]

            def representative_dataset():
                for x in xs:
                    yield [x[None]]

            converter.representative_dataset = representative_dataset
        # A QAT model carries its own ranges; restricting to INT8 builtins there would make
        # the converter demand a representative data set (measured), so only PTQ does it.
        if quantization == "int8":
            builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        converter.inference_input_type = _tf_type(input_type)
        converter.inference_output_type = _tf_type(output_type)
    ops = [builtins]
    if allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if detector:
        # Needed for TFLite_Detection_PostProcess; `_check_custom_ops` then refuses any other
        # op the converter would have let through as custom.
        converter.allow_custom_ops = True

    try:
        # Keras' export inside the converter prints its endpoints to stdout; that is noise
        # here, and it would corrupt the CLI's JSON output.
        with contextlib.redirect_stdout(io.StringIO()), \
                (exporting() if detector else contextlib.nullcontext()):
            content = converter.convert()
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ConversionError(_converter_hint(e, quantization, allow_flex)) from e

    return content


def target_io(target, quantization, input_type, output_type, detector, model):
    """(input_type, output_type) for `target`; explicit types must agree with it."""
    if target is None:
        return input_type or "float32", output_type
    if target not in TARGETS:
        raise ConversionError(f"target={target!r} is not one of {TARGETS}.")
    integer = quantization in ("int8", "qat")
    if target == "coral" and not integer:
        raise ConversionError(
            f"target='coral' needs a full-integer file: the Edge TPU runs only int8 graphs. "
            f"Use quantization='qat' (a tfkd.quantization model) or 'int8' with "
            f"representative_data, not {quantization!r}.")
    if integer:
        wanted_in = "uint8"  # raw pixels: what MediaPipe, pycoral and camera frames give
        wanted_out = {"mediapipe": "uint8", "coral": "uint8", "litert": "int8"}[target]
    else:
        wanted_in = wanted_out = "float32"
    if detector:
        wanted_out = "float32"  # the post-process op's outputs are float by definition
    for arg, given, wanted in (("input_type", input_type, wanted_in),
                               ("output_type", output_type, wanted_out)):
        if given is not None and given != wanted and target != "litert":
            why = ("MediaPipe Tasks read uint8 pixels and uint8 or float outputs, never int8"
                   if target == "mediapipe" else "pycoral feeds uint8 pixels")
            raise ConversionError(
                f"{arg}={given!r} does not fit target={target!r}, which needs {wanted} for "
                f"'{model.name}' ({why}). Leave {arg} unset.")
    return input_type or wanted_in, output_type or wanted_out


def check_pixel_input(report, normalization=None):
    """Raises ConversionError unless a uint8 input reads raw pixels the way the model expects.

    MediaPipe Tasks copy an image's bytes into a uint8 input as they are, so the file must
    map pixel p to the value the model was trained on: (p - zero_point) * scale must be
    (p - mean) / std for the model's `normalization` (raw pixels when None: scale 1,
    zero point 0). The converter takes the input's scale from the calibration data, so a
    calibration set that never reaches 0 or 255 gives a scale that is off.
    """
    norm = check_normalization(normalization) or {"mean": [0.0], "std": [1.0]}
    for t in report.inputs:
        if t.dtype != "uint8" or t.scale is None:
            continue
        mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
        if mean.size > 1 and np.ptp(mean) > 0 or std.size > 1 and np.ptp(std) > 0:
            raise ConversionError(
                f"Input '{t.name}' is uint8 with one scale, but normalization has per-channel "
                f"values {norm}: a uint8 input can only read pixels with one mean and std. "
                "Put the per-channel normalization inside the model (a Normalization layer).")
        want_scale, want_zp = 1.0 / float(std.flat[0]), float(mean.flat[0])
        if abs(t.scale - want_scale) > 1e-3 * want_scale or abs(t.zero_point - want_zp) > 0.5:
            raise ConversionError(
                f"Input '{t.name}' reads pixel p as (p - {t.zero_point}) * {t.scale:.6g}, but "
                f"the model expects (p - {want_zp:g}) / {float(std.flat[0]):g}: MediaPipe "
                "feeds raw pixels, so this file would see wrong values. Calibrate on data "
                "that spans 0-255 (real images do; a few hundred of them), give the "
                "normalization the model was trained with, or train with QAT "
                "(tfkd.quantization fixes the input range).")


def check_mediapipe(report, model, normalization, output_meaning):
    """Raises ConversionError when MediaPipe Tasks could not run the file as it is."""
    kind = model_kind(report, output_meaning)
    if kind == "image":
        raise ConversionError(
            f"target='mediapipe': '{model.name}' is an image-to-image model (super-"
            "resolution); MediaPipe Tasks has no task that runs one. Use target='litert' "
            "(LiteRT in an app: the Interpreter / CompiledModel APIs) or target='coral'.")
    if kind == "other":
        raise ConversionError(
            f"target='mediapipe': '{model.name}' is not a model MediaPipe's vision tasks run "
            "(one image input (1, H, W, C) and a classifier (1, classes), segmenter "
            "(1, H, W, classes), SSD detector (DetectionPostProcess) or embedding output). "
            "Use target='litert' to run it through LiteRT yourself.")
    check_pixel_input(report, normalization)


def _check_custom_ops(content, model):
    """A detector's file must hold exactly one custom op: the fused post-process. (Read from
    the flatbuffer: the interpreter refuses to load a file with an unknown custom op.)"""
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.Model.GetRootAs(content, 0)
    graph = fb.Subgraphs(0)
    custom = []
    for i in range(graph.OperatorsLength()):
        code = fb.OperatorCodes(graph.Operators(i).OpcodeIndex()).CustomCode()
        if code is not None:
            custom.append(code.decode())
    others = sorted({name for name in custom if name != OP_NAME and
                     not name.startswith("Flex")})
    if others:
        raise ConversionError(
            f"Converting '{model.name}' left custom ops {others} in the graph: custom ops are "
            f"allowed for {OP_NAME} only (the detector's post-process). Those ops have no "
            "TFLite builtin kernel: replace the layers that make them by builtin-friendly "
            "ones.")
    if custom.count(OP_NAME) != 1:
        raise ConversionError(
            f"'{model.name}' has a DetectionPostProcess layer but the file has "
            f"{custom.count(OP_NAME)} {OP_NAME} ops: the converter did not fuse the layer's "
            "annotated function. Call the layer once, at the end of the model "
            "(tfkd.students.detection.export_model does), on [box_regression, scores].")


def _unit_normalization_hint(model, problems):
    """The fix for a float island made by Keras' UnitNormalization, when it is one."""
    import keras

    names, stack = set(), [model]
    while stack:
        for layer in getattr(stack.pop(), "layers", None) or []:
            if isinstance(layer, keras.layers.UnitNormalization):
                names.add(layer.name)
            if getattr(layer, "layers", None):
                stack.append(layer)
    found = sorted(names & {p.get("layer") for p in problems})
    if not found:
        return None
    return (f"Keras' UnitNormalization ({', '.join(repr(n) for n in found)}) lowers to "
            "SQUARE / SUM / RSQRT / MINIMUM / MUL, which stay float in an int8 file: put "
            "tfkd.tflite.L2Normalization() in its place (tf.math.l2_normalize, which becomes "
            "TFLite's int8 L2_NORMALIZATION; same outputs in Keras, same weights).")


def _converter_hint(e, quantization, allow_flex):
    msg = str(e)
    lines = [ln for ln in msg.splitlines() if "error" in ln.lower()] or msg.splitlines()[:3]
    short = " | ".join(ln.strip() for ln in lines[:4])[:800]
    hint = ""
    if ("Select TF" in msg or "flex" in msg.lower() or "not supported" in msg) and \
            not allow_flex:
        hint = (" The model needs ops outside the TFLite builtins: replace those layers with "
                "builtin-friendly ones, or pass allow_flex=True (the file then needs the Flex "
                "runtime and cannot run on the Edge TPU).")
    elif quantization == "int8" and ("quantiz" in msg.lower()):
        hint = (" Some op has no int8 kernel: replace that layer, or use quantization='dynamic' "
                "to keep float activations.")
    return f"TFLite conversion ({quantization}) failed: {short}.{hint}"


def verify_int8(report, input_type="int8", output_type=None, layer_names=None,
                quantization="int8"):
    """Raises `QuantizationVerificationError` unless `report` is a fully int8 graph.

    Allowed float: only the graph-input QUANTIZE and graph-output DEQUANTIZE when float I/O
    was asked for, and in a detector the `TFLite_Detection_PostProcess` op (float in and out
    by definition, its anchors a float constant) with the DEQUANTIZEs whose outputs feed
    nothing but it. Everything else float (an op computing in float, a DEQUANTIZE/QUANTIZE
    pair around it, float I/O where int8/uint8 was asked) is reported with the Keras layer.
    """
    output_type = output_type or input_type
    input_ids = {t.index for t in report.inputs}
    output_ids = {t.index for t in report.outputs}
    problems = []

    def add(op, reason):
        layer = layer_for_op(op, layer_names) if op is not None else None
        problems.append({"op": op.name if op else None, "index": op.index if op else None,
                         "layer": layer, "reason": reason})

    consumers = {}
    producers = {}
    for op in report.ops:
        for t in op.inputs:
            consumers.setdefault(t.index, []).append(op)
        for t in op.outputs:
            producers[t.index] = op
    for kind, tensors, wanted in (("input", report.inputs, input_type),
                                  ("output", report.outputs, output_type)):
        for t in tensors:
            if t.dtype != wanted and not (kind == "output" and t.dtype == "float32" and
                                          producers.get(t.index) is not None and
                                          producers[t.index].name == OP_NAME):
                op = (consumers.get(t.index) or [None])[0] if kind == "input" else \
                    producers.get(t.index)
                add(op, f"model {kind} '{t.name}' is {t.dtype} but {wanted} was asked for")

    post = {op.index for op in report.ops if op.name == OP_NAME}
    for op in report.ops:
        floats = op.float_tensors
        if not floats:
            continue
        if op.index in post:
            continue
        if op.name == "DEQUANTIZE" and post and all(
                t.index not in output_ids and consumers.get(t.index) and
                all(c.index in post for c in consumers[t.index]) for t in op.outputs):
            continue
        if op.name == "QUANTIZE" and input_type == "float32" and \
                all(t.index in input_ids for t in op.inputs if t.is_float):
            continue
        if op.name == "DEQUANTIZE" and output_type == "float32" and \
                all(t.index in output_ids for t in op.outputs if t.is_float):
            continue
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            add(op, f"{op.name} inside the graph: tensors go back to float around a float op")
        else:
            names = ", ".join(sorted({t.dtype for t in floats}))
            add(op, f"{op.name} computes in float ({names} tensors)")
    if problems:
        fix = ("wrap the layer with fake-quant (quantize it with tfkd.quantization) so its "
               "input and output carry ranges, or replace it by an int8-friendly layer"
               if quantization == "qat" else
               "replace the layer by one with an int8 kernel (Conv/Depthwise/Dense/ReLU/pools/"
               "Add/Concat), or use quantization='dynamic'")
        listing = "; ".join(
            f"op #{p['index']} {p['op']} (Keras layer '{p['layer'] or '?'}'): {p['reason']}"
            for p in problems)
        raise QuantizationVerificationError(
            f"The {quantization} graph is not fully int8: {listing}. Fix: {fix}.", problems)
    return report


__all__ = ["convert", "run_converter", "verify_int8", "check_pixel_input", "QUANTIZATIONS", "IO_TYPES", "TARGETS"]
