"""Hugging Face model folders: corpus facts, tiny Llama layouts, shards and their index."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keishiki import inspect
from keishiki.errors import UnsafeFile
from keishiki.formats import _hf_sizes, hf_model, identify
from tests.conftest import FACTS, corpus_path, run_cli

CORPUS_CASES = ["hf_dir/tiny-bert-safetensors", "hf_dir/tiny-bert-flax", "hf_dir/all-MiniLM-L6-v2"]


@pytest.mark.parametrize("rel", CORPUS_CASES)
def test_corpus_facts(rel):
    info = inspect(corpus_path(rel))  # skips, with the reason, when the file is not here
    facts = FACTS[rel]
    assert info.format == "hf-model"
    hf = info.to_dict()["hf"]
    for key in (
        "model_type",
        "architectures",
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "transformers_version",
    ):
        assert hf[key] == facts[key], key
    assert info.config["model_type"] == facts["model_type"]
    ((weights_file, weights),) = facts["weights"].items()
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
    assert hf["vllm_supported"] is True and hf["vllm_task"] == "embed"  # BertModel
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
    assert (
        hf["num_hidden_layers"],
        hf["hidden_size"],
        hf["num_attention_heads"],
        hf["num_key_value_heads"],
        hf["vocab_size"],
        hf["head_dim"],
    ) == (2, 64, 4, 2, 384, 16)
    assert hf["context_length"] == info.config["max_position_embeddings"]
    assert hf["vllm_supported"] is True and hf["vllm_version"]
    assert hf["chat_template"] is True and hf["generation_config"] is True
    assert "tokenizer.json" in hf["tokenizer_files"]
    assert hf["weights"] == {
        "formats_present": ["safetensors"],
        "format": "safetensors",
        "sharded": False,
        "files": ["model.safetensors"],
    }
    expected = sum(t.numel() for t in tiny_llama_state_dict.values())
    assert info.n_parameters == hf["total_parameters"] == expected
    assert hf["memory_bytes"] == {
        "fp32": 4 * expected,
        "fp16": 2 * expected,
        "int8": expected,
        "int4": expected // 2,
    }
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
    with pytest.raises(UnsafeFile, match="climbs out with '..'"):  # the path gate
        inspect(folder)
    code, _out, err = run_cli("info", folder)
    assert code == 1 and err.count("\n") == 1


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
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "n_layer": 12,
                "n_embd": 768,
                "n_head": 12,
                "n_positions": 1024,
            }
        )
    )
    info = inspect(tmp_path)
    hf = info.details["hf"]
    assert info.n_tensors == 0 and any("no weights" in w for w in info.warnings)
    assert (
        hf["num_hidden_layers"],
        hf["hidden_size"],
        hf["num_key_value_heads"],
        hf["context_length"],
    ) == (12, 768, 12, 1024)
    assert hf["vllm_supported"] is True


def test_config_without_model_type_is_not_hf(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    assert (
        hf_model.sniff(__import__("keishiki.core.source", fromlist=["Source"]).Source(tmp_path))
        is None
    )


def test_onnx_export_folder_goes_to_onnx(tmp_path):
    shutil.copy(corpus_path("onnx/onnxruntime-1.32.0/sigmoid.onnx"), tmp_path / "model.onnx")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert identify(tmp_path).format == "onnx"


def test_vllm_list_is_data_with_version():
    registry = hf_model.vllm_registry()
    assert registry["vllm_version"] and registry["source"]
    generate = hf_model.vllm_lists()["_TEXT_GENERATION_MODELS"]
    assert generate["task"] == "generate"
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"} <= set(
        generate["architectures"]
    )
    assert "BertModel" not in generate["architectures"]


def test_inspect_hf_folder_loads_no_torch():
    path = corpus_path("hf_dir/tiny-bert-safetensors")
    code = (
        f"import sys, keishiki; keishiki.inspect({str(path)!r}); "
        f"print([m for m in ('torch', 'transformers', 'onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_human_and_json(tiny_llama):
    code, out, _ = run_cli("info", tiny_llama, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "hf-model" and data["hf"]["vllm_supported"] is True
    assert data["config"]["model_type"] == "llama"
    code, out, _ = run_cli("info", tiny_llama)
    assert code == 0 and "hf-model" in out and "vllm_supported" in out


@pytest.mark.parametrize(
    "weights_rel, name, fmt",
    [
        ("keras_h5/keras-3.15.1/tiny_mlp_keras3_legacy.h5", "tf_model.h5", "keras-h5"),
        ("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf", "tiny-bert-q8_0.gguf", "gguf"),
    ],
)
def test_other_weight_layouts_use_the_registry_readers(tmp_path, weights_rel, name, fmt):
    source = corpus_path(weights_rel)
    shutil.copy(source, tmp_path / name)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
    )
    info = inspect(tmp_path)
    alone = inspect(source)
    assert info.format == "hf-model" and info.details["hf"]["weights"]["format"] == fmt
    assert [(t.name, t.dtype, t.shape) for t in info.tensors] == [
        (t.name, t.dtype, t.shape) for t in alone.tensors
    ]
    assert all(t.file == name for t in info.tensors)
    first = info.tensors[0]
    np.testing.assert_array_equal(info.tensor_loader(first), alone.tensor_loader(alone.tensors[0]))


def test_sharded_pytorch_bin_folder(tiny_llama, tiny_llama_state_dict, tmp_path):
    import torch

    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    names = sorted(tiny_llama_state_dict)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, keys in halves.items():
        torch.save({k: tiny_llama_state_dict[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map})
    )
    info = inspect(tmp_path)
    weights = info.details["hf"]["weights"]
    assert weights["format"] == "pytorch" and weights["sharded"] is True
    assert weights["index"] == "pytorch_model.bin.index.json"
    assert {t.name: t.file for t in info.tensors} == weight_map and info.warnings == []
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), tiny_llama_state_dict[lazy.name].numpy())


# ---- vLLM's lists -------------------------------------------------------------------------------

# every dict of vLLM's registry.py at the commit the data file names, with its key count there
VLLM_LISTS = {
    "_TEXT_GENERATION_MODELS": 119,
    "_MULTIMODAL_MODELS": 74,
    "_EMBEDDING_MODELS": 43,
    "_CROSS_ENCODER_MODELS": 9,
    "_SPECULATIVE_DECODING_MODELS": 17,
    "_TRANSFORMERS_SUPPORTED_MODELS": 2,
    "_TRANSFORMERS_BACKEND_MODELS": 10,
}


def test_vllm_lists_are_sorted_unique_and_complete():
    lists = hf_model.vllm_lists()
    assert {name: len(entry["architectures"]) for name, entry in lists.items()} == VLLM_LISTS
    for name, entry in lists.items():
        archs = entry["architectures"]
        assert archs and archs == sorted(set(archs)), name
        assert isinstance(entry["task"], str) and entry["task"], name
    assert {
        "Gemma3ForConditionalGeneration",
        "LlavaForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
    } <= set(lists["_MULTIMODAL_MODELS"]["architectures"])


@pytest.mark.parametrize(
    "arch, task, tasks",
    [
        ("LlamaForCausalLM", "generate", ["generate", "embed"]),
        ("Gemma3ForConditionalGeneration", "multimodal generate", ["multimodal generate"]),
        ("LlavaForConditionalGeneration", "multimodal generate", ["multimodal generate"]),
        ("Qwen2_5_VLForConditionalGeneration", "multimodal generate", ["multimodal generate"]),
        ("PixtralForConditionalGeneration", "multimodal generate", ["multimodal generate"]),
        ("InternVLChatModel", "multimodal generate", ["multimodal generate"]),
        ("Phi3VForCausalLM", "multimodal generate", ["multimodal generate", "embed"]),
        ("BertModel", "embed", ["embed"]),
        ("XLMRobertaForSequenceClassification", "score", ["score"]),
        ("EagleLlamaForCausalLM", "speculative decoding draft", ["speculative decoding draft"]),
        (
            "SmolLM3ForCausalLM",
            "generate via the Transformers backend",
            ["generate via the Transformers backend"],
        ),
    ],
)
def test_vllm_task_of_each_list(tmp_path, arch, task, tasks):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    hf = inspect(tmp_path).details["hf"]
    assert (hf["vllm_supported"], hf["vllm_task"], hf["vllm_tasks"]) == (True, task, tasks)
    assert hf["vllm_supported_until"] is None


@pytest.mark.parametrize(
    "arch, until", [("MllamaForConditionalGeneration", "0.10.2"), ("TinyNetForMagic", None)]
)
def test_vllm_unsupported(tmp_path, arch, until):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    hf = inspect(tmp_path).details["hf"]
    assert (hf["vllm_supported"], hf["vllm_task"], hf["vllm_tasks"]) == (False, None, [])
    assert hf["vllm_supported_until"] == until  # Mllama: vLLM dropped it after 0.10.2


def test_vllm_backend_fallback_is_every_list():
    """The vLLM backend's fallback answers like ModelRegistry.get_supported_archs(): the
    union of the lists, so a multimodal model is not refused when vLLM lacks that API."""
    from keishiki.runtimes import vllm_backend

    version, archs = vllm_backend.supported_architectures()
    assert version == hf_model.vllm_registry()["vllm_version"]
    assert archs == hf_model.vllm_architectures() and len(archs) == 255
    assert {"Gemma3ForConditionalGeneration", "BertModel", "LlamaForCausalLM"} <= archs


# ---- sizes from config.json alone ---------------------------------------------------------------

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
GPT2 = dict(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64)
# (model_type, config.json keys): each is built by transformers and counted
PARAMETER_CASES = [
    ("llama", TINY),
    ("llama", {**TINY, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    ("llama", {**TINY, "head_dim": 16}),
    ("mistral", TINY),
    ("qwen2", TINY),  # q/k/v biases
    ("qwen3", TINY),  # head_dim 128 by default, q/k norms
    ("qwen3", {**TINY, "head_dim": 8}),
    ("gemma", TINY),  # head_dim 256 by default, tied
    ("gemma2", {**TINY, "head_dim": 8}),  # four norms per layer
    ("gemma3_text", {**TINY, "head_dim": 8}),
    ("phi3", {**TINY, "pad_token_id": 0}),  # fused qkv and gate_up
    ("gpt2", GPT2),  # learned positions, MLP 4 × hidden
    ("gpt2", {**GPT2, "n_inner": 40, "tie_word_embeddings": False}),
    ("gpt_neox", TINY),
    ("gpt_neox", {**TINY, "attention_bias": False}),
    ("falcon", TINY),  # multi-query, one norm per layer
    ("falcon", {**TINY, "new_decoder_architecture": True, "num_kv_heads": 2}),
    ("falcon", {**TINY, "multi_query": False, "parallel_attn": False, "bias": True}),
    (
        "falcon",
        {
            **TINY,
            "new_decoder_architecture": True,
            "num_kv_heads": 2,
            "num_ln_in_parallel_attn": 1,
            "ffn_hidden_size": 40,
        },
    ),
    ("mixtral", {**TINY, "num_local_experts": 4, "num_experts_per_tok": 2}),
    (
        "qwen2_moe",
        {
            **TINY,
            "num_experts": 4,
            "moe_intermediate_size": 24,
            "shared_expert_intermediate_size": 40,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 2,
        },
    ),
    (
        "qwen3_moe",
        {
            **TINY,
            "num_experts": 4,
            "moe_intermediate_size": 24,
            "num_experts_per_tok": 2,
            "mlp_only_layers": [0],
        },
    ),
]


def _transformers_config(model_type: str, keys: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **keys)


@pytest.mark.parametrize(
    "model_type, keys",
    PARAMETER_CASES,
    ids=[f"{m}-{i}" for i, (m, _k) in enumerate(PARAMETER_CASES)],
)
def test_parameters_from_config_equal_transformers(model_type, keys):
    """Exact, for a hand-written config.json and for the one save_pretrained writes."""
    from transformers import AutoModelForCausalLM

    config = _transformers_config(model_type, keys)
    model = AutoModelForCausalLM.from_config(config)
    real = sum(p.numel() for p in model.parameters())
    for written in ({"model_type": model_type, **keys}, json.loads(config.to_json_string())):
        estimate = _hf_sizes.parameters_from_config(written)
        assert estimate["estimated"] is True and estimate["total"] == real, estimate
        assert estimate["total"] == sum(estimate["breakdown"].values())


@pytest.mark.parametrize(
    "extra",
    [
        {"model_type": "gemma2"},
        {"model_type": "gemma3_text"},
        {"model_type": "mixtral", "num_local_experts": 8},
        {"model_type": "qwen2_moe", "num_experts": 4, "moe_intermediate_size": 8},
        {"model_type": "qwen2", "use_sliding_window": True},
        {"model_type": "llama", "num_hidden_layers": 0},
        {"model_type": "llama", "num_hidden_layers": -5},
    ],
)
def test_an_absurd_layer_count_is_no_estimate(extra):
    """One list item per layer: 200 bytes of config.json claiming 10**9 layers took
    gigabytes (10**30: killed); such a count is refused, in bounded work."""
    from tests.conftest import count_calls

    config = {
        "architectures": ["X"],
        "num_hidden_layers": 10**9,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "intermediate_size": 128,
        **extra,
    }
    with count_calls() as calls:
        estimate = _hf_sizes.parameters_from_config(config)
    assert estimate["estimated"] is False and "layers" in estimate["reason"]
    assert calls.calls < 10_000


# the sizes of published models (their config.json, trimmed to what the count reads), built
# on the meta device: transformers' count without allocating a byte
PUBLISHED = {
    "Llama-3.1-8B": (
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
        ),
    ),
    "Qwen2.5-7B": (
        "qwen2",
        dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        ),
    ),
    "gemma-2-9b": (
        "gemma2",
        dict(
            vocab_size=256000,
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
        ),
    ),
    "Mixtral-8x7B": (
        "mixtral",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
    ),
    "Qwen3-30B-A3B": (
        "qwen3_moe",
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
        ),
    ),
    "gpt2": ("gpt2", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    "pythia-1b": (
        "gpt_neox",
        dict(
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=8,
        ),
    ),
    "falcon-7b": (
        "falcon",
        dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71),
    ),
    "Phi-3-mini": (
        "phi3",
        dict(
            vocab_size=32064,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            pad_token_id=32000,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_of_published_sizes(name):
    import torch
    from transformers import AutoModelForCausalLM

    model_type, keys = PUBLISHED[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_transformers_config(model_type, keys))
    real = sum(p.numel() for p in model.parameters())
    assert _hf_sizes.parameters_from_config({"model_type": model_type, **keys})["total"] == real


def test_moe_active_parameters():
    keys = {**TINY, "num_local_experts": 4, "num_experts_per_tok": 1}
    estimate = _hf_sizes.parameters_from_config({"model_type": "mixtral", **keys})
    expert = 3 * 32 * 48  # gate, up, down of one expert
    assert estimate["moe"] == {
        "experts": 4,
        "experts_per_token": 1,
        "sparse_layers": 3,
        "active_parameters": estimate["total"] - 3 * 3 * expert,
    }


@pytest.mark.parametrize(
    "model_type, text_type, vision_type",
    [
        ("gemma3", "gemma3_text", "siglip_vision_model"),
        ("llava", "llama", "clip_vision_model"),
    ],
)
def test_multimodal_counts_the_language_model(model_type, text_type, vision_type):
    from transformers import AutoModelForImageTextToText

    text = {**TINY, "vocab_size": 300, "head_dim": 8, "model_type": text_type}
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        model_type=vision_type,
    )
    extra = {"mm_tokens_per_image": 16} if model_type == "gemma3" else {}
    config = _transformers_config(
        model_type,
        {"text_config": text, "vision_config": vision, "image_token_index": 299, **extra},
    )
    model = AutoModelForImageTextToText.from_config(config)
    language = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "language_model" in n or n.startswith("lm_head")
    )
    estimate = _hf_sizes.parameters_from_config(json.loads(config.to_json_string()))
    assert estimate["total"] == language and estimate["scope"].startswith("language model only")


@pytest.mark.parametrize("family", sorted(_hf_sizes.TEXT_CONFIG_DEFAULTS))
def test_text_config_defaults_are_transformers(family):
    """A text_config is written as a diff from these: they must be the class's own."""
    config = _transformers_config(family, {})
    for key, value in _hf_sizes.TEXT_CONFIG_DEFAULTS[family].items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize(
    "config, reason, kv_too",
    [
        (
            {"model_type": "deepseek_v3", **TINY},
            "no layout known for model_type 'deepseek_v3'",
            True,
        ),  # latent attention and MoE: a Llama-shaped guess would be far off
        ({"model_type": "llama", "vocab_size": 97}, "no num_hidden_layers, hidden_size", True),
        ({"model_type": "mixtral", **TINY}, "no expert count", False),  # the KV cache needs none
    ],
)
def test_no_estimate_without_a_layout_or_sizes(config, reason, kv_too):
    result = _hf_sizes.parameters_from_config(config)
    assert result["estimated"] is False and reason in result["reason"]
    assert _hf_sizes.kv_cache(config)["estimated"] is not kv_too


KV_CASES = [
    ("llama", {}),
    ("gemma2", {"head_dim": 8, "sliding_window": 4}),  # local, global, ...
    ("gemma3_text", {"head_dim": 8, "sliding_window": 4, "sliding_window_pattern": 2}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
    ("falcon", {}),  # multi-query: 1
    ("gpt2", GPT2 | {"n_positions": 10}),
    ("gpt_neox", {}),
]


@pytest.mark.parametrize("model_type, keys", KV_CASES, ids=[m for m, _k in KV_CASES])
def test_kv_cache_equals_transformers_cache(model_type, keys):
    """The bytes transformers' cache holds after a prompt of max_position_embeddings tokens.

    transformers keeps ``window - 1`` past tokens in a sliding layer between steps (the
    next token makes ``window``); keishiki counts the window, the peak."""
    import torch
    from transformers import AutoModelForCausalLM

    context = 10
    written = {**TINY, "num_hidden_layers": 4, "max_position_embeddings": context, **keys}
    if model_type == "gpt2":
        written = keys
    config = _transformers_config(model_type, written)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        cache = model(torch.arange(context)[None] % 90, use_cache=True).past_key_values
    held = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    kv = _hf_sizes.kv_cache({"model_type": model_type, **written})
    per_layer_token = kv["bytes_per_token"]["fp32"] // kv["layers"]
    assert kv["context_length"] == context
    assert held == kv["bytes_at_context"]["fp32"] - kv["sliding_layers"] * per_layer_token
    assert kv["bytes_per_token"]["fp16"] * 2 == kv["bytes_per_token"]["fp32"]


@pytest.mark.parametrize(
    "config, layers, sliding, window",
    [
        # Gemma 2 9B: 42 layers alternating 4096-token local and global attention
        (
            {
                "model_type": "gemma2",
                **TINY,
                "num_hidden_layers": 42,
                "sliding_window": 4096,
                "max_position_embeddings": 8192,
            },
            42,
            21,
            4096,
        ),
        # Gemma 3: five local layers to one global by default
        (
            {
                "model_type": "gemma3_text",
                **TINY,
                "num_hidden_layers": 12,
                "sliding_window": 512,
                "max_position_embeddings": 32768,
            },
            12,
            10,
            512,
        ),
        # an explicit layer_types wins over the family's pattern
        (
            {
                "model_type": "gemma3_text",
                **TINY,
                "num_hidden_layers": 3,
                "sliding_window": 8,
                "layer_types": ["full_attention", "sliding_attention", "full_attention"],
            },
            3,
            1,
            8,
        ),
        # Mistral v0.1 names a window for all layers: the full context is reported
        ({"model_type": "mistral", **TINY, "sliding_window": 16}, 3, 0, None),
    ],
)
def test_kv_cache_sliding_windows(config, layers, sliding, window):
    kv = _hf_sizes.kv_cache(config)
    assert (kv["layers"], kv["sliding_layers"], kv["sliding_window"]) == (layers, sliding, window)
    per_token = kv["bytes_per_token"]["bf16"] // layers
    context = config["max_position_embeddings"]
    expected = ((layers - sliding) * context + sliding * min(window or 0, context)) * per_token
    assert kv["bytes_at_context"]["bf16"] == expected


def test_config_only_folder_is_sized(tmp_path):
    """A folder before its download: memory comes from the estimate, with the KV cache."""
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **TINY}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = inspect(tmp_path).details["hf"]
    estimate = hf["parameters_from_config"]
    assert hf["total_parameters"] == 0 and "vs_weights" not in estimate
    assert (
        hf["memory_bytes"] == estimate["memory_bytes"]
        and estimate["memory_bytes"]["fp16"] == 2 * estimate["total"]
    )
    assert "estimated from config.json" in hf["memory_note"]
    # 3 layers × 2 KV heads × head_dim 8 × K and V × 2 bytes, over 64 tokens
    assert hf["kv_cache"]["bytes_per_token"]["fp16"] == 3 * 2 * 8 * 2 * 2
    assert hf["kv_cache"]["bytes_at_context"]["fp16"] == 64 * 3 * 2 * 8 * 2 * 2


def test_estimate_beside_the_weights(tiny_llama):
    info = inspect(tiny_llama)
    estimate = info.details["hf"]["parameters_from_config"]
    assert estimate["estimated"] is True and estimate["family"] == "llama"
    assert estimate["vs_weights"] == {
        "weights": info.n_parameters,
        "difference": 0,
        "relative": 0.0,
    }
    code, out, _ = run_cli("info", tiny_llama)
    assert code == 0 and "parameters_from_config" in out and "kv_cache" in out


def test_missing_shard_shows_in_the_gap(sharded, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(sharded, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    (folder / sorted(set(index["weight_map"].values()))[0]).unlink()
    gap = inspect(folder).details["hf"]["parameters_from_config"]["vs_weights"]
    assert gap["difference"] < 0 and gap["relative"] < 0


def test_a_tensor_in_two_shards_is_listed_once(tmp_path):
    """The index maps each name to one shard; a name that two shards hold was listed twice
    and counted twice in the parameters: once now, from the shard the index names."""
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    save_file({"a": np.zeros(3, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(
        {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    info = inspect(tmp_path)
    assert [(t.name, t.file) for t in info.tensors] == [
        ("a", "model-00001-of-00002.safetensors"),
        ("b", "model-00002-of-00002.safetensors"),
    ]
    assert info.n_parameters == 5
    assert info.tensor_loader(info.tensor("a")).tolist() == [0.0, 0.0, 0.0]
    assert any("in more than one shard" in w for w in info.warnings)
