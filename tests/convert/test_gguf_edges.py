"""GGUF edges checked with gguf.GGUFReader, and HF -> GGUF -> HF round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

import keishiki
from tests.conftest import corpus_path

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def ggufs(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for quant in ("f32", "f16", "bf16", "q8_0"):
        out[quant] = folder / f"tiny-{quant}.gguf"
        report = keishiki.convert(tiny_llama, out[quant], to="gguf", quant=quant, quiet=True)
        assert report.passed, report.to_dict()
    return out


def _field(reader, key):
    return reader.fields[key].contents()


def test_hf_to_gguf_metadata_llama_cpp_needs(ggufs, tiny_llama):
    config = json.loads((tiny_llama / "config.json").read_text())
    reader = gguf.GGUFReader(str(ggufs["f16"]))
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert _field(reader, "llama.embedding_length") == config["hidden_size"]
    assert _field(reader, "llama.feed_forward_length") == config["intermediate_size"]
    assert _field(reader, "llama.attention.head_count") == config["num_attention_heads"]
    assert _field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert _field(reader, "llama.context_length") == config["max_position_embeddings"]
    assert _field(reader, "llama.rope.dimension_count") == config["head_dim"]
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    # GPT-2's own split (a lone ByteLevel pre-tokenizer); llama.cpp's "default" would group
    # digits in threes and tokenize "1,000,000" differently from the HF tokenizer
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(_field(reader, "tokenizer.ggml.tokens")) == config["vocab_size"]
    assert _field(reader, "tokenizer.ggml.bos_token_id") == config["bos_token_id"]
    names = {t.name: t for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_q.weight" in names
    assert names["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert names["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    # GGUF dims are reversed: ne[0] is the hidden size for the embedding
    assert list(names["token_embd.weight"].shape) == [config["hidden_size"], config["vocab_size"]]
    q8 = {t.name: t for t in gguf.GGUFReader(str(ggufs["q8_0"])).tensors}
    assert q8["blk.0.ffn_up.weight"].tensor_type.name == "Q8_0"


def test_q_is_permuted_like_llama_cpp(ggufs, tiny_llama_state_dict):
    reader = gguf.GGUFReader(str(ggufs["f32"]))
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    hf = tiny_llama_state_dict["model.layers.0.self_attn.q_proj.weight"].numpy()
    heads = 4
    expected = hf.reshape(heads, 2, hf.shape[0] // heads // 2, hf.shape[1]).swapaxes(1, 2)
    np.testing.assert_array_equal(np.asarray(q.data).reshape(hf.shape), expected.reshape(hf.shape))


def test_hf_gguf_hf_round_trip_is_exact_at_f32(ggufs, tiny_llama, tiny_llama_state_dict, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "back"
    report = keishiki.convert(ggufs["f32"], out, to="hf-model", quiet=True)
    assert report.passed
    back = safetensors_torch.load_file(out / "model.safetensors")
    assert set(back) == set(tiny_llama_state_dict)
    for k, v in tiny_llama_state_dict.items():
        assert torch.equal(back[k], v), k
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 2
    tok_a = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    tok_b = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello, world! The quick brown fox <|user|> 初めまして"
    assert tok_a(text)["input_ids"] == tok_b(text)["input_ids"]


@pytest.mark.parametrize("quant,tol", [("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 0.02)])
def test_hf_gguf_safetensors_within_quantization(
    ggufs, tiny_llama_state_dict, tmp_path, quant, tol
):
    out = tmp_path / "back.safetensors"
    report = keishiki.convert(ggufs[quant], out, to="safetensors", quiet=True)
    assert report.passed
    back = safetensors_torch.load_file(out)
    for k, v in tiny_llama_state_dict.items():
        diff = (back[k].float() - v).abs().max().item()
        assert diff <= tol * max(1.0, v.abs().max().item()), (k, diff)


def test_corpus_q8_0_bert_dequantized(tmp_path):
    src = corpus_path("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf")
    out = tmp_path / "bert.safetensors"
    report = keishiki.convert(src, out, to="safetensors", quiet=True)
    assert report.passed and report.steps[0].n_tensors == 37
    reader = gguf.GGUFReader(str(src))
    back = safetensors_torch.load_file(out)
    for t in reader.tensors:  # bert is not mapped: names kept, dims un-reversed
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        got = back[t.name].float().numpy()
        assert list(got.shape) == list(reversed(t.shape.tolist()))
        np.testing.assert_array_equal(got.reshape(-1), ref.reshape(-1).astype(got.dtype))


def test_torch7_to_gguf_goes_through_safetensors(tmp_path):
    src = corpus_path("torch7_binary/python-torchfile/floattensor.t7")
    out = tmp_path / "t7.gguf"
    report = keishiki.convert(src, out, to="gguf", quiet=True)
    assert report.path == ["torch7 -> safetensors", "safetensors -> gguf"] and report.passed
    assert len(report.steps) == 2
    assert not list(tmp_path.glob(".*keishiki*"))  # the step folder is gone
    reader = gguf.GGUFReader(str(out))
    info = keishiki.inspect(src)
    (lazy,) = list(info.lazy_tensors())
    (t,) = reader.tensors
    np.testing.assert_array_equal(np.asarray(t.data).reshape(lazy.info.shape), lazy.load())


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "Q8_0", "BF16", "F16"])
def test_quantized_types_dequantize_like_gguf_does(tmp_path, qtype):
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8, 64)).astype(np.float32)
    path = tmp_path / f"{qtype}.gguf"
    writer = gguf.GGUFWriter(str(path), "test")
    if qtype == "F16":
        writer.add_tensor("w", data.astype(np.float16))
    else:
        writer.add_tensor("w", gguf.quants.quantize(data, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "w.safetensors"
    assert keishiki.convert(path, out, to="safetensors", quiet=True).passed
    (t,) = gguf.GGUFReader(str(path)).tensors
    expected = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(8, 64)
    got = safetensors_torch.load_file(out)["w"].float().numpy()
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got - data).max() < 0.5  # and close to what was quantized
