"""`tfkd-tflite` commands: in-process through absl flags, and once as a real subprocess."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from tfkd.tflite import cli  # noqa: E402


def _call(capsys, *argv):
    """Runs cli.main as absl would, returns (exit code, stdout, stderr)."""
    argv = ["tfkd-tflite", *map(str, argv)]
    cli.FLAGS.unparse_flags()
    rest = cli.FLAGS(argv)
    try:
        code = cli.main(rest)
    finally:
        cli.FLAGS.unparse_flags()
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, trained_net, mnist):
    folder = tmp_path_factory.mktemp("cli")
    (x_train, y_train), (x_test, y_test) = mnist
    npz = folder / "data.npz"
    np.savez(npz, x_calib=x_train[:40], x_test=x_test[:60], y_test=y_test[:60])
    model_path = folder / "net.keras"
    trained_net.save(model_path)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)) + "\n")
    return {"dir": folder, "npz": npz, "model": model_path, "labels": labels}


def test_cli_convert_inspect_evaluate_parity_bench_edgetpu(capsys, cli_inputs):
    d = cli_inputs
    out = d["dir"] / "net_int8.tflite"
    code, stdout, stderr = _call(
        capsys, "convert", "--model", d["model"], "--out", out, "--quantization", "int8",
        "--input_type", "int8", "--data", d["npz"], "--x_key", "x_calib",
        "--labels", d["labels"])
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["is_fully_int8"] and report["inputs"][0]["dtype"] == "int8"
    assert out.exists() and (d["dir"] / "net_int8.labels.txt").exists()

    code, stdout, _ = _call(capsys, "inspect", "--tflite", out, "--json")
    assert code == 0 and json.loads(stdout)["op_counts"]["CONV_2D"] == 2

    code, stdout, _ = _call(capsys, "evaluate", "--tflite", out, "--data", d["npz"],
                            "--x_key", "x_test", "--y_key", "y_test")
    result = json.loads(stdout)
    assert code == 0 and result["num_samples"] == 60 and 0 <= result["accuracy"] <= 1

    code, stdout, _ = _call(capsys, "parity", "--model", d["model"], "--tflite", out,
                            "--data", d["npz"], "--x_key", "x_test", "--max_samples", "30")
    assert code == 0 and json.loads(stdout)["num_samples"] == 30

    code, stdout, _ = _call(capsys, "bench", "--tflite", out, "--threads", "1",
                            "--runs", "5", "--warmup", "1")
    assert code == 0 and json.loads(stdout)["latency_ms"]["1"]["p50"] > 0

    code, stdout, _ = _call(capsys, "edgetpu", "--tflite", out)
    assert code == 0 and "every op maps to the Edge TPU" in stdout


def test_cli_errors_exit_1_with_message(capsys, cli_inputs, tmp_path):
    code, _, stderr = _call(capsys, "inspect", "--tflite", tmp_path / "missing.tflite")
    assert code == 1 and "No .tflite file" in stderr
    code, _, stderr = _call(capsys, "convert", "--model", cli_inputs["model"], "--out",
                            tmp_path / "x.tflite", "--quantization", "int8")
    assert code == 1 and "representative_data" in stderr
    code, _, stderr = _call(capsys, "evaluate", "--tflite", tmp_path / "x.tflite")
    assert code == 1 and "--data is required" in stderr
    code, _, stderr = _call(capsys, "frobnicate")
    assert code == 2 and "usage" in stderr


def test_cli_files_positionally(capsys, cli_inputs, files):
    d, tfl_file = cli_inputs, files["int8"]
    code, by_flag, _ = _call(capsys, "inspect", "--tflite", tfl_file, "--json")
    assert code == 0
    code, stdout, stderr = _call(capsys, "inspect", tfl_file, "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == json.loads(by_flag)
    # The same file both ways is fine; two different ones are refused, naming both.
    code, stdout, _ = _call(capsys, "inspect", tfl_file, "--tflite", tfl_file, "--json")
    assert code == 0 and json.loads(stdout) == json.loads(by_flag)
    code, _, stderr = _call(capsys, "inspect", tfl_file, "--tflite", files["float32"])
    assert code == 2 and "Two different files" in stderr
    assert str(tfl_file) in stderr and str(files["float32"]) in stderr
    code, _, stderr = _call(capsys, "bench", tfl_file, files["float32"])
    assert code == 2 and "Too many files" in stderr
    code, _, stderr = _call(capsys, "inspect")
    assert code == 1 and "positionally or with --tflite" in stderr
    # parity takes the Keras model and the .tflite, in either order.
    code, stdout, stderr = _call(capsys, "parity", tfl_file, d["model"], "--data", d["npz"],
                                 "--x_key", "x_test", "--max_samples", "10")
    assert code == 0, stderr
    assert json.loads(stdout)["num_samples"] == 10
    # convert: the positional file is the Keras model.
    out = d["dir"] / "positional_f32.tflite"
    code, stdout, stderr = _call(capsys, "convert", d["model"], "--out", out)
    assert code == 0, stderr
    assert out.exists() and json.loads(stdout)["inputs"][0]["dtype"] == "float32"


def test_cli_evaluate_quantizes_uint8_images(capsys, tmp_path, pixel_int8, mnist):
    import tfkd.tflite as tfl

    path, _ = pixel_int8
    _, (x, y) = mnist
    pixels = np.round(x[:80] * 255)
    npz = tmp_path / "images_uint8.npz"
    np.savez(npz, x_test=pixels.astype(np.uint8), y_test=y[:80])
    code, stdout, stderr = _call(capsys, "evaluate", path, "--data", npz)
    assert code == 0, stderr
    expected = tfl.evaluate(path, (pixels.astype(np.float32), y[:80]))
    assert json.loads(stdout) == expected and expected["num_samples"] == 80


def test_cli_entry_point_subprocess(cli_inputs, files):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # As users type it: the file positionally (this exited 2 before).
    proc = subprocess.run(
        [sys.executable, "-c", "from tfkd.tflite.cli import run; run()", "inspect",
         str(files["int8"])],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fully int8: True" in proc.stdout and "CONV_2D" in proc.stdout


def test_cli_evaluate_dense_metrics(capsys, tmp_path, trained_seg, mnist_seg, files):
    import tfkd.tflite as tfl

    _, path = trained_seg
    _, (x, labels) = mnist_seg
    npz = tmp_path / "masks.npz"
    np.savez(npz, x_test=x[:80], y_test=labels[:80])
    code, stdout, stderr = _call(capsys, "evaluate", path, "--data", npz,
                                 "--metrics", "miou,pixel_accuracy,per_class_iou",
                                 "--ignore_class", "11")
    assert code == 0, stderr
    result = json.loads(stdout)
    expected = tfl.evaluate(path, (x[:80], labels[:80]),
                            metrics=("miou", "pixel_accuracy", "per_class_iou"),
                            ignore_class=11)
    assert result == expected and result["num_samples"] == 80
    assert len(result["per_class_iou"]) == 11 and 0 < result["miou"] < 1
    # The void id forgotten, and a dense metric asked of a classifier: exit 1, named.
    code, _, stderr = _call(capsys, "evaluate", path, "--data", npz, "--metrics", "miou")
    assert code == 1 and "ignore_class=<the void id>" in stderr
    code, _, stderr = _call(capsys, "evaluate", files["int8"], "--data", npz,
                            "--metrics", "miou", "--ignore_class", "11")
    assert code == 1 and "segmentation metric" in stderr
