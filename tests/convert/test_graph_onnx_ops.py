"""onnx -> onnx (opset change, external data) and onnx -> safetensors, on corpus files and the
tiny Llama's export; checked with onnx.checker, onnxruntime and safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import keishiki
from tests.conftest import corpus_path, run_cli
from tests.convert.graph_conftest import onnx_export, opset_of

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINYNET = "onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx"
CONV2D = "onnx/onnx-1.23.2-backend-test/pytorch-converted/test_Conv2d"
NMP_EXTERNAL = "onnx_external_data/onnx-1.12.0-debian/nmp_external_single"
SILERO = "onnx/silero-vad-6.2.3/silero_vad_16k_op15.onnx"


def _convert(src, out, **options):
    from keishiki._convert import convert

    return convert(src, out, quiet=True, **options).to_dict()["steps"][0]


def test_opset_13_to_17_runs_both_on_random_inputs(tmp_path):
    src = corpus_path(TINYNET)
    step = _convert(src, tmp_path / "t17.onnx", to="onnx", opset=17)
    assert opset_of(tmp_path / "t17.onnx") == 17
    assert step["details"]["onnx"]["opset_changed"] == "13 -> 17"
    v = step["verify"]
    assert v["method"] == "run-both" and v["passed"] and v["max_abs_diff"] <= 1e-6
    assert v["inputs"].startswith("random")
    onnx.checker.check_model(str(tmp_path / "t17.onnx"))
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(tmp_path / "t17.onnx")).run(None, {"x": x})[0]
    assert np.array_equal(a, b)


def test_backend_test_folder_uses_its_test_data(tmp_path):
    src = corpus_path(CONV2D)
    step = _convert(src, tmp_path / "conv", to="onnx", opset=13)
    assert step["verify"]["inputs"] == "test_data_set_0" and step["verify"]["passed"]
    assert opset_of(tmp_path / "conv" / "model.onnx") == 13
    assert (tmp_path / "conv" / "test_data_set_0" / "input_0.pb").is_file()
    # the converted model still reproduces the backend test's expected output
    from onnx import numpy_helper

    def pb(path):
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        return numpy_helper.to_array(t)

    data = tmp_path / "conv" / "test_data_set_0"
    sess = ort.InferenceSession(str(tmp_path / "conv" / "model.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: pb(data / "input_0.pb")})[0]
    assert np.allclose(got, pb(data / "output_0.pb"), atol=1e-5)


def test_downgrade_without_adapter_is_one_clear_line(tiny_llama, tmp_path):
    folder, _ = onnx_export(tiny_llama, opset=17)
    code, _, err = run_cli("convert", folder, tmp_path / "o14", "--to", "onnx", "--opset", "14")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot convert opset 17 → 14: No Adapter From Version 15 for Shape" in err
    assert "--opset 14" in err and not (tmp_path / "o14").exists()


def test_nothing_to_change_is_refused(tmp_path):
    code, _, err = run_cli("convert", corpus_path(TINYNET), tmp_path / "x.onnx", "--to", "onnx")
    assert code == 2 and "needs --opset N and/or --external-data" in err


def test_lm_opset_upgrade_with_external_data_runs_greedy(tiny_llama, tmp_path):
    folder, _ = onnx_export(tiny_llama, opset=17)
    step = _convert(folder, tmp_path / "o18", to="onnx", opset=18, external_data=True)
    out = tmp_path / "o18"
    assert opset_of(out / "model.onnx") == 18 and (out / "model.onnx.data").is_file()
    assert (out / "tokenizer.json").is_file()
    v = step["verify"]
    assert v["tokens_match"] and v["steps"] == 20 and v["max_abs_diff"] <= 1e-6


def test_external_to_embedded_and_back(tmp_path):
    src = corpus_path(NMP_EXTERNAL)
    step = _convert(src, tmp_path / "emb", to="onnx", external_data=False)
    assert step["details"]["onnx"]["external_data_from"] is True
    assert [p.name for p in (tmp_path / "emb").iterdir()] == ["nmp.onnx"]
    assert step["verify"]["passed"] and step["verify"]["method"] == "run-both"
    step = _convert(tmp_path / "emb", tmp_path / "ext", to="onnx", external_data=True)
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == ["nmp.onnx", "nmp.onnx.data"]
    assert step["verify"]["passed"]
    onnx.checker.check_model(str(tmp_path / "ext" / "nmp.onnx"))


def _model_with_external(tmp_path, location):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("W", TensorProto.FLOAT, [2], [0.0, 0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
        [weight],
    )
    folder = tmp_path / "evil"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 8)
    onnx.save_model(helper.make_model(graph), str(folder / "model.onnx"))
    return folder / "model.onnx"


@pytest.mark.parametrize("to", ["onnx", "safetensors"])
def test_external_data_outside_the_folder_is_refused(tmp_path, to):
    model = _model_with_external(tmp_path, "../secret.bin")
    out = tmp_path / ("o.onnx" if to == "onnx" else "o.safetensors")
    extra = ["--opset", "17"] if to == "onnx" else []
    code, _, err = run_cli("convert", model, out, "--to", to, *extra)
    assert code == 1 and "outside" in err and "secret.bin" in err  # the path gate: a finding
    assert not out.exists()


def test_onnx_to_safetensors_gives_back_the_parameters(tiny_llama, tiny_llama_state_dict, tmp_path):
    from safetensors import safe_open

    folder, _ = onnx_export(tiny_llama, opset=17, external_data=True)
    step = _convert(folder, tmp_path / "w.safetensors", to="safetensors")
    assert step["verify"]["passed"] and step["verify"]["n_bit_exact"] == step["n_tensors"]
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as fh:
        names = set(fh.keys())
        for name, value in tiny_llama_state_dict.items():
            assert name in names
            assert fh.get_tensor(name).equal(value), name


def test_onnx_to_safetensors_with_subgraph_constants(tmp_path):
    src = corpus_path(SILERO)
    step = _convert(src, tmp_path / "s.safetensors", to="safetensors")
    v = step["verify"]
    assert v["passed"] and v["n_compared"] == step["n_tensors"] and not v["unexpected"]
    sub = step["details"]["renamed_subgraph_tensors"]
    assert sub and all("/then_branch/" in n or "/else_branch/" in n for n in sub)


def test_onnx_to_pytorch_goes_through_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from keishiki._convert import convert

    report = convert(corpus_path(TINYNET), tmp_path / "w.bin", to="pytorch", quiet=True)
    assert report.path == ["onnx -> safetensors", "safetensors -> pytorch"]
    sd = torch.load(str(tmp_path / "w.bin"), weights_only=True)
    init = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(corpus_path(TINYNET))).graph.initializer
    }
    assert set(init) <= set(sd)
    for name, arr in init.items():
        assert np.array_equal(sd[name].numpy(), arr)


def test_formats_lists_the_graph_edges():
    code, out, err = run_cli("formats", "--json")
    assert code == 0, err
    edges = {(e["src"], e["dst"]) for e in json.loads(out)["edges"]}
    assert {
        ("hf-model", "onnx"),
        ("hf-model", "torchscript"),
        ("pytorch", "torchscript"),
        ("onnx", "onnx"),
        ("onnx", "safetensors"),
    } <= edges


def test_graph_edge_modules_import_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, json; import keishiki._convert.edges as e; e.edges_table(); "
        "import keishiki._convert.graph_edges, keishiki._convert.names, "
        "keishiki._convert.onnx_ops, keishiki._convert.onnx_export, "
        "keishiki._convert.torchscript_export, keishiki._convert.run_verify; "
        "print(json.dumps([m for m in ('torch', 'onnx', 'onnxruntime', 'transformers') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_onnx_to_safetensors_holds_one_tensor_at_a_time(tmp_path):
    """Verification loaded the whole model and kept every array in a dict: a 2 GB model took
    8.5 GB.  Python-side allocations now stay within a few times the largest tensor."""
    import tracemalloc

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = 2_000_000  # 8 MB of float32 each, 48 MB in all
    inits = [numpy_helper.from_array(np.full(size, i, np.float32), f"w{i}") for i in range(6)]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w0"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        inits,
    )
    src = tmp_path / "m.onnx"
    onnx.save_model(
        helper.make_model(graph), str(src), save_as_external_data=True, location="m.onnx.data"
    )
    del inits, graph
    tracemalloc.start()
    try:
        report = keishiki.convert(src, tmp_path / "m.safetensors", to="safetensors", quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.passed and report.steps[0].verify["n_compared"] == 6
    assert peak < 4 * size * 4, f"peak {peak / 1e6:.1f} MB"
