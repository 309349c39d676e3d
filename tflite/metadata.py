"""TFLite metadata inside the `.tflite`: what an Android app's client reads to use the file.

MediaPipe Tasks (`ImageClassifier`, `ObjectDetector`, `ImageSegmenter`, `ImageEmbedder`) and
the TFLite Task Library read the model's metadata: a `ModelMetadata` flatbuffer (file
identifier "M001") stored in one of the model's buffers under the name `TFLITE_METADATA`,
plus the associated files it names (the labels), packed as an uncompressed zip archive
appended to the model (a `.tflite` with associated files is also a valid zip). This module
writes and reads that format:

- model: name, description, version, author, licence;
- input image: colour space (RGB / grayscale), value range, and for a float input the
  NormalizationOptions (mean, std) that MediaPipe needs to feed float pixels (a uint8 input
  takes the raw pixels: its quantization already says what a pixel means);
- outputs, by what the file is (`kind`): a classifier's scores with a `TENSOR_AXIS_LABELS`
  file; a detector's four post-processed outputs named `location`, `category`, `score`,
  `number of detections` (boxes as [ymin, xmin, ymax, xmax] ratios, a `TENSOR_VALUE_LABELS`
  file on the categories), grouped as MediaPipe's own detectors are; a segmenter's
  (1, H, W, C) masks with a `TENSOR_AXIS_LABELS` file, and MediaPipe's
  `SEGMENTER_METADATA` (its output activation) when the masks are logits; an embedder's
  feature vector;
- `tfkd.json`, an associated file of type DESCRIPTIONS: the export target, what the output
  means and the tfkd version (what `tfkd-tflite inspect` prints beside the metadata).

Why written here: no maintained metadata writer installs beside TensorFlow 2.21 (checked:
`tflite-support` 0.4.4 pins protobuf < 4; MediaPipe's `metadata_writers` import a native
module, `_pywrap_metadata_version`, that current MediaPipe wheels no longer ship). What is
reused is the generated Python code of the schemas: `metadata_schema_py_generated` and
`image_segmenter_metadata_schema_py_generated` from the `mediapipe` wheel
(`mediapipe.tasks.metadata`, built from MediaPipe's `metadata_schema.fbs` 1.5.0) and the
model schema `schema_py_generated` from `ai_edge_litert`, with `flatbuffers`; no table is
typed by hand. `pip install tfkd[mediapipe]` provides them.

Beside the model, for humans and for clients that read plain files (pycoral's
`read_label_file`), two sidecars are written atomically: `<stem>.labels.txt` (line i =
class i) and `<stem>.json` (the same facts as JSON).

Example:

    >>> import keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2), keras.layers.Softmax()])
    >>> _ = tfl.convert(m, "/tmp/md.tflite")
    >>> info = tfl.write_metadata("/tmp/md.tflite", labels=["cat", "dog"],
    ...                           normalization=(127.5, 127.5), output_meaning="probabilities")
    >>> md = tfl.read_metadata("/tmp/md.tflite")
    >>> md["kind"], md["labels"], md["input"]["normalization"]["std"]
    ('classifier', ['cat', 'dog'], [127.5])
"""
from __future__ import annotations

import io
import json
import os
import sys
import zipfile

import numpy as np

from .errors import TFLiteError
from .files import write_atomic
from .inspection import inspect

METADATA_NAME = "TFLITE_METADATA"
SEGMENTER_METADATA = "SEGMENTER_METADATA"
KINDS = ("classifier", "detector", "segmenter", "embedder", "other")
LABELS_FILE = "labels.txt"
INFO_FILE = "tfkd.json"
DETECTION_NAMES = ("location", "category", "score", "number of detections")
# Versions of the metadata schema features used (the schema's "History" comments): the
# file's min_parser_version is the largest one used, as the spec asks.
_TENSOR_GROUPS_VERSION = "1.2.0"
_CUSTOM_METADATA_VERSION = "1.5.0"


class MetadataSchemaMissingError(TFLiteError):
    """The generated metadata schema code (from the `mediapipe` wheel) is not installed."""


def _schemas():
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as md
        from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg
    except ImportError as e:
        raise MetadataSchemaMissingError(
            "Writing TFLite metadata into the file needs the generated metadata schema code "
            "that the `mediapipe` wheel ships: pip install 'tfkd[mediapipe]' (or pass "
            "target='litert' / 'coral' to write only the labels and JSON sidecars).") from e
    from ai_edge_litert import schema_py_generated as model_schema

    return md, seg, model_schema


def has_schema():
    """True when metadata can be embedded (the `mediapipe` wheel is installed)."""
    try:
        _schemas()
        return True
    except MetadataSchemaMissingError:
        return False


def _listify(v):
    if v is None:
        return None
    return np.atleast_1d(np.asarray(v, dtype=np.float64)).tolist()


def sidecar_paths(tflite_path):
    stem, _ = os.path.splitext(os.fspath(tflite_path))
    return stem + ".json", stem + ".labels.txt"


def model_kind(report, output_meaning=None):
    """What the file is for its client: "detector" (ends in the SSD post-process op),
    "segmenter" ((1, H, W, C) output of an image), "embedder" (output_meaning "embedding"),
    "image" (output_meaning "image": an image-to-image model such as super-resolution),
    "classifier" ((1, C) output of an image) or "other"."""
    from .postprocess import OP_NAME

    if any(op.name == OP_NAME for op in report.ops):
        return "detector"
    image_in = len(report.inputs) == 1 and len(report.inputs[0].shape) == 4
    if not image_in or len(report.outputs) != 1:
        return "other"
    shape = report.outputs[0].shape
    if output_meaning == "embedding" and len(shape) == 2:
        return "embedder"
    if output_meaning == "image" and len(shape) == 4:
        return "image"
    if len(shape) == 4:
        return "segmenter"
    if len(shape) == 2:
        return "classifier"
    return "other"


def check_normalization(normalization):
    """`(mean, std)` or {"mean", "std"} -> {"mean": [...], "std": [...]} (None stays None)."""
    if normalization is None:
        return None
    if isinstance(normalization, dict):
        mean, std = normalization.get("mean"), normalization.get("std")
    else:
        try:
            mean, std = normalization
        except (TypeError, ValueError):
            raise TFLiteError(
                f"normalization={normalization!r}: give (mean, std), scalars or one value per "
                "channel, e.g. (127.5, 127.5) for a model that takes (pixel - 127.5) / 127.5."
            ) from None
    if mean is None or std is None:
        raise TFLiteError("normalization needs both a mean and a std.")
    if np.any(np.asarray(std, dtype=np.float64) == 0):
        raise TFLiteError("normalization std contains 0: pass the divisor the model "
                          "expects (e.g. 255 or 127.5).")
    return {"mean": _listify(mean), "std": _listify(std)}


def _check_labels(labels, report, kind):
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if any("\n" in label for label in labels):
        raise TFLiteError("Labels cannot contain newlines (one label per line).")
    if kind in ("classifier", "segmenter"):
        classes = report.outputs[0].shape_signature[-1]
        if classes and classes > 0 and classes != len(labels):
            raise TFLiteError(
                f"{len(labels)} labels for an output of {classes} classes: give one label "
                "per output unit.")
    return labels


def _stats(md, lo, hi):
    stats = md.StatsT()
    stats.min, stats.max = list(lo), list(hi)
    return stats


def _content(md, kind_name, properties, value_dim=None):
    content = md.ContentT()
    content.contentPropertiesType = getattr(md.ContentProperties, kind_name)
    content.contentProperties = properties
    if value_dim is not None:
        rng = md.ValueRangeT()
        rng.min = rng.max = value_dim
        content.range = rng
    return content


def _file(md, name, description, file_type):
    f = md.AssociatedFileT()
    f.name, f.description = name, description
    f.type = getattr(md.AssociatedFileType, file_type)
    return f


def _tensor(md, name, description, content=None, stats=None, files=None, units=None):
    t = md.TensorMetadataT()
    t.name, t.description = name, description
    t.content, t.stats = content, stats
    t.associatedFiles = files or None
    t.processUnits = units or None
    return t


def _input_metadata(md, tensor, normalization):
    channels = tensor.shape[-1] if len(tensor.shape) == 4 else None
    image = md.ImagePropertiesT()
    image.colorSpace = (md.ColorSpaceType.GRAYSCALE if channels == 1 else
                        md.ColorSpaceType.RGB)
    units, stats = None, _stats(md, [0.0], [255.0])
    if tensor.dtype == "float32":
        # MediaPipe feeds a float input (pixel - mean) / std and refuses one without these.
        norm = normalization or {"mean": [0.0], "std": [1.0]}
        options = md.NormalizationOptionsT()
        options.mean, options.std = norm["mean"], norm["std"]
        unit = md.ProcessUnitT()
        unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
        unit.options = options
        units = [unit]
        mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
        stats = _stats(md, np.atleast_1d((0.0 - mean) / std).tolist(),
                       np.atleast_1d((255.0 - mean) / std).tolist())
    return _tensor(md, "image", "Input image: RGB pixels 0-255" if channels != 1 else
                   "Input image: grayscale pixels 0-255",
                   content=_content(md, "ImageProperties", image), stats=stats, units=units)


def _output_metadata(md, seg, kind, report, labels, output_meaning):
    """(output TensorMetadata list, output tensor groups, custom metadata list)."""
    label_files = lambda file_type: (  # noqa: E731
        [_file(md, LABELS_FILE, "Class names, line i = class i.", file_type)]
        if labels is not None else None)
    if kind == "detector":
        value_dim = 2
        box = md.BoundingBoxPropertiesT()
        box.index = [1, 0, 3, 2]  # the op writes [ymin, xmin, ymax, xmax]
        box.type = md.BoundingBoxType.BOUNDARIES
        box.coordinateType = md.CoordinateType.RATIO
        feature = lambda: _content(md, "FeatureProperties", md.FeaturePropertiesT(),  # noqa
                                   value_dim)
        outputs = [
            _tensor(md, DETECTION_NAMES[0], "Boxes [ymin, xmin, ymax, xmax], 0-1 ratios.",
                    content=_content(md, "BoundingBoxProperties", box, value_dim)),
            _tensor(md, DETECTION_NAMES[1], "Class index of each box.", content=feature(),
                    files=label_files("TENSOR_VALUE_LABELS")),
            _tensor(md, DETECTION_NAMES[2], "Score of each box.", content=feature(),
                    stats=_stats(md, [0.0], [1.0])),
            _tensor(md, DETECTION_NAMES[3], "Number of valid boxes."),
        ]
        group = md.TensorGroupT()
        group.name = "detection_result"
        group.tensorNames = list(DETECTION_NAMES[:3])
        return outputs, [group], None
    features = lambda: _content(md, "FeatureProperties", md.FeaturePropertiesT())  # noqa
    probabilities = output_meaning in (None, "probabilities", "scores")
    if kind == "classifier":
        return [_tensor(md, "probability" if probabilities else "logits",
                        f"Class {'probabilities' if probabilities else output_meaning}.",
                        content=features(),
                        stats=_stats(md, [0.0], [1.0]) if probabilities else None,
                        files=label_files("TENSOR_AXIS_LABELS"))], None, None
    if kind == "segmenter":
        image = md.ImagePropertiesT()
        image.colorSpace = md.ColorSpaceType.GRAYSCALE
        out = _tensor(md, "segmentation_masks",
                      f"Per-pixel class {'probabilities' if probabilities else output_meaning}"
                      " (1, H, W, classes).", content=_content(md, "ImageProperties", image),
                      files=label_files("TENSOR_AXIS_LABELS"))
        custom = None
        activation = {"logits": "SOFTMAX", "sigmoid_logits": "SIGMOID"}.get(output_meaning)
        if activation is not None:
            options = seg.ImageSegmenterOptionsT()
            options.activation = getattr(seg.Activation, activation)
            options.minParserVersion = "1.0.0"
            entry = md.CustomMetadataT()
            entry.name = SEGMENTER_METADATA
            entry.data = list(_finish(options, b"V001"))
            custom = [entry]
        return [out], None, custom
    if kind == "embedder":
        return [_tensor(md, "embedding", "Feature vector of the image.",
                        content=features())], None, None
    if kind == "image":
        channels = report.outputs[0].shape[-1]
        image = md.ImagePropertiesT()
        image.colorSpace = (md.ColorSpaceType.GRAYSCALE if channels == 1 else
                            md.ColorSpaceType.RGB)
        return [_tensor(md, "image", "Output image: pixels 0-255 (clip and round to show).",
                        content=_content(md, "ImageProperties", image),
                        stats=_stats(md, [0.0], [255.0]))], None, None
    return [_tensor(md, t.name, output_meaning or "") for t in report.outputs], None, None


def _finish(table, identifier):
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(table.Pack(builder), file_identifier=identifier)
    return bytes(builder.Output())


def _version(*used):
    return max(("1.0.0",) + used, key=lambda v: tuple(int(p) for p in v.split(".")))


def metadata_buffer(report, kind, labels=None, normalization=None, output_meaning=None,
                    name=None, description=None, version=None, author=None, license=None,
                    info=None):
    """The `ModelMetadata` flatbuffer (bytes, identifier M001) for a file's `report`."""
    md, seg, _ = _schemas()
    sub = md.SubGraphMetadataT()
    sub.inputTensorMetadata = [_input_metadata(md, t, normalization) for t in report.inputs]
    outputs, groups, custom = _output_metadata(md, seg, kind, report, labels, output_meaning)
    sub.outputTensorMetadata, sub.outputTensorGroups, sub.customMetadata = outputs, groups, custom
    model = md.ModelMetadataT()
    model.name = name or f"tfkd {kind}"
    model.description = description or f"A tfkd {kind} (knowledge-distilled Keras student)."
    model.version = version or "1"
    model.author = author or "tfkd"
    model.license = license
    model.subgraphMetadata = [sub]
    if info is not None:
        model.associatedFiles = [_file(md, INFO_FILE, "tfkd export facts (JSON).",
                                       "DESCRIPTIONS")]
    model.minParserVersion = _version(*([_TENSOR_GROUPS_VERSION] if groups else []),
                                      *([_CUSTOM_METADATA_VERSION] if custom else []))
    return _finish(model, b"M001")


def embed_metadata(content: bytes, metadata: bytes, files: dict) -> bytes:
    """`content` with `metadata` as its TFLITE_METADATA buffer (replacing any) and `files`
    ({name: bytes}) as the appended uncompressed zip the metadata spec asks for."""
    _, _, schema = _schemas()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    entries = [m for m in (model.metadata or []) if _name(m.name) == METADATA_NAME]
    if entries:
        model.buffers[entries[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = list(model.metadata or []) + [entry]
    out = io.BytesIO(_finish(model, b"TFL3"))
    out.seek(0, io.SEEK_END)
    if files:
        # ZIP_STORED: clients read associated files in place, uncompressed.
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
            for file_name, data in files.items():
                zf.writestr(file_name, data)
    return out.getvalue()


def _name(v):
    return v.decode() if isinstance(v, bytes) else v


def write_metadata(tflite_path, labels=None, normalization=None, output_meaning=None,
                   name=None, description=None, version=None, author=None, license=None,
                   target=None, extra=None, embed=True):
    """Writes TFLite metadata into the `.tflite` and the sidecars beside it; returns the
    sidecar dict.

    Args:
      tflite_path: the `.tflite` file, rewritten atomically (the old file stays on error).
      labels: class names, index = class id; must match a classifier's or segmenter's
        classes.
      normalization: `(mean, std)` (scalars or per-channel lists) or {"mean", "std"}: what
        the model expects of a pixel, (pixel - mean) / std. Stored as NormalizationOptions
        for a float input (MediaPipe needs them; default (0, 1): raw pixels).
      output_meaning: "probabilities" (default), "logits", "sigmoid_logits" (segmenter) or
        "embedding"; a segmenter's logits get MediaPipe's SOFTMAX / SIGMOID activation.
      name, description, version, author, license: the model's descriptive fields.
      target: the client the file was exported for ("mediapipe", "coral", "litert"),
        recorded in `tfkd.json`.
      extra: more JSON-serializable fields for the sidecar.
      embed: False writes only the sidecars (no `mediapipe` needed).

    Raises:
      TFLiteError: labels that do not match the output, a bad normalization.
      MetadataSchemaMissingError: `embed=True` without the `mediapipe` wheel.
    """
    path = os.fspath(tflite_path)
    with open(path, "rb") as f:
        content = f.read()
    content, info = add_metadata(
        content, os.path.basename(path), labels=labels, normalization=normalization,
        output_meaning=output_meaning, name=name, description=description, version=version,
        author=author, license=license, target=target, extra=extra, embed=embed)
    if embed:
        write_atomic(path, content)
    write_sidecars(path, info)
    return info


def add_metadata(content, file_name, labels=None, normalization=None, output_meaning=None,
                 name=None, description=None, version=None, author=None, license=None,
                 target=None, extra=None, embed=True):
    """(the model bytes with metadata embedded when `embed`, the sidecar dict); writes
    nothing. Arguments as for `write_metadata`."""
    report = inspect(content)
    kind = model_kind(report, output_meaning)
    if output_meaning == "embedding" and kind != "embedder":
        shapes = [list(t.shape_signature) for t in report.outputs]
        raise TFLiteError(
            f"output_meaning='embedding' needs one image input (1, H, W, C) and one output "
            f"(1, D); this file has inputs {[list(t.shape_signature) for t in report.inputs]} "
            f"and outputs {shapes}. End the model in GlobalAveragePooling2D / Flatten + Dense "
            "+ tfkd.tflite.L2Normalization.")
    labels = _check_labels(labels, report, kind)
    norm = check_normalization(normalization)
    _, labels_path = sidecar_paths(file_name)

    def io_dict(t):
        return {"name": t.name, "shape": list(t.shape_signature), "dtype": t.dtype,
                "scale": t.scale, "zero_point": t.zero_point}

    info = {
        "model": file_name,
        "kind": kind,
        "target": target,
        "labels_file": os.path.basename(labels_path) if labels is not None else None,
        "labels": labels,
        "input": dict(io_dict(report.inputs[0]), normalization=norm),
        "output": dict(io_dict(report.outputs[0]), meaning=output_meaning),
        "outputs": [t.name for t in report.outputs],
        "embedded_metadata": bool(embed),
        "tfkd_version": getattr(sys.modules.get(__package__), "__version__", None),
    }
    if extra:
        info.update(extra)
    if embed:
        facts = {k: info[k] for k in ("kind", "target", "tfkd_version")}
        facts["output_meaning"] = output_meaning
        buffer = metadata_buffer(report, kind, labels, norm, output_meaning, name,
                                 description, version, author, license, info=facts)
        files = {INFO_FILE: (json.dumps(facts, indent=2) + "\n").encode("utf-8")}
        if labels is not None:
            files[LABELS_FILE] = ("\n".join(labels) + "\n").encode("utf-8")
        content = embed_metadata(content, buffer, files)
    return content, info


def write_sidecars(tflite_path, info):
    """`<stem>.labels.txt` (when `info` has labels) and `<stem>.json`, written atomically."""
    json_path, labels_path = sidecar_paths(tflite_path)
    if info.get("labels") is not None:
        write_atomic(labels_path, ("\n".join(info["labels"]) + "\n").encode("utf-8"))
    write_atomic(json_path, (json.dumps(info, indent=2) + "\n").encode("utf-8"))


def associated_files(model) -> dict:
    """{name: bytes} of the files packed in a `.tflite` (path or bytes); {} when none."""
    content = _content_of(model)
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def _content_of(model):
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    with open(os.fspath(model), "rb") as f:
        return f.read()


def _metadata_bytes(content):
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.Model.GetRootAs(content, 0)
    for i in range(fb.MetadataLength()):
        entry = fb.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            return fb.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read_metadata(model):
    """The TFLite metadata embedded in a `.tflite` (path or bytes) as a dict, or None.

    Keys: name, description, version, author, license, min_parser_version, kind, target,
    output_meaning, tfkd_version, input {"color_space", "normalization"}, outputs [names],
    labels (from the packed labels file) and associated_files [names].
    """
    content = _content_of(model)
    buf = _metadata_bytes(content)
    if buf is None:
        return None
    md, seg, _ = _schemas()
    meta = md.ModelMetadataT.InitFromPackedBuf(buf, 0)
    sub = meta.subgraphMetadata[0] if meta.subgraphMetadata else md.SubGraphMetadataT()
    files = associated_files(content)
    facts = json.loads(files[INFO_FILE]) if INFO_FILE in files else {}
    inp = (sub.inputTensorMetadata or [None])[0]
    color = norm = None
    if inp is not None and inp.content is not None and \
            inp.content.contentPropertiesType == md.ContentProperties.ImageProperties:
        names = {v: k for k, v in vars(md.ColorSpaceType).items() if not k.startswith("_")}
        color = names.get(inp.content.contentProperties.colorSpace)
    for unit in (inp.processUnits or []) if inp is not None else []:
        if unit.optionsType == md.ProcessUnitOptions.NormalizationOptions:
            norm = {"mean": [float(v) for v in unit.options.mean],
                    "std": [float(v) for v in unit.options.std]}
    labels = None
    for t in sub.outputTensorMetadata or []:
        for f in t.associatedFiles or []:
            if _name(f.name) in files and f.type in (md.AssociatedFileType.TENSOR_AXIS_LABELS,
                                                     md.AssociatedFileType.TENSOR_VALUE_LABELS):
                labels = files[_name(f.name)].decode("utf-8").splitlines()
    activation = None
    for entry in sub.customMetadata or []:
        if _name(entry.name) == SEGMENTER_METADATA:
            options = seg.ImageSegmenterOptionsT.InitFromPackedBuf(
                bytes(bytearray(entry.data)), 0)
            activation = {v: k for k, v in vars(seg.Activation).items()
                          if not k.startswith("_")}.get(options.activation)
    return {
        "name": _name(meta.name), "description": _name(meta.description),
        "version": _name(meta.version), "author": _name(meta.author),
        "license": _name(meta.license), "min_parser_version": _name(meta.minParserVersion),
        "kind": facts.get("kind"), "target": facts.get("target"),
        "output_meaning": facts.get("output_meaning"),
        "tfkd_version": facts.get("tfkd_version"),
        "input": {"color_space": color, "normalization": norm},
        "outputs": [_name(t.name) for t in sub.outputTensorMetadata or []],
        "segmenter_activation": activation,
        "labels": labels,
        "associated_files": sorted(files),
    }


def recorded_output_meaning(model):
    """What tfkd recorded the file's output to mean ("embedding", "logits", ...): from the
    `tfkd.json` packed in the file, else from its JSON sidecar; None when neither says (or
    `model` is not a readable file)."""
    try:
        files = associated_files(model)
        if INFO_FILE in files:
            return json.loads(files[INFO_FILE]).get("output_meaning")
        if isinstance(model, (str, os.PathLike)):
            return ((read_sidecar(model) or {}).get("output") or {}).get("meaning")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return None


def read_sidecar(tflite_path):
    """The sidecar dict written by `write_metadata` (None when there is none)."""
    json_path, _ = sidecar_paths(tflite_path)
    if not os.path.exists(json_path):
        return None
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


__all__ = ["write_metadata", "add_metadata", "write_sidecars", "read_metadata",
           "read_sidecar", "associated_files",
           "embed_metadata", "metadata_buffer", "model_kind", "sidecar_paths", "has_schema",
           "check_normalization", "recorded_output_meaning", "MetadataSchemaMissingError",
           "KINDS"]
