import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402

import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402

CANNED_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 40 ms.

Input model: student_int8.tflite
Input size: 7.95KiB
Output model: build/student_int8_edgetpu.tflite
Output size: 61.38KiB
On-chip memory used for caching model parameters: 13.00KiB
On-chip memory remaining for caching model parameters: 7.93MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 9
Operation log: build/student_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage \
of the model will instead run on the CPU, which is slower. If possible, consider updating your \
model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 5
Number of operations that will run on CPU: 4

Operator                       Count      Status

CONV_2D                        2          Mapped to Edge TPU
DEPTHWISE_CONV_2D              1          Mapped to Edge TPU
ADD                            1          Mapped to Edge TPU
HARD_SWISH                     1          Operation not supported
AVERAGE_POOL_2D                1          Operation is working on an unsupported data type
MEAN                           1          More than one subgraph is not supported
FULLY_CONNECTED                1          More than one subgraph is not supported
QUANTIZE                       1          Mapped to Edge TPU
"""


@pytest.fixture(scope="module")
def int8_variant(tmp_path_factory, mnist, build_edge_net):
    (x, _), _ = mnist
    folder = tmp_path_factory.mktemp("edgetpu")

    def make(activation, **kw):
        path = folder / f"{activation}_{kw.get('batch_size', 1)}.tflite"
        tfl.convert(build_edge_net(activation), path, quantization="int8", input_type="int8",
                    representative_data=x[:32], **kw)
        return path

    return make


def test_edge_friendly_int8_model_maps_entirely(files):
    report = tfl.check_edgetpu(files["int8"])
    assert report.compatible, str(report)
    assert report.first_unmapped is None
    assert report.num_mapped == len(report.ops) == 7
    assert all(op.mapped and op.supported for op in report.ops)
    assert "compatible" in str(report)


@pytest.mark.parametrize("activation,op", [("leaky_relu", "LEAKY_RELU"),
                                           ("hard_swish", "HARD_SWISH")])
def test_unsupported_activation_cuts_the_graph(int8_variant, activation, op):
    report = tfl.check_edgetpu(int8_variant(activation))
    assert not report.compatible
    cut = report.first_unmapped
    assert cut.op == op and not cut.supported and "not supported" in cut.reason
    assert cut.layer == "dw_act"
    index = report.ops.index(cut)
    assert all(o.mapped for o in report.ops[:index])  # stem conv + depthwise stay on the TPU
    after = report.ops[index + 1:]
    assert after and not any(o.mapped for o in after)
    assert all(o.supported and "after the cut" in o.reason for o in after)
    assert op in str(report) and "cuts the graph" in str(report)


def test_float_model_is_not_compatible(files):
    report = tfl.check_edgetpu(files["float32"])
    assert not report.compatible
    assert report.first_unmapped.index == report.ops[0].index
    assert "float32" in report.first_unmapped.reason
    assert report.num_mapped == 0


def test_float_io_edges_do_not_cut_the_graph(trained_net, tmp_path, mnist):
    (x, _), _ = mnist
    path = tmp_path / "float_io.tflite"
    tfl.convert(trained_net, path, quantization="int8", representative_data=x[:32])
    report = tfl.check_edgetpu(path)
    assert report.compatible
    edges = [op for op in report.ops if op.boundary]
    assert [op.op for op in edges] == ["QUANTIZE", "DEQUANTIZE"]
    assert report.num_mapped == len(report.ops) - 2


def test_dynamic_batch_is_an_error(int8_variant):
    path = int8_variant("relu6", batch_size=None)
    with pytest.raises(tfl.EdgeTPUError, match="dynamic shapes"):
        tfl.check_edgetpu(path)
    with pytest.raises(tfl.EdgeTPUError, match="dynamic shapes"):
        tfl.compile_edgetpu(path)


def test_compile_without_compiler_says_how_to_install(files, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(tfl.EdgeTPUCompilerNotFoundError) as err:
        tfl.compile_edgetpu(files["int8"])
    msg = str(err.value)
    assert "not installed" in msg and "apt-get install edgetpu-compiler" in msg
    assert "check_edgetpu" in msg


def test_parse_canned_compiler_log():
    r = tfl.parse_compiler_log(CANNED_LOG)
    assert r["version"] == "16.0.384591198"
    assert r["success"]
    assert (r["total_ops"], r["ops_on_edgetpu"], r["ops_on_cpu"], r["subgraphs"]) == \
        (9, 5, 4, 1)
    assert r["output_model"] == "build/student_int8_edgetpu.tflite"
    ops = {o["op"]: o for o in r["operators"]}
    assert len(r["operators"]) == 8
    assert ops["CONV_2D"]["count"] == 2 and ops["CONV_2D"]["mapped"]
    assert not ops["HARD_SWISH"]["mapped"]
    assert ops["HARD_SWISH"]["status"] == "Operation not supported"
    # A log without the summary lines still adds up from the table.
    table_only = CANNED_LOG.split("Number of operations that will run on Edge TPU")[0] + \
        CANNED_LOG.split("Number of operations that will run on CPU: 4")[1]
    r2 = tfl.parse_compiler_log(table_only)
    assert (r2["ops_on_edgetpu"], r2["ops_on_cpu"]) == (5, 4)
