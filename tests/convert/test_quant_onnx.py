"""ONNX int8/int4 with onnxruntime's quantizers: `keishiki quantize`, `convert --to onnx
--quant`, files handled like every output, and the quantized graphs run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

from .quant_fixtures import llama256, llama256_onnx  # noqa: F401  (fixtures)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _ops(model_path) -> dict[str, int]:
    model = onnx.load(str(model_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, op, extra",
    [
        ("--int8", "MatMulInteger", []),
        ("--int4", "MatMulNBits", []),
        ("--int4", "MatMulNBits", ["--block-size", "16"]),
    ],
)
def test_quantize_command_writes_a_runnable_model(llama256_onnx, tmp_path, flag, op, extra):
    out = tmp_path / "q"
    code, stdout, err = run_cli("quantize", llama256_onnx, out, flag, *extra, "--json")
    assert code == 0, err
    step = json.loads(stdout)["steps"][0]
    facts = step["details"]["onnx"]
    # 7 projections x 2 layers + lm_head; attention's two MatMuls have no weight
    assert facts["n_quantized"] == 15 and facts["n_matmul_left"] == 4
    assert _ops(out / "model.onnx")[op] == 15
    if flag == "--int4":
        assert facts["block_size"] == (16 if extra else 32)
        node = next(
            n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"
        )
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["block_size"] == facts["block_size"] and attrs["bits"] == 4
    assert step["bytes_written"] < step["details"]["bytes_source"] / 2.5
    verify = step["verify"]
    assert verify["passed"] and verify["method"] == "quantized-vs-original"
    assert verify["quant"] == flag[2:] and verify["kl_mean"] < 0.01
    assert {"tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    code, stdout, err = run_cli("run", out, "-p", "Hello", "-n", "3", "--temperature", "0")
    assert code == 0, err


def test_no_overwrite_without_force_and_one_flag(llama256_onnx, tmp_path):
    out = tmp_path / "q8.onnx"
    assert run_cli("quantize", llama256_onnx, out, "--int8", "--no-verify")[0] == 0
    code, _, err = run_cli("quantize", llama256_onnx, out, "--int8")
    assert code == 2 and "already exists (pass --force to overwrite)" in err
    assert run_cli("quantize", llama256_onnx, out, "--int8", "--force", "--no-verify")[0] == 0
    assert _ops(out)["MatMulInteger"] == 15  # a single file: the graph alone
    code, _, err = run_cli("quantize", llama256_onnx, tmp_path / "y", "--int8", "--int4")
    assert code == 2 and err == "keishiki: error: quantize needs exactly one of --int8 or --int4\n"
    code, _, err = run_cli(
        "quantize", llama256_onnx, tmp_path / "z", "--int4", "--block-size", "48"
    )
    assert code == 2 and "--block-size 48: applies to --quant int4, a power of 2" in err


@pytest.mark.slow
def test_external_data_kept_external(llama256_onnx, tmp_path):
    ext = tmp_path / "ext"
    code, _, err = run_cli(
        "convert", llama256_onnx, ext, "--to", "onnx", "--external-data", "--no-verify"
    )
    assert code == 0, err
    code, _, err = run_cli("quantize", ext, tmp_path / "q.onnx", "--int4")
    assert code == 2 and "needs a folder OUT" in err
    code, _, err = run_cli("quantize", ext, tmp_path / "q", "--int4", "--quiet")
    assert code == 0, err
    assert (tmp_path / "q" / "model.onnx.data").is_file()
    model = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


@pytest.mark.slow
def test_convert_hf_to_quantized_onnx(llama256, tmp_path):
    out = tmp_path / "int8"
    code, stdout, err = run_cli(
        "convert", llama256, out, "--to", "onnx", "--quant", "int8", "--json", "--quiet"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["path"] == ["hf-model -> onnx", "onnx -> onnx"]
    assert [s["verify"]["passed"] for s in report["steps"]] == [True, True]
    assert report["steps"][1]["edge"] == "onnx -> onnx (quantize)"
    assert {"model.onnx", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def _matmul_onnx(path, weight) -> None:
    """A one-MatMul graph y = x @ W, W (64 x 32, float32) an initializer: any graph with a
    constant-weight MatMul, not a language model."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weight, np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.mark.parametrize("quant, op", [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_a_graph_that_is_not_a_language_model(tmp_path, quant, op):
    """Any graph with a constant-weight MatMul: quantized, then run on the source's inputs
    (the difference reported, not judged: there is no next-token distribution)."""
    import numpy as np

    import keishiki

    _matmul_onnx(tmp_path / "mm.onnx", np.random.default_rng(0).standard_normal((64, 32)))
    report = keishiki.convert(
        tmp_path / "mm.onnx", tmp_path / "q.onnx", to="onnx", quant=quant, quiet=True
    )
    step = report.steps[0]
    assert step.verify["method"] == "run-both" and step.verify["passed"]
    assert 0 < step.verify["max_abs_diff"] < 5 and "not a causal LM" in step.verify["note"]
    assert _ops(tmp_path / "q.onnx")[op] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.onnx", "q.onnx"]


def test_preprocessing_copies_live_in_the_hidden_steps_folder(tmp_path, monkeypatch):
    """onnxruntime's pre-processed copy of the model (and its "-inferred" twin) were written
    under fixed names beside OUT, which a killed run left there; they are written in OUT's
    hidden steps folder, which the next run removes."""
    import os

    import numpy as np
    import onnxruntime.quantization.shape_inference as shape_inference

    import keishiki

    seen = []
    original = shape_inference.quant_pre_process

    def recording(src, out, *args, **kwargs):
        seen.append(Path(out))
        return original(src, out, *args, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", recording)
    _matmul_onnx(tmp_path / "mm.onnx", np.ones((64, 32)))
    keishiki.convert(tmp_path / "mm.onnx", tmp_path / "q.onnx", to="onnx", quant="int8")
    assert [p.parent.parent for p in seen] == [tmp_path / f".q.onnx.keishiki-steps-{os.getpid()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.onnx", "q.onnx"]


def test_nothing_to_quantize_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "relu.onnx"))
    code, _, err = run_cli("quantize", tmp_path / "relu.onnx", tmp_path / "q.onnx", "--int8")
    assert code == 2 and "no MatMul with a constant weight to quantize" in err
    assert not (tmp_path / "q.onnx").exists()
