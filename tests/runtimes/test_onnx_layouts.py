"""ONNX Runtime backend on an optimum-style graph built by hand: no ``position_ids``, a
``use_cache_branch`` input, symbolic head sizes read from config.json.  Its logits pick
token ``total length seen % vocab``, so the generated ids prove the past grows by one each
step (the presents are fed back)."""

from __future__ import annotations

import json
import shutil

import pytest

from keishiki.runtimes import LLM, SamplingParams

VOCAB = 384


def _counting_graph(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    past = ["batch", "kv_heads", "past", "head_dim"]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, past),
        helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, past),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, past),
        helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, past),
    ]
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant",
        [],
        [name],
        value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values),
    )
    nodes = [
        const("axes", [1, 3]),
        const("two", [2]),
        const("vocab", [VOCAB]),
        helper.make_node(
            "Constant",
            [],
            ["onoff"],
            value=helper.make_tensor("onoff", TensorProto.FLOAT, [2], [0.0, 1.0]),
        ),
        helper.make_node("Cast", ["input_ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["idsf", "axes"], ["kv"]),
        helper.make_node("Concat", ["past_key_values.0.key", "kv"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "kv"], ["present.0.value"], axis=2),
        helper.make_node("Shape", ["present.0.key"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["total"]),
        helper.make_node("Mul", ["input_ids", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "total"], ["count"]),
        helper.make_node("Mod", ["count", "vocab"], ["index"]),
        helper.make_node("OneHot", ["index", "vocab", "onoff"], ["logits"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    graph = helper.make_graph(nodes, "counting-lm", inputs, outputs, initializer=[zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_optimum_style_graph(tiny_llama, tmp_path):
    folder = tmp_path / "counting"
    folder.mkdir()
    _counting_graph(folder / "decoder_model_merged.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, folder / name)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "num_key_value_heads": 1,
                "num_attention_heads": 1,
                "hidden_size": 1,
                "vocab_size": VOCAB,
                "eos_token_id": 2,
            }
        )
    )
    llm = LLM(model=folder)
    assert llm.backend == "onnxruntime" and "KV cache (1 layers)" in llm.backend_reason
    prompts = [{"prompt_token_ids": [10, 11, 12]}, {"prompt_token_ids": [20, 21, 22, 23, 24]}]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    # left-padded to 5: after the prompt 5 tokens were seen, then 6, 7, 8
    assert [o.outputs[0].token_ids for o in outs] == [[5, 6, 7, 8], [5, 6, 7, 8]]
