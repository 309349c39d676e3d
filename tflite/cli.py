"""`tfkd-tflite`: convert, inspect, evaluate, compare, benchmark and Edge TPU-check models.

    tfkd-tflite convert  student.keras --out student.tflite --quantization int8 \\
                         --data calib.npz --x_key x_train --input_type int8
    tfkd-tflite convert  student.keras --out student.tflite --quantization int8 \\
                         --data calib.npz --target mediapipe --labels labels.txt
    tfkd-tflite inspect  student.tflite [--json]      # ops, I/O and the TFLite metadata
    tfkd-tflite evaluate student.tflite --data test.npz --x_key x_test --y_key y_test
    tfkd-tflite evaluate segmenter.tflite --data camvid.npz --metrics miou,pixel_accuracy \
                         --ignore_class 11
    tfkd-tflite evaluate detector.tflite --data test.npz --metrics map,map50
    tfkd-tflite parity   student.keras student.tflite --data test.npz
    tfkd-tflite bench    student.tflite --threads 1,2
    tfkd-tflite edgetpu  student.tflite [--compile --out_dir build/]

The file a command works on may be given positionally, as above, or with `--model` /
`--tflite` (parity takes both, told apart by the `.tflite` suffix); giving it both ways with
different paths is an error. Data comes from an `.npz` file; `--x_key` / `--y_key` name its
arrays (default: the first array whose name starts with "x" / "y"); pixels of any dtype
(uint8 images included) are quantized for an int8 / uint8 model. For a detection file (one
ending in TFLite_Detection_PostProcess) the `.npz` holds the images (--x_key), `boxes`
(N, M, 4) normalised [ymin, xmin, ymax, xmax], `classes` (N, M) with -1 on padding rows and,
optionally, `sizes` (N, 2) the original (height, width) for COCO's area split; --metrics
defaults to map,map50 there. Results print as JSON (text
for inspect / edgetpu unless --json). Errors exit with status 1 and the error's message; a wrong command line
exits with status 2.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

# Own FlagValues: flags such as --data or --batch_size would otherwise collide with the
# recipes' absl flags when both are imported in one process (the test suite does).
FLAGS = flags.FlagValues()
COMMANDS = ("convert", "inspect", "evaluate", "parity", "bench", "edgetpu")
# The flag a positional file stands for, per command (parity: decided by the suffix).
POSITIONAL = {"convert": ("model",), "inspect": ("tflite",), "evaluate": ("tflite",),
              "parity": ("model", "tflite"), "bench": ("tflite",), "edgetpu": ("tflite",)}
USAGE = (f"usage: tfkd-tflite {{{'|'.join(COMMANDS)}}} [FILE] [flags]  "
         "(e.g. `tfkd-tflite inspect model.tflite`; --help for flags)")

flags.DEFINE_string("model", None, "Keras model file (.keras) for convert / parity "
                    "(or give it positionally).", flag_values=FLAGS)
flags.DEFINE_string("tflite", None, ".tflite file to inspect / evaluate / bench / check "
                    "(or give it positionally).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output .tflite path for convert.", flag_values=FLAGS)
flags.DEFINE_enum("quantization", "float32", ["float32", "float16", "dynamic", "int8", "qat"],
                  "Quantization for convert.", flag_values=FLAGS)
flags.DEFINE_enum("input_type", None, ["float32", "int8", "uint8"],
                  "Input dtype (default: what --target needs, else float32).", flag_values=FLAGS)
flags.DEFINE_enum("output_type", None, ["float32", "int8", "uint8"],
                  "Output dtype (default: what --target needs, else --input_type).",
                  flag_values=FLAGS)
flags.DEFINE_enum("target", None, ["mediapipe", "coral", "litert"],
                  "convert: the client the file is for; picks the I/O types and writes the "
                  "TFLite metadata (mediapipe: MediaPipe Tasks in an Android app).",
                  flag_values=FLAGS)
flags.DEFINE_list("normalization", None, "convert: mean,std the model expects of a pixel, "
                  "(pixel - mean) / std, for the metadata (default: raw pixels).",
                  flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 1, "Static batch of the signature; 0 keeps it dynamic.", flag_values=FLAGS)
flags.DEFINE_bool("allow_flex", False, "Allow TensorFlow (Flex) ops.", flag_values=FLAGS)
flags.DEFINE_integer("num_calibration_steps", 100, "Calibration samples for int8.", flag_values=FLAGS)
flags.DEFINE_string("data", None, ".npz file with the data.", flag_values=FLAGS)
flags.DEFINE_string("x_key", None, "Array of inputs in --data.", flag_values=FLAGS)
flags.DEFINE_string("y_key", None, "Array of labels in --data.", flag_values=FLAGS)
flags.DEFINE_integer("max_samples", None, "Use at most this many samples.", flag_values=FLAGS)
flags.DEFINE_list("metrics", None, "evaluate: comma-separated metric names: accuracy "
                  "(the default), miou, pixel_accuracy, per_class_iou (dense outputs), Keras "
                  "metric names, or for detection files map, map50, map75, map_small, "
                  "map_medium, map_large, per_class_ap, per_class_ap50 (default map,map50).",
                  flag_values=FLAGS)
flags.DEFINE_integer("ignore_class", None, "evaluate, dense metrics: label id left out of "
                     "every figure (the void class, e.g. 11 for CamVid).", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "evaluate, dense metrics: number of classes "
                     "(default: the output's channels).", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "Text file of labels (one per line) for convert.", flag_values=FLAGS)
flags.DEFINE_list("threads", ["1", "2"], "Thread counts for bench.", flag_values=FLAGS)
flags.DEFINE_integer("runs", 50, "Timed runs per thread count for bench.", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 5, "Untimed runs before timing for bench.", flag_values=FLAGS)
flags.DEFINE_bool("compile", False, "edgetpu: also run edgetpu_compiler (must be on PATH).", flag_values=FLAGS)
flags.DEFINE_string("out_dir", None, "edgetpu --compile: output folder.", flag_values=FLAGS)
flags.DEFINE_bool("json", False, "Print inspect / edgetpu results as JSON.", flag_values=FLAGS)


class UsageError(Exception):
    pass


def _need(name, files=None):
    value = (files or {}).get(name, getattr(FLAGS, name))
    if value is None:
        what = "the .tflite file" if name == "tflite" else \
            "the Keras model file" if name == "model" else None
        how = f" (give {what} positionally or with --{name})" if what else ""
        raise UsageError(f"--{name} is required for this command{how}.")
    return value


def _positional_files(command, args):
    """{"model" / "tflite": path} from the positional arguments, checked against the flags."""
    slots = POSITIONAL[command]
    files = {}
    for arg in args:
        if len(slots) == 1:
            name = slots[0]
        else:  # parity: a .tflite and a Keras model
            name = "tflite" if arg.lower().endswith(".tflite") else "model"
        if name in files:
            takes = " and ".join("one .tflite file" if n == "tflite" else "one Keras model file"
                                 for n in slots)
            raise UsageError(f"Too many files for `{command}`: {list(args)}. It takes {takes}.")
        files[name] = arg
    for name, path in files.items():
        flag = getattr(FLAGS, name)
        if flag is not None and os.path.abspath(flag) != os.path.abspath(path):
            raise UsageError(
                f"Two different files for `{command}`: '{path}' and --{name}='{flag}'. Give "
                "the file once, positionally or with the flag.")
    return files


def _load_npz(path, need_y):
    import numpy as np

    with np.load(path) as npz:
        keys = list(npz.keys())
        x_key = FLAGS.x_key or next((k for k in keys if k.lower().startswith("x")), None)
        y_key = FLAGS.y_key or next((k for k in keys if k.lower().startswith("y")), None)
        if x_key not in keys:
            raise UsageError(f"No input array {x_key!r} in {path} (arrays: {keys}): "
                             "name it with --x_key.")
        x = npz[x_key]
        y = None
        if need_y:
            if y_key not in keys:
                raise UsageError(f"No label array {y_key!r} in {path} (arrays: {keys}): "
                                 "name it with --y_key.")
            y = npz[y_key]
    if FLAGS.max_samples:
        x = x[:FLAGS.max_samples]
        y = None if y is None else y[:FLAGS.max_samples]
    return x, y


def _load_detection_npz(path):
    """(images, (images, boxes, classes), sizes or None) of a detection `.npz`."""
    import numpy as np

    x, _ = _load_npz(path, need_y=False)
    with np.load(path) as npz:
        missing = [k for k in ("boxes", "classes") if k not in npz]
        if missing:
            raise UsageError(
                f"The .tflite is a detector, so {path} needs arrays 'boxes' (N, M, 4) "
                "normalised [ymin, xmin, ymax, xmax] and 'classes' (N, M), -1 on padding "
                f"rows; it lacks {missing} (arrays: {list(npz.keys())}).")
        boxes, classes = npz["boxes"], npz["classes"]
        sizes = npz["sizes"] if "sizes" in npz else None
    n = len(x)
    return x, (x, boxes[:n], classes[:n]), (None if sizes is None else sizes[:n])


def _normalization(values):
    if not values:
        return None
    try:
        mean, std = (float(v) for v in values)
    except ValueError:
        raise UsageError(f"--normalization={','.join(values)}: give two numbers, mean,std "
                         "(e.g. 127.5,127.5).") from None
    return mean, std


def _metadata_text(meta, path):
    """The embedded TFLite metadata, as `inspect` prints it."""
    import tfkd.tflite as tfl

    if meta is None:
        if not tfl.metadata.has_schema():
            return "Metadata: not read (pip install 'tfkd[mediapipe]')."
        return (f"Metadata: none (MediaPipe Tasks cannot run '{os.path.basename(path)}'; "
                "convert with --target=mediapipe --labels=...).")
    labels = meta["labels"]
    shown = ", ".join(labels[:5]) + (", ..." if labels and len(labels) > 5 else "") \
        if labels else ""
    norm = meta["input"]["normalization"]
    lines = [
        f"Metadata: {meta['name']} (version {meta['version']}, author {meta['author']}, "
        f"license {meta['license'] or '-'}; parser >= {meta['min_parser_version']})",
        f"  kind: {meta['kind']}, target: {meta['target'] or '-'}, output: "
        f"{', '.join(meta['outputs'])} ({meta['output_meaning'] or 'probabilities'})",
        f"  labels: {len(labels) if labels else 0}" + (f" ({shown})" if shown else ""),
        f"  input: {meta['input']['color_space']}, normalization: "
        + (f"mean {norm['mean']} std {norm['std']}" if norm else "none (uint8 raw pixels)"),
        f"  associated files: {', '.join(meta['associated_files']) or '-'}",
    ]
    if meta.get("segmenter_activation"):
        lines.append(f"  segmenter activation: {meta['segmenter_activation']}")
    return "\n".join(lines)


def _load_keras(path):
    import keras

    return keras.models.load_model(path, compile=False, safe_mode=True)


def _execute(command, files=None):
    import tfkd.tflite as tfl

    def need(name):
        return _need(name, files)

    if command == "convert":
        model = _load_keras(need("model"))
        data = _load_npz(FLAGS.data, need_y=False)[0] if FLAGS.data else None
        labels = None
        if FLAGS.labels:
            with open(FLAGS.labels, encoding="utf-8") as f:
                labels = [ln.rstrip("\n") for ln in f if ln.strip()]
        report = tfl.convert(
            model, need("out"), quantization=FLAGS.quantization, representative_data=data,
            input_type=FLAGS.input_type, output_type=FLAGS.output_type,
            batch_size=FLAGS.batch_size or None, allow_flex=FLAGS.allow_flex,
            num_calibration_steps=FLAGS.num_calibration_steps, labels=labels,
            target=FLAGS.target, normalization=_normalization(FLAGS.normalization))
        return json.dumps({k: v for k, v in report.to_dict().items() if k != "ops"}, indent=2)
    if command == "inspect":
        report = tfl.inspect(need("tflite"))
        meta = tfl.read_metadata(need("tflite")) if tfl.metadata.has_schema() else None
        if FLAGS.json:
            return json.dumps(dict(report.to_dict(), metadata=meta), indent=2)
        return str(report) + "\n" + _metadata_text(meta, need("tflite"))
    if command == "evaluate":
        from tfkd.tflite.evaluate import is_detector

        data_path = need("data")
        if is_detector(need("tflite")):
            x, data, sizes = _load_detection_npz(data_path)
            return json.dumps(tfl.evaluate(
                need("tflite"), data, metrics=FLAGS.metrics or ["map", "map50"],
                num_classes=FLAGS.num_classes, image_sizes=sizes,
                ignore_class=FLAGS.ignore_class), indent=2)
        x, y = _load_npz(data_path, need_y=True)
        return json.dumps(tfl.evaluate(need("tflite"), (x, y),
                                       metrics=FLAGS.metrics or ["accuracy"],
                                       ignore_class=FLAGS.ignore_class,
                                       num_classes=FLAGS.num_classes), indent=2)
    if command == "parity":
        x, _ = _load_npz(need("data"), need_y=False)
        result = tfl.parity(_load_keras(need("model")), need("tflite"), x,
                            max_samples=FLAGS.max_samples or 1000)
        return json.dumps(result, indent=2)
    if command == "bench":
        result = tfl.benchmark(need("tflite"), num_threads=[int(t) for t in FLAGS.threads],
                               warmup=FLAGS.warmup, runs=FLAGS.runs)
        return json.dumps(result, indent=2)
    if command == "edgetpu":
        report = tfl.check_edgetpu(need("tflite"))
        text = json.dumps(report.to_dict(), indent=2) if FLAGS.json else str(report)
        if FLAGS.compile:
            result = tfl.compile_edgetpu(need("tflite"), FLAGS.out_dir)
            result.pop("log", None)
            text += "\n" + json.dumps(result, indent=2)
        return text
    raise UsageError(f"Unknown command {command!r}: use one of {', '.join(COMMANDS)}.")


def main(argv):
    """absl main: `argv[1]` is the command."""
    from tfkd.tflite.errors import TFLiteError

    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        files = _positional_files(argv[1], argv[2:])
    except UsageError as e:
        print(f"tfkd-tflite {argv[1]}: error: {e}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        print(_execute(argv[1], files))
    except (TFLiteError, UsageError, OSError) as e:
        print(f"tfkd-tflite {argv[1]}: error: {e}", file=sys.stderr)
        return 1
    return 0


def run():
    """Console-script entry point (`tfkd-tflite`)."""
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv):
    if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
        print(f"{USAGE}\n\n{FLAGS.get_help(include_special_flags=False)}")
        sys.exit(0)
    try:
        rest = FLAGS(argv)
    except flags.Error as error:
        print(f"tfkd-tflite: {error}", file=sys.stderr)
        sys.exit(2)
    flags.FLAGS(argv[:1])  # absl's own flags (logging) keep their defaults
    return rest


if __name__ == "__main__":
    run()
