"""ONNX files as MODEL (issue 26 item 4): ``torch.onnx.export`` -> onnx2torch -> the same capture as any eager model.

Marker ``zoo``: onnx2torch imports torchvision, which imports only beside torch 2.14.1 here, so these run in the
zoo venv::

    /work/main/.zoo-venv/bin/python -m pytest -m zoo -q tests/test_zoo_onnx.py

The reference is always the same network in PyTorch, explained through the Python API: an ONNX file converted
back must give its relevance to 1e-5 (float32). Both of torch's exporters are covered: the default (dynamo, opset
18+, batch-norm folded, ``Reshape`` with ``allowzero=1``) and the TorchScript one with constant folding off (the
``BatchNormalization`` node stays, ``Flatten``). The last tests hand-build ONNX graphs that must not run code or
be misread: a node name that is Python source, custom ops, the file's own functions, two inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cli_support import load_tensor, lrp, reference_relevance, refused, write_image, write_spec
from conftest import randomize_batchnorm

pytestmark = pytest.mark.zoo

try:  # onnx2torch imports torchvision, which may be missing or built for another torch
    import onnx
    import onnx2torch  # noqa: F401
    from onnx import TensorProto, helper, numpy_helper
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"onnx2torch does not import here ({type(exc).__name__}): run in the zoo venv", allow_module_level=True)

from lrpcli import Explainer, explain
from lrpcli.errors import ModelError
from lrpcli.sources.files import load_model

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
EXPORTERS = ("dynamo", "torchscript")


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> Path:
    """What a user of each exporter writes, with a dynamic batch dimension."""
    if exporter == "dynamo":
        torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False
        )
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """exporter -> (conv net, its .onnx, MLP, its .onnx)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    conv = randomize_batchnorm(ConvNet())
    mlp = MLP().eval()
    files = {}
    for exporter in EXPORTERS:
        files[exporter] = (
            conv,
            export(conv, torch.randn(2, 3, 8, 8), folder / f"conv_{exporter}.onnx", exporter),
            mlp,
            export(mlp, torch.randn(2, 6), folder / f"mlp_{exporter}.onnx", exporter),
        )
    return files


def test_the_exports_cover_what_the_loader_rewrites(nets):
    """The dynamo file needs the opset down-conversion and the allowzero rewrite; the TorchScript file keeps
    batch-norm as a node of its own (so the converted module's BatchNorm2d is folded by lrp, not by the exporter)."""
    dynamo = onnx.load(str(nets["dynamo"][1]))
    assert max(o.version for o in dynamo.opset_import if o.domain in ("", "ai.onnx")) > 17
    assert any(n.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in n.attribute) for n in dynamo.graph.node)
    legacy = onnx.load(str(nets["torchscript"][1]))
    assert "BatchNormalization" in {n.op_type for n in legacy.graph.node}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "lrp_0"])
def test_api_relevance_equals_the_pytorch_network(nets, exporter, composite):
    conv, conv_file, mlp, mlp_file = nets[exporter]
    torch.manual_seed(1)
    for net, path, x in ((conv, conv_file, torch.randn(3, 3, 8, 8)), (mlp, mlp_file, torch.randn(5, 6))):
        expected = explain(net, x, composite)
        got = explain(path, x, composite)
        assert torch.equal(got.targets, expected.targets)
        torch.testing.assert_close(got.relevance, expected.relevance, atol=1e-5, rtol=1e-5)
        assert got.relevance.abs().max() > 1e-3  # not trivially zero
    explainer = Explainer(conv_file)  # the class takes a path too
    torch.testing.assert_close(explainer.explain(x := torch.randn(2, 3, 8, 8)).relevance, explain(conv, x).relevance, atol=1e-5, rtol=1e-5)


def test_lrp_0_equals_gradient_times_input_on_the_onnx_mlp(nets):
    """LRP-0 on a ReLU net without biases is gradient x input (Montavon et al. 2019, section 10.2.1); the biases
    are zeroed here, exported, and the .onnx checked against torch.autograd directly, with no lrpcli on the other side."""
    mlp = MLP().eval()
    with torch.no_grad():
        mlp.hidden.bias.zero_()
        mlp.out.bias.zero_()
    path = export(mlp, torch.randn(2, 6), nets["dynamo"][1].parent / "mlp_nobias.onnx", "dynamo")
    x = torch.randn(4, 6, requires_grad=True)
    logits = mlp(x)
    target = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    got = explain(path, x.detach(), "lrp_0", target=target)
    torch.testing.assert_close(got.relevance, (grad * x).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cli_explain_resizes_images_to_the_onnx_input_and_matches_pytorch(nets, exporter, tmp_path):
    conv, path, _, _ = nets[exporter]
    images = [write_image(tmp_path / "imgs" / f"{i}.png", seed=i, size=(12, 10)) for i in range(3)]
    run = lrp("explain", path, tmp_path / "imgs", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    rows = {row["input"]: row for row in run.rows()}
    for image in images:
        x = load_tensor(image, size=(8, 8), mean=MEAN, std=STD)  # the ONNX input is 3x8x8: lrp resized to it
        target = int(conv(x[None]).argmax())
        relevance = run.array(rows[image.name]["relevance"])
        assert relevance.shape == (3, 8, 8)
        assert int(rows[image.name]["prediction"]) == target
        np.testing.assert_allclose(relevance, reference_relevance(conv, x, target), atol=1e-5, rtol=1e-5)


def test_a_spec_may_name_an_onnx_model(nets, tmp_path):
    conv, path, _, _ = nets["dynamo"]
    spec = write_spec(tmp_path / "model.yaml", model=str(path), input={"mean": MEAN, "std": STD}, classes=["a", "b", "c"])
    image = write_image(tmp_path / "imgs" / "one.png", seed=5, size=(8, 8))
    run = lrp("explain", spec, tmp_path / "imgs", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    x = load_tensor(image, mean=MEAN, std=STD)
    target = int(conv(x[None]).argmax())
    row = run.rows()[0]
    assert (int(row["prediction"]), row["prediction_label"]) == (target, ["a", "b", "c"][target])
    np.testing.assert_allclose(run.array(row["relevance"]), reference_relevance(conv, x, target), atol=1e-5, rtol=1e-5)


def test_cli_explain_of_csv_rows_through_the_onnx_mlp(nets, tmp_path):
    _, _, mlp, path = nets["dynamo"]
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 6)).round(3)
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("f0,f1,f2,f3,f4,f5\n" + "\n".join(",".join(str(v) for v in row) for row in data) + "\n", encoding="utf-8")
    run = lrp("explain", path, csv_path, "-c", "epsilon")
    assert run.code == 0, run.describe()
    import csv
    import io

    out = list(csv.DictReader(io.StringIO(run.stdout)))
    x = torch.tensor(data, dtype=torch.float32)
    expected = explain(mlp, x, "epsilon")
    for i, row in enumerate(out):
        assert int(row["prediction"]) == int(expected.targets[i])
        np.testing.assert_allclose([float(row[f"f{j}"]) for j in range(6)], expected.relevance[i].numpy(), atol=1e-5, rtol=1e-4)


def test_inspect_and_check_conservation_take_the_shape_from_the_onnx_input(nets, tmp_path):
    _, path, _, _ = nets["torchscript"]
    run = lrp("inspect", path, "--json", "-")
    assert run.code == 0, run.describe()
    report = json.loads(run.stdout)
    assert list(report["input_shape"]) == [3, 8, 8]
    rules = {layer["type"]: layer["rule"] for layer in report["layers"] if layer["rule"]}
    assert rules.get("Conv2d") == "flat" and rules.get("Linear") == "epsilon", report["layers"]
    run = lrp("check-conservation", path, "--random", "3", "-c", "epsilon_plus_flat", "-q")
    assert run.code == 0, run.describe()


# --------------------------------------------------------------------------- files that must not run or be misread


def _graph_model(nodes, inputs=("x",), functions=(), opset=17, domains=()):
    """A tiny hand-built ONNX model: inputs (N, 4) -> the nodes -> y (N, 2), with weights w (2, 4) and b (2,)."""
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4]) for name in inputs]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4) / 8 - 0.3, "w")
    b = numpy_helper.from_array(np.array([0.1, -0.2], np.float32), "b")
    graph = helper.make_graph(nodes, "g", values, [y], [w, b])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def _relu_gemm(relu_name):
    return [helper.make_node("Relu", ["x"], ["h"], name=relu_name), helper.make_node("Gemm", ["h", "w", "b"], ["y"], transB=1, name="fc")]


def test_a_node_name_that_is_python_source_is_never_run(tmp_path):
    """onnx2torch names each submodule after its ONNX node, and torch.fx writes that name into the Python source it
    executes (``getattr(self, "NAME")``): a name that closes the quote runs code (checked by hand with
    onnx2torch 1.5.15 and torch 2.14.1: the marker file appeared). lrp renames every node to safe characters first."""
    marker = tmp_path / "PWNED"
    assert "." not in str(marker)  # onnx2torch turns dots in names into slashes: the payloads use none
    payloads = [  # one closes the quote within the line, one adds lines of its own
        f'r") if getattr(__import__("os"), "system")("touch {marker}") else getattr(self, "r',
        f'fc")\ngetattr(__import__("os"), "system")("touch {marker}")\nx = ("',
    ]
    w = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8 - 0.3
    for i, payload in enumerate(payloads):
        path = tmp_path / f"evil{i}.onnx"
        onnx.save(_graph_model(_relu_gemm(payload)), str(path))
        x = torch.randn(3, 4)
        try:
            module = load_model(path)
            torch.testing.assert_close(module(x), torch.relu(x) @ w.T + torch.tensor([0.1, -0.2]))  # by hand
            explain(path, x)
        finally:
            assert not marker.exists(), f"the node name {payload!r} ran as code"
        names = [name for name, _ in module.named_children() if name != "initializers"]
        assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/:-") for name in names), names


def test_node_names_that_collide_are_kept_apart(tmp_path):
    """onnx2torch adds _1 to a repeated name, which may be another node's name (both would be one module), and
    a name may be one the GraphModule uses itself (its weights container, ``graph``)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["h0"], name="a"),
        helper.make_node("Neg", ["h0"], ["h1"], name="a"),
        helper.make_node("Relu", ["h1"], ["h2"], name="a_1"),
        helper.make_node("Neg", ["h2"], ["h"], name="graph"),
        helper.make_node("Gemm", ["h", "w", "b"], ["y"], transB=1, name="initializers"),
    ]
    path = tmp_path / "names.onnx"
    onnx.save(_graph_model(nodes), str(path))
    x = torch.randn(3, 4)
    w = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8 - 0.3
    torch.testing.assert_close(load_model(path)(x), -torch.relu(-torch.relu(x)) @ w.T + torch.tensor([0.1, -0.2]))


def test_a_reshape_to_a_constant_node_is_captured(tmp_path):
    """The shape of a Reshape may come from a Constant node rather than an initializer; 0 copies the input's dim."""
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 2, 2], np.int64)), name="c"),
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="r"),
        helper.make_node("Constant", [], ["back"], value=numpy_helper.from_array(np.array([-1, 4], np.int64)), name="c2"),
        helper.make_node("Reshape", ["r", "back"], ["h"], name="r2"),
        helper.make_node("Gemm", ["h", "w", "b"], ["y"], transB=1, name="fc"),
    ]
    path = tmp_path / "reshape.onnx"
    onnx.save(_graph_model(nodes), str(path))
    x = torch.randn(3, 4)
    w = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8 - 0.3
    linear = torch.nn.Linear(4, 2).eval()
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(torch.tensor([0.1, -0.2]))
    expected = explain(linear, x, "lrp_0")
    torch.testing.assert_close(explain(path, x, "lrp_0").relevance, expected.relevance, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("custom op", ["custom op 'com.example::Evil'", "standard ONNX ops"]),
        ("function", ["defines its own functions", "com.example::Twice"]),
        ("two inputs", ["takes 2 ('x', 'mask')", "one input"]),
        ("no converter", ["ONNX op 'Hardmax'", "onnx2torch"]),
    ],
)
def test_files_lrp_cannot_take_are_refused_by_name(case, fragments, tmp_path):
    functions = ()
    domains = ()
    inputs = ("x",)
    nodes = _relu_gemm("relu")
    if case == "custom op":
        nodes[0] = helper.make_node("Evil", ["x"], ["h"], name="relu", domain="com.example")
        domains = ("com.example",)
    elif case == "function":
        body = [helper.make_node("Add", ["a", "a"], ["out"])]
        functions = (helper.make_function("com.example", "Twice", ["a"], ["out"], body, [helper.make_opsetid("", 17)]),)
        nodes[0] = helper.make_node("Twice", ["x"], ["h"], name="relu", domain="com.example")
        domains = ("com.example",)
    elif case == "two inputs":
        inputs = ("x", "mask")
        nodes[0] = helper.make_node("Mul", ["x", "mask"], ["h"], name="relu")
    else:
        nodes[0] = helper.make_node("Hardmax", ["x"], ["h"], name="relu")
    path = tmp_path / "m.onnx"
    onnx.save(_graph_model(nodes, inputs=inputs, functions=functions, domains=domains), str(path))
    with pytest.raises(ModelError) as caught:
        load_model(path)
    for fragment in fragments:
        assert fragment in str(caught.value)
    write_image(tmp_path / "imgs" / "a.png", 1)
    refused(lrp("explain", path, tmp_path / "imgs", "-q", out=tmp_path / "o"), 4, fragments[0])


def test_a_damaged_file_and_arch_are_model_errors(nets, tmp_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(nets["dynamo"][1].read_bytes()[:200])
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        load_model(damaged)
    damaged.write_bytes(b"\x08\x07\x12\x07pytorch")  # parses as a protobuf: a model without a graph
    with pytest.raises(ModelError, match="holds no ONNX graph"):
        load_model(damaged)
    with pytest.raises(ModelError, match="carries its own graph"):
        load_model(nets["dynamo"][1], arch="lrpcli.architectures:MiniVGG")
