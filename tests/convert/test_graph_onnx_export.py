"""hf-model -> onnx: KV-cache layout, parameter names, opsets, greedy tokens vs PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.convert.graph_conftest import (
    initializer_names,
    onnx_export,
    opset_of,
    ort_greedy_ids,
    torch_greedy_ids,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

N_LAYERS = 2
INPUTS = ["input_ids", "attention_mask", "position_ids"] + [
    f"past_key_values.{i}.{k}" for i in range(N_LAYERS) for k in ("key", "value")
]
OUTPUTS = ["logits"] + [f"present.{i}.{k}" for i in range(N_LAYERS) for k in ("key", "value")]


@pytest.fixture(scope="module")
def greedy_reference(tiny_llama):
    return torch_greedy_ids(tiny_llama)


@pytest.mark.parametrize("opset", [14, 17, 18])
def test_export_writes_the_opset_asked_with_kv_layout_and_names(
    tiny_llama, opset, tiny_llama_state_dict
):
    folder, facts = onnx_export(tiny_llama, opset=opset)
    model_path = folder / "model.onnx"
    onnx.checker.check_model(str(model_path))
    assert facts["opset"] == opset == opset_of(model_path)
    assert facts["exporter"] == "torchscript" and facts["warnings"] == []
    model = onnx.load(str(model_path))
    assert [i.name for i in model.graph.input] == INPUTS
    assert [o.name for o in model.graph.output] == OUTPUTS
    names = initializer_names(model_path)
    assert not [n for n in names if n.startswith("onnx::") or n.startswith("val_")]
    # every parameter is an initializer under its own name, with its own values
    assert set(tiny_llama_state_dict) <= set(names)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    up = tiny_llama_state_dict["model.layers.0.mlp.up_proj.weight"].numpy()
    assert np.array_equal(weights["model.layers.0.mlp.up_proj.weight"], up)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.input) + list(model.graph.output)
    }
    assert dims["past_key_values.0.key"] == ["batch_size", 2, "past_sequence_length", 16]
    assert dims["logits"] == ["batch_size", "sequence_length", 384]
    assert dims["present.1.value"] == ["batch_size", 2, "total_sequence_length", 16]


def test_side_files_travel(tiny_llama):
    folder, facts = onnx_export(tiny_llama)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (folder / name).read_bytes() == (tiny_llama / name).read_bytes()
    assert facts["n_layers"] == 2 and facts["kv_heads"] == 2 and facts["head_dim"] == 16


@pytest.mark.parametrize("opset", [14, 18])
def test_ort_greedy_equals_transformers_generate(tiny_llama, greedy_reference, opset):
    prompt, expected = greedy_reference
    folder, _ = onnx_export(tiny_llama, opset=opset)
    assert ort_greedy_ids(folder / "model.onnx", prompt) == expected


def test_verify_reports_tiny_diffs_and_matching_tokens(tiny_llama):
    from keishiki._convert.run_verify import verify_onnx_lm

    folder, _ = onnx_export(tiny_llama)
    report = verify_onnx_lm(tiny_llama, folder / "model.onnx")
    assert report["passed"] and report["tokens_match"] and report["steps"] == 20
    assert report["max_abs_diff"] < 1e-5 and report["atol"] == 1e-4
    assert report["result_tokens"] == report["reference_tokens"]


def test_empty_past_and_padded_batch_match_pytorch(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from keishiki._convert.run_verify import ort_session

    folder, _ = onnx_export(tiny_llama)
    session = ort_session(folder / "model.onnx")
    ids = np.array([[0, 0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8]], dtype=np.int64)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8], dtype=np.int64)
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    feed.update({n: np.zeros((2, 2, 0, 16), np.float32) for n in INPUTS[3:]})
    logits, *presents = session.run(None, feed)
    assert presents[0].shape == (2, 2, 8, 16)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with torch.no_grad():
        ref = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(pos),
        ).logits.numpy()
    assert np.abs(logits[0, 3:] - ref[0, 3:]).max() < 1e-4
    assert np.abs(logits[1] - ref[1]).max() < 1e-4


def test_dynamo_exporter_keeps_names_at_18_and_falls_back_for_17(tiny_llama):
    pytest.importorskip("onnxscript")
    folder, facts = onnx_export(tiny_llama, opset=18, exporter="dynamo")
    assert facts["exporter"] == "dynamo" and facts["opset"] == 18
    names = initializer_names(folder / "model.onnx")
    assert "model.layers.1.self_attn.q_proj.weight" in names
    assert not [n for n in names if n.startswith("val_") or n.startswith("lm.")]
    assert [i.name for i in onnx.load(str(folder / "model.onnx")).graph.input] == INPUTS
    folder17, facts17 = onnx_export(tiny_llama, opset=17, exporter="dynamo")
    assert facts17["opset"] == 17 == opset_of(folder17 / "model.onnx")
    assert any("wrote opset 18 when asked for 17" in w for w in facts17["warnings"])
    assert facts17["exporter"] == "torchscript"  # version_converter cannot lower dynamo's 18


def test_external_data_when_asked(tiny_llama):
    folder, facts = onnx_export(tiny_llama, external_data=True)
    assert facts["external_data"] is True
    assert (folder / "model.onnx.data").stat().st_size > 400_000
    assert (folder / "model.onnx").stat().st_size < 300_000
    onnx.checker.check_model(str(folder / "model.onnx"))
    from keishiki._convert.run_verify import verify_onnx_lm

    assert verify_onnx_lm(tiny_llama, folder / "model.onnx")["passed"]


def test_names_map_constant_folded_matmul_weights_back(tiny_llama, tiny_llama_state_dict, tmp_path):
    """The TorchScript exporter with constant folding writes onnx::MatMul_<N> (transposed)."""
    import torch

    from keishiki._convert import names
    from keishiki._convert import onnx_export as oe

    model = oe.load_causal_lm(tiny_llama)
    shape = oe.model_shape(model.config)
    path = tmp_path / "folded.onnx"
    torch.onnx.export(
        oe._make_wrapper(model),
        oe.dummy_inputs(shape, torch.float32),
        str(path),
        dynamo=False,
        do_constant_folding=True,
        opset_version=17,
        input_names=INPUTS,
        output_names=OUTPUTS,
    )
    proto = onnx.load(str(path))
    generated = names.generated_names(proto)
    assert any(n.startswith("onnx::MatMul_") for n in generated)
    mapping = names.map_onnx_names(proto, tiny_llama_state_dict)
    folded = {old: new for old, new in mapping.items() if old.startswith("onnx::MatMul_")}
    assert folded and all(transposed for _, transposed in folded.values())
    assert ("model.layers.0.mlp.up_proj.weight", True) in folded.values()
    names.rename_initializers(proto, mapping)
    assert "model.layers.0.mlp.up_proj.weight" in names.transposed_initializers(proto)
    onnx.checker.check_model(proto)


def test_float16_export_passes_with_the_float16_tolerance(tiny_llama):
    from keishiki._convert.run_verify import verify_onnx_lm

    folder, facts = onnx_export(tiny_llama, dtype="float16")
    assert facts["dtype"] == "float16"
    weights = onnx.load(str(folder / "model.onnx")).graph.initializer
    assert {t.data_type for t in weights if t.name.endswith("proj.weight")} == {
        onnx.TensorProto.FLOAT16
    }
    report = verify_onnx_lm(tiny_llama, folder / "model.onnx")
    assert report["atol"] == 2e-2 and report["max_abs_diff"] < 2e-2 and report["passed"]


def test_convert_cli_to_onnx_folder_and_file(tiny_llama, tmp_path):
    code, out, err = run_cli(
        "convert", tiny_llama, tmp_path / "m", "--to", "onnx", "--opset", "17", "--json", "--quiet"
    )
    assert code == 0, err
    step = json.loads(out)["steps"][0]
    assert step["edge"] == "hf-model -> onnx" and step["verify"]["tokens_match"] is True
    assert step["verify"]["method"] == "run-both" and step["n_tensors"] >= 21
    assert (tmp_path / "m" / "model.onnx").is_file() and (
        tmp_path / "m" / "tokenizer.json"
    ).is_file()
    code, out, err = run_cli(
        "convert", tiny_llama, tmp_path / "single.onnx", "--to", "onnx", "--quiet"
    )
    assert code == 0, err
    assert (tmp_path / "single.onnx").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_failed_verification_exits_1_and_keeps_unverified(tiny_llama, tmp_path):
    # float16 weights cannot be within atol 1e-9 of the float32 model
    code, out, err = run_cli(
        "convert",
        tiny_llama,
        tmp_path / "m16",
        "--to",
        "onnx",
        "--dtype",
        "float16",
        "--atol",
        "1e-9",
        "--quiet",
    )
    assert code == 1
    assert "verification failed" in err and "max_abs_diff" in err
    assert not (tmp_path / "m16").exists()
    assert (tmp_path / "m16.unverified" / "model.onnx").is_file()


def test_refusals(tiny_llama, tmp_path):
    code, _, err = run_cli(
        "convert", tiny_llama, tmp_path / "x", "--to", "onnx", "--exporter", "tensorflow"
    )
    assert code == 2 and "--exporter 'tensorflow': choose one of torchscript, dynamo" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        "convert", tiny_llama, tmp_path / "x.onnx", "--to", "onnx", "--external-data"
    )
    assert code == 2 and "needs a folder OUT" in err


def test_above_the_size_threshold_goes_external(tiny_llama, tmp_path, monkeypatch):
    from keishiki._convert import onnx_export as oe

    monkeypatch.setattr(oe, "TWO_GB", 1000)  # pretend the tiny model is above 2 GB
    facts = oe.export_causal_lm(tiny_llama, tmp_path / "big")
    assert facts["external_data"] is True and (tmp_path / "big" / "model.onnx.data").is_file()
    onnx.checker.check_model(str(tmp_path / "big" / "model.onnx"))


def test_generic_causal_lm_gpt2(tmp_path):
    """Not only Llama: GPT-2 (Conv1D weights, learned positions, tied embeddings)."""
    import torch
    import transformers

    from keishiki._convert.onnx_export import export_causal_lm
    from keishiki._convert.run_verify import verify_onnx_lm

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=300,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(tmp_path / "gpt2")
    facts = export_causal_lm(tmp_path / "gpt2", tmp_path / "gpt2-onnx")
    assert facts["n_layers"] == 2 and facts["kv_heads"] == 4 and facts["head_dim"] == 8
    names = initializer_names(tmp_path / "gpt2-onnx" / "model.onnx")
    assert "transformer.h.0.mlp.c_fc.weight" in names
    assert not [n for n in names if n.startswith(("onnx::", "val_", "lm."))]
    report = verify_onnx_lm(tmp_path / "gpt2", tmp_path / "gpt2-onnx" / "model.onnx")
    assert report["passed"] and report["tokens_match"]


def test_encoder_model_is_refused_with_the_reason(tmp_path):
    from tests.conftest import corpus_path

    src = corpus_path("hf_dir/all-MiniLM-L6-v2")
    code, _, err = run_cli("convert", src, tmp_path / "bert", "--to", "onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "BertModel cannot run with a KV cache" in err and "decoder-only causal LMs" in err
    assert not (tmp_path / "bert").exists()
