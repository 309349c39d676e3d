"""tfkd.tflite: a Keras model in, a verified `.tflite` out, and the checks around it.

Takes any Keras 3 model or `.tflite` file; imports nothing of the distillation side of tfkd.

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> y = np.random.randint(0, 3, 64)
    >>> report = tfl.convert(m, "/tmp/s.tflite", quantization="int8",
    ...                      representative_data=x, input_type="int8")
    >>> report.is_fully_int8, tfl.check_edgetpu("/tmp/s.tflite").compatible
    (True, True)
    >>> acc = tfl.evaluate("/tmp/s.tflite", (x, y))["accuracy"]
    >>> agreement = tfl.parity(m, "/tmp/s.tflite", x)["top1_agreement"]
    >>> masks = np.random.randint(0, 4, (5, 8, 8))                # dense labels, 3 = void
    >>> tfl.segmentation_scores(masks, np.random.rand(5, 8, 8, 3), ignore_class=3)["miou"] < 1
    True
    >>> latency = tfl.benchmark("/tmp/s.tflite")["latency_ms"]

Detectors: a Keras model ending in `tfl.DetectionPostProcess` (built by
`tfkd.students.detection.export_model`) converts to a file ending in TFLite's
`TFLite_Detection_PostProcess` op, int8 up to the DEQUANTIZEs feeding it; `tfl.detections`
runs it, `tfl.evaluate(..., metrics=("map", "map50"))` and `tfl.coco_map` score it with
pycocotools, `tfl.parity` compares its detections with the Keras model's (see `coco.py`,
`postprocess.py`, `reorder.py`).

For an app: `convert(..., target="mediapipe", labels=names)` writes uint8-in, uint8/float-out
files with TFLite metadata inside (labels, normalization, output layout: `metadata.py`) that
MediaPipe Tasks load as they are; `mediapipe_agreement` runs the file in MediaPipe and
compares it with LiteRT (`clients.py`). `target="coral"` gives uint8 in and out for the
Edge TPU. `evaluate` / `benchmark` run files through LiteRT's `CompiledModel` where it
supports them, else the Interpreter (`runtime.py`).

Super-resolution (pixels in [0, 255] in, `scale` times larger out): `tfl.super_resolve`
runs a Keras model or a `.tflite` on a whole image (tiled when the file's input has a fixed
size, as an Edge TPU export has), `tfl.sr_scores` gives PSNR / SSIM on the Y channel as SR
papers do (`tfl.rgb_to_y`: BT.601, MATLAB's), `tfl.bicubic_upscale` the reference row, and
`tfl.evaluate(path, pairs, metrics=("psnr", "ssim"))` scores a file on (lr, hr) pairs
(`image_quality.py`).

Embeddings (faces, re-identification: pixels in [0, 255] in, an L2-normalised (N, D) out,
ending in `tfl.L2Normalization`, which converts to TFLite's int8 L2_NORMALIZATION where
Keras' `UnitNormalization` does not): `tfl.embeddings` runs a Keras model or a `.tflite`,
`tfl.verification` / `tfl.roc` / `tfl.identification` / `tfl.decisions` score embeddings
with identity labels (scikit-learn's ROC: `pip install 'tfkd[faces]'`),
`tfl.evaluate(path_or_model, (images, ids), metrics=("roc_auc", "tar@far=0.01", "rank1"))`
scores a model (rank-k leave-one-out, or against `gallery=(images, ids)`), `tfl.parity`
adds the Keras-vs-file cosine and pair-decision agreement, and `convert(...,
output_meaning="embedding")` writes the metadata MediaPipe's `ImageEmbedder` reads
(`tfl.mediapipe_embeddings`; 3-channel inputs only: MediaPipe refuses 1-channel models)
(`verification.py`, `l2norm.py`; `evaluate.embeddings`, `parity.compare_embeddings`).

Command line: `tfkd-tflite convert|inspect|evaluate|parity|bench|edgetpu` (see `cli.py`).
"""
from .benchmark import benchmark
from .clients import MediaPipeMissingError, mediapipe_agreement, mediapipe_embeddings, \
    mediapipe_outputs
from .coco import coco_map
from .convert import TARGETS, convert, verify_int8
from .edgetpu import check_edgetpu, compile_edgetpu, parse_compiler_log
from .errors import (ConversionError, EdgeTPUCompilerNotFoundError, EdgeTPUError,
                     EmptyDataError, InputDtypeError, ModelFileError,
                     QuantizationVerificationError, RepresentativeDataError, TFLiteError)
from .evaluate import detections, embeddings, evaluate, super_resolve
from .image_quality import bicubic_upscale, rgb_to_y, sr_scores
from .inspection import inspect
from .l2norm import L2Normalization
from .metadata import (MetadataSchemaMissingError, associated_files, read_metadata,
                       read_sidecar, write_metadata)
from .metrics import segmentation_scores
from .parity import compare_detections, compare_embeddings, parity
from .postprocess import DetectionPostProcess
from .reorder import cpu_ops_last, detection_outputs
from .verification import decisions, identification, pair_similarities, roc, verification

__version__ = "0.1.0"

__all__ = [
    "convert", "inspect", "evaluate", "segmentation_scores", "parity", "benchmark",
    "sr_scores", "super_resolve", "bicubic_upscale", "rgb_to_y",
    "check_edgetpu", "detections", "coco_map", "compare_detections", "DetectionPostProcess",
    "cpu_ops_last", "detection_outputs",
    "compile_edgetpu", "parse_compiler_log", "write_metadata", "read_metadata", "read_sidecar",
    "associated_files", "verify_int8", "TARGETS", "MetadataSchemaMissingError",
    "mediapipe_outputs", "mediapipe_agreement", "mediapipe_embeddings",
    "MediaPipeMissingError", "embeddings", "verification", "roc", "identification",
    "decisions", "pair_similarities", "compare_embeddings", "L2Normalization",
    "TFLiteError", "ConversionError", "RepresentativeDataError", "EmptyDataError",
    "QuantizationVerificationError", "ModelFileError", "InputDtypeError", "EdgeTPUError",
    "EdgeTPUCompilerNotFoundError",
]
