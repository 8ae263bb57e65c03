"""hf-model folders: safetensors <-> pytorch_model.bin, sharding with a correct index."""

from __future__ import annotations

import json

import pytest

import keishiki

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def bin_folder(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "bin-sharded"
    report = keishiki.convert(tiny_llama, out, to="pytorch", shard_size="100KB", quiet=True)
    assert report.passed
    return out


def test_to_sharded_pytorch_bin_with_index(bin_folder, tiny_llama, tiny_llama_state_dict):
    index = json.loads((bin_folder / "pytorch_model.bin.index.json").read_text())
    shards = sorted(p.name for p in bin_folder.glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == set(tiny_llama_state_dict)
    total = 0
    for shard in shards:
        part = torch.load(bin_folder / shard, weights_only=True)
        assert all(index["weight_map"][k] == shard for k in part)
        for k, v in part.items():
            assert torch.equal(v, tiny_llama_state_dict[k])
            total += v.numel() * v.element_size()
        assert sum(v.numel() * v.element_size() for v in part.values()) <= 100_000 or len(part) == 1
    assert index["metadata"]["total_size"] == total
    for side in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (bin_folder / side).read_bytes() == (tiny_llama / side).read_bytes()


def test_bin_folder_back_to_sharded_safetensors_loads_in_transformers(
    bin_folder, tmp_path, tiny_llama_state_dict
):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "st"
    report = keishiki.convert(bin_folder, out, to="safetensors", shard_size="200KB", quiet=True)
    assert report.passed and report.path == ["hf-model -> safetensors"]
    assert report.steps[0].verify["index_ok"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_llama_state_dict)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_llama_state_dict[k]), k


def test_hf_model_dtype_change_updates_config(tiny_llama, tmp_path):
    out = tmp_path / "bf16"
    report = keishiki.convert(tiny_llama, out, to="hf-model", dtype="bfloat16", quiet=True)
    assert report.passed
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = safetensors_torch.load_file(out / "model.safetensors")
    assert {v.dtype for v in loaded.values()} == {torch.bfloat16}


def test_hf_model_to_one_file(tiny_llama, tiny_llama_state_dict, tmp_path):
    out = tmp_path / "merged.bin"
    keishiki.convert(tiny_llama, out, to="pytorch", quiet=True)
    loaded = torch.load(out, weights_only=True)
    assert set(loaded) == set(tiny_llama_state_dict)
