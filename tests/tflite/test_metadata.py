"""TFLite metadata inside the file, and the export targets that pick I/O types for a client.

The metadata is checked by parsing it back with MediaPipe's generated schema code (what the
clients' C++ readers are built from), by the associated-file archive that the spec
prescribes (uncompressed zip appended to the flatbuffer), and by the file still running in
LiteRT with the same outputs. That MediaPipe Tasks load these files is in test_mediapipe.py.
"""
import io
import json
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd.tflite as tfl
from tfkd.tflite import metadata as md_mod
from tfkd.tflite.evaluate import run_on_data

pytest.importorskip("mediapipe")
from mediapipe.tasks.metadata import metadata_schema_py_generated as md_fb  # noqa: E402

L = keras.layers
SIZE = 16


def _images(n=24, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")
    x[0], x[1] = 0.0, 255.0  # calibration spans the pixel range, as real images do
    return x


def _classifier(softmax=True, classes=3):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((SIZE, SIZE, 3)), L.Rescaling(1 / 255.0),
              L.Conv2D(4, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(classes)]
    return keras.Sequential(layers + ([L.Softmax()] if softmax else []), name="clf")


def _segmenter(classes=4):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), L.Rescaling(1 / 255.0),
                             L.Conv2D(classes, 3, padding="same")], name="seg")


def _metadata_table(path):
    buf = md_mod._metadata_bytes(open(path, "rb").read())
    assert md_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)  # "M001"
    return md_fb.ModelMetadataT.InitFromPackedBuf(buf, 0)


@pytest.fixture(scope="module")
def x():
    return _images()


def test_mediapipe_target_classifier_metadata_round_trip(tmp_path, x):
    path = tmp_path / "clf.tflite"
    labels = ["cat", "dog", "bird"]
    report = tfl.convert(_classifier(), path, quantization="int8", representative_data=x,
                         target="mediapipe", labels=labels,
                         metadata={"name": "tiny clf", "license": "Apache-2.0",
                                   "version": "7"})
    assert (report.inputs[0].dtype, report.outputs[0].dtype) == ("uint8", "uint8")
    assert (report.inputs[0].scale, report.inputs[0].zero_point) == (1.0, 0)  # raw pixels
    meta = tfl.read_metadata(path)
    assert meta["name"] == "tiny clf" and meta["license"] == "Apache-2.0"
    assert meta["version"] == "7" and meta["kind"] == "classifier"
    assert meta["target"] == "mediapipe" and meta["labels"] == labels
    assert meta["input"]["color_space"] == "RGB" and meta["min_parser_version"] == "1.0.0"
    table = _metadata_table(path)
    out = table.subgraphMetadata[0].outputTensorMetadata[0]
    assert out.associatedFiles[0].type == md_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert list(out.stats.max) == [1.0] and list(out.stats.min) == [0.0]
    # The spec's packing: an uncompressed zip appended after the flatbuffer.
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["labels.txt", "tfkd.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("labels.txt").decode().splitlines() == labels
        assert json.loads(zf.read("tfkd.json"))["target"] == "mediapipe"
    # Sidecars for humans and pycoral stay.
    assert (tmp_path / "clf.labels.txt").read_text().splitlines() == labels
    assert tfl.read_sidecar(path)["kind"] == "classifier"


def test_embedding_metadata_changes_no_output(tmp_path, x):
    plain = tmp_path / "plain.tflite"
    tfl.convert(_classifier(), plain, quantization="int8", representative_data=x,
                input_type="uint8", output_type="uint8")
    assert tfl.read_metadata(plain) is None
    before = run_on_data(str(plain), x[:8])[1]
    tfl.write_metadata(plain, labels=["a", "b", "c"])
    tfl.write_metadata(plain, labels=["x", "y", "z"], name="again")  # replaces, not appends
    after = run_on_data(str(plain), x[:8])[1]
    np.testing.assert_array_equal(before, after)
    meta = tfl.read_metadata(plain)
    assert meta["labels"] == ["x", "y", "z"] and meta["name"] == "again"
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.Model.GetRootAs(plain.read_bytes(), 0)
    names = [fb.Metadata(i).Name().decode() for i in range(fb.MetadataLength())]
    assert names.count("TFLITE_METADATA") == 1
    with zipfile.ZipFile(plain) as zf:
        assert sorted(zf.namelist()) == ["labels.txt", "tfkd.json"]


def test_targets_pick_the_io_types(tmp_path, x):
    m = _classifier(softmax=False)
    kinds = {}
    for target in ("mediapipe", "coral", "litert"):
        r = tfl.convert(m, tmp_path / f"{target}.tflite", quantization="int8",
                        representative_data=x, target=target)
        kinds[target] = (r.inputs[0].dtype, r.outputs[0].dtype)
        assert r.is_fully_int8 and tfl.read_metadata(r.path)["target"] == target
    assert kinds == {"mediapipe": ("uint8", "uint8"), "coral": ("uint8", "uint8"),
                     "litert": ("uint8", "int8")}
    f32 = tfl.convert(m, tmp_path / "f32.tflite", target="mediapipe")
    assert (f32.inputs[0].dtype, f32.outputs[0].dtype) == ("float32", "float32")
    # A float input needs NormalizationOptions in MediaPipe: raw pixels by default.
    assert tfl.read_metadata(f32.path)["input"]["normalization"] == {"mean": [0.0],
                                                                     "std": [1.0]}
    tfl.convert(m, tmp_path / "f32n.tflite", target="mediapipe",
                normalization=(127.5, 127.5))
    table = _metadata_table(tmp_path / "f32n.tflite")
    unit = table.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0]
    assert list(unit.options.mean) == [127.5] and list(unit.options.std) == [127.5]


def test_target_errors_name_the_problem_and_write_nothing(tmp_path, x):
    m = _classifier()
    path = tmp_path / "bad.tflite"
    with pytest.raises(tfl.ConversionError, match="never int8"):
        tfl.convert(m, path, quantization="int8", representative_data=x,
                    target="mediapipe", output_type="int8")
    with pytest.raises(tfl.ConversionError, match="only int8 graphs"):
        tfl.convert(m, path, target="coral")
    with pytest.raises(tfl.ConversionError, match="not one of"):
        tfl.convert(m, path, target="android")
    # Calibration that never reaches 0 / 255: the uint8 input would misread raw pixels.
    with pytest.raises(tfl.ConversionError, match=r"reads pixel p as .*Calibrate"):
        tfl.convert(m, path, quantization="int8", representative_data=x[2:] * 0.5,
                    target="mediapipe")
    with pytest.raises(tfl.ConversionError, match="2 labels for an output of 3"):
        tfl.convert(m, path, target="mediapipe", labels=["a", "b"])
    with pytest.raises(tfl.ConversionError, match="unknown fields"):
        tfl.convert(m, path, target="mediapipe", metadata={"authors": "me"})
    inputs = keras.Input((SIZE, SIZE, 3))
    two = keras.Model(inputs, [L.Flatten()(inputs), L.GlobalAveragePooling2D()(inputs)])
    with pytest.raises(tfl.ConversionError, match="not a model MediaPipe's vision tasks"):
        tfl.convert(two, path, target="mediapipe")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_segmenter_logits_get_mediapipes_softmax_activation(tmp_path, x):
    path = tmp_path / "seg.tflite"
    tfl.convert(_segmenter(), path, quantization="int8", representative_data=x,
                target="mediapipe", labels=list("abcd"), output_meaning="logits")
    meta = tfl.read_metadata(path)
    assert meta["kind"] == "segmenter" and meta["segmenter_activation"] == "SOFTMAX"
    assert meta["min_parser_version"] == "1.5.0"  # CustomMetadata is a 1.5.0 feature
    assert meta["labels"] == list("abcd")


def test_detector_metadata_names_and_box_layout(tmp_path):
    import tfkd
    from tfkd.students.detection import export_model, ssd_mobile

    anchors = tfkd.Anchors((64, 64))
    keras.utils.set_random_seed(0)
    net = ssd_mobile((64, 64, 3), num_classes=2, width=0.25, anchors=anchors)
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3)).astype("float32")
    images[0], images[1] = 0.0, 255.0
    path = tmp_path / "det.tflite"
    r = tfl.convert(export_model(net, anchors, max_detections=5), path, quantization="int8",
                    representative_data=images, target="mediapipe",
                    labels=["raccoon", "person"])
    assert [t.dtype for t in r.inputs + r.outputs] == ["uint8"] + ["float32"] * 4
    table = _metadata_table(path)
    sub = table.subgraphMetadata[0]
    assert [t.name.decode() for t in sub.outputTensorMetadata] == list(md_mod.DETECTION_NAMES)
    box = sub.outputTensorMetadata[0].content.contentProperties
    assert list(box.index) == [1, 0, 3, 2]  # the op writes ymin, xmin, ymax, xmax
    assert box.coordinateType == md_fb.CoordinateType.RATIO
    category = sub.outputTensorMetadata[1].associatedFiles[0]
    assert category.type == md_fb.AssociatedFileType.TENSOR_VALUE_LABELS
    assert [n.decode() for n in sub.outputTensorGroups[0].tensorNames] == \
        ["location", "category", "score"]
    assert tfl.read_metadata(path)["min_parser_version"] == "1.2.0"


def test_without_the_schema_only_sidecars_and_a_warning(tmp_path, x, monkeypatch):
    import sys

    # As without the `mediapipe` wheel: importing its generated schema code fails.
    package = sys.modules["mediapipe.tasks.metadata"]

    monkeypatch.setitem(sys.modules,
                        "mediapipe.tasks.metadata.metadata_schema_py_generated", None)
    monkeypatch.delattr(package, "metadata_schema_py_generated")
    with pytest.warns(UserWarning, match="tfkd\\[mediapipe\\]"):
        tfl.convert(_classifier(), tmp_path / "s.tflite", labels=["a", "b", "c"])
    assert (tmp_path / "s.labels.txt").is_file()
    assert tfl.read_sidecar(tmp_path / "s.tflite")["embedded_metadata"] is False
    with pytest.raises(tfl.ConversionError, match="tfkd\\[mediapipe\\]"):
        tfl.convert(_classifier(), tmp_path / "m.tflite", target="mediapipe")
    assert not (tmp_path / "m.tflite").exists()


def test_associated_files_of_bytes_and_a_file_without_any(tmp_path):
    tfl.convert(_classifier(), tmp_path / "n.tflite")
    assert tfl.associated_files(tmp_path / "n.tflite") == {}
    content = (tmp_path / "n.tflite").read_bytes()
    buf = io.BytesIO(content)
    assert not zipfile.is_zipfile(buf)
