"""Hugging Face model folders: corpus facts, tiny Llama layouts, shards and their index."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keishiki.errors import InvalidRequest
from keishiki.formats import hf_model, identify, inspect
from tests.conftest import FACTS, corpus_path, run_cli

CORPUS_CASES = ["hf_dir/tiny-bert-safetensors", "hf_dir/tiny-bert-flax", "hf_dir/all-MiniLM-L6-v2"]


@pytest.mark.parametrize("rel", CORPUS_CASES)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    assert info.format == "hf-model"
    hf = info.to_dict()["hf"]
    for key in ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size",
                "transformers_version"):
        assert hf[key] == facts[key], key
    assert info.config["model_type"] == facts["model_type"]
    (weights_file, weights), = facts["weights"].items()
    assert hf["weights"]["files"] == [weights_file]
    assert all(t.file == weights_file for t in info.tensors)
    count = weights.get("tensor_count", weights.get("leaf_count"))
    assert info.n_tensors == count
    if "total_numel" in weights:
        assert info.n_parameters == hf["total_parameters"] == weights["total_numel"]
    if "data_bytes" in weights:
        assert info.total_bytes == weights["data_bytes"]
        names = [t.name for t in info.tensors[: len(weights["tensors_first"])]]
        assert names == [e.split(":")[0] for e in weights["tensors_first"]]
    assert hf["vllm_supported"] is False and hf["vllm_task"] == "embed"  # BertModel
    assert hf["memory_bytes"]["fp16"] == 2 * info.n_parameters
    assert "vocab.txt" in hf["tokenizer_files"]


def test_sentence_transformers_flag():
    info = inspect(corpus_path("hf_dir/all-MiniLM-L6-v2"))
    assert info.details["hf"]["sentence_transformers"] is True
    assert info.details["hf"]["max_position_embeddings"] == 512


def test_tiny_llama_single_file(tiny_llama, tiny_llama_state_dict):
    info = inspect(tiny_llama)
    hf = info.details["hf"]
    assert (hf["model_type"], hf["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"],
            hf["num_key_value_heads"], hf["vocab_size"], hf["head_dim"]) == (2, 64, 4, 2, 384, 16)
    assert hf["context_length"] == info.config["max_position_embeddings"]
    assert hf["vllm_supported"] is True and hf["vllm_version"]
    assert hf["chat_template"] is True and hf["generation_config"] is True
    assert "tokenizer.json" in hf["tokenizer_files"]
    assert hf["weights"] == {"formats_present": ["safetensors"], "format": "safetensors",
                             "sharded": False, "files": ["model.safetensors"]}
    expected = sum(t.numel() for t in tiny_llama_state_dict.values())
    assert info.n_parameters == hf["total_parameters"] == expected
    assert hf["memory_bytes"] == {"fp32": 4 * expected, "fp16": 2 * expected,
                                  "int8": expected, "int4": expected // 2}
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), tiny_llama_state_dict[lazy.name].numpy())


@pytest.fixture(scope="module")
def sharded(tiny_llama, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.save_pretrained(out, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, out / name)
    return out


def test_sharded_safetensors(sharded, tiny_llama_state_dict):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    info = inspect(sharded)
    weights = info.details["hf"]["weights"]
    assert weights["sharded"] is True and sorted(weights["files"]) == shards
    assert info.warnings == []
    assert {t.name: t.file for t in info.tensors} == index["weight_map"]
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), tiny_llama_state_dict[lazy.name].numpy())


def test_missing_shard_is_reported(sharded, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(sharded, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[-1]
    (folder / gone).unlink()
    info = inspect(folder)
    assert info.details["hf"]["weights"]["missing_files"] == [gone]
    assert any(gone in w and "missing" in w for w in info.warnings)
    assert not any(t.file == gone for t in info.tensors)


def test_shard_name_escaping_folder_is_refused(sharded, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(sharded, folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InvalidRequest, match="outside"):
        inspect(folder)
    code, _out, err = run_cli("info", folder)
    assert code == 2 and err.count("\n") == 1


def test_pytorch_bin_folder(tiny_llama, tiny_llama_state_dict, tmp_path):
    import torch

    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(tiny_llama / name, folder / name)
    torch.save(tiny_llama_state_dict, folder / "pytorch_model.bin")
    info = inspect(folder)
    assert info.format == "hf-model"
    assert info.details["hf"]["weights"]["format"] == "pytorch"
    assert {t.name for t in info.tensors} == set(tiny_llama_state_dict)
    assert info.n_parameters == sum(t.numel() for t in tiny_llama_state_dict.values())
    lazy = next(info.lazy_tensors())
    np.testing.assert_array_equal(lazy.load(), tiny_llama_state_dict[lazy.name].numpy())


def test_config_only_folder_warns(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                      "architectures": ["GPT2LMHeadModel"],
                                                      "n_layer": 12, "n_embd": 768,
                                                      "n_head": 12, "n_positions": 1024}))
    info = inspect(tmp_path)
    hf = info.details["hf"]
    assert info.n_tensors == 0 and any("no weights" in w for w in info.warnings)
    assert (hf["num_hidden_layers"], hf["hidden_size"], hf["num_key_value_heads"],
            hf["context_length"]) == (12, 768, 12, 1024)
    assert hf["vllm_supported"] is True


def test_config_without_model_type_is_not_hf(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    assert hf_model.sniff(__import__("keishiki.core.source", fromlist=["Source"]).Source(
        tmp_path)) is None


def test_onnx_export_folder_goes_to_onnx(tmp_path):
    shutil.copy(corpus_path("onnx/onnxruntime-1.32.0/sigmoid.onnx"), tmp_path / "model.onnx")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert identify(tmp_path).format == "onnx"


def test_vllm_list_is_data_with_version():
    registry = hf_model.vllm_registry()
    assert registry["vllm_version"] and registry["source"]
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"} <= set(
        registry["architectures"])
    assert "BertModel" not in registry["architectures"]


def test_inspect_hf_folder_loads_no_torch():
    path = corpus_path("hf_dir/tiny-bert-safetensors")
    code = (f"import sys, keishiki; keishiki.inspect({str(path)!r}); "
            f"print([m for m in ('torch', 'transformers', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_human_and_json(tiny_llama):
    code, out, _ = run_cli("info", tiny_llama, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "hf-model" and data["hf"]["vllm_supported"] is True
    assert data["config"]["model_type"] == "llama"
    code, out, _ = run_cli("info", tiny_llama)
    assert code == 0 and "hf-model" in out and "vllm_supported" in out


@pytest.mark.parametrize("weights_rel, name, fmt", [
    ("keras_h5/keras-3.15.1/tiny_mlp_keras3_legacy.h5", "tf_model.h5", "keras-h5"),
    ("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf", "tiny-bert-q8_0.gguf", "gguf"),
])
def test_other_weight_layouts_use_the_registry_readers(tmp_path, weights_rel, name, fmt):
    source = corpus_path(weights_rel)
    shutil.copy(source, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert",
                                                      "architectures": ["BertModel"]}))
    info = inspect(tmp_path)
    alone = inspect(source)
    assert info.format == "hf-model" and info.details["hf"]["weights"]["format"] == fmt
    assert [(t.name, t.dtype, t.shape) for t in info.tensors] == \
        [(t.name, t.dtype, t.shape) for t in alone.tensors]
    assert all(t.file == name for t in info.tensors)
    first = info.tensors[0]
    np.testing.assert_array_equal(info.tensor_loader(first),
                                  alone.tensor_loader(alone.tensors[0]))


def test_sharded_pytorch_bin_folder(tiny_llama, tiny_llama_state_dict, tmp_path):
    import torch

    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    names = sorted(tiny_llama_state_dict)
    halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in halves.items():
        torch.save({k: tiny_llama_state_dict[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    info = inspect(tmp_path)
    weights = info.details["hf"]["weights"]
    assert weights["format"] == "pytorch" and weights["sharded"] is True
    assert weights["index"] == "pytorch_model.bin.index.json"
    assert {t.name: t.file for t in info.tensors} == weight_map and info.warnings == []
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), tiny_llama_state_dict[lazy.name].numpy())
