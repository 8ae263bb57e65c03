"""GGUF conversions used the way people use them: regression tests for what a demanding user
found broken (each failed before its fix).  Bad input must give a one-line error and exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    """The tiny Llama as an f16 GGUF."""
    out = tmp_path_factory.mktemp("qa") / "tiny.gguf"
    code, _, err = run_cli("convert", tiny_llama, out, "--to", "gguf", "--quant", "f16", "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("keep, to", [(100_000, "safetensors"), (3000, "hf-model")])
def test_truncated_gguf_is_a_one_line_corrupt_error(tiny_gguf, tmp_path, keep, to):
    # GGUFReader raised ValueError ("cannot reshape array") -> "internal error"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:keep])
    code, _, err = run_cli("convert", cut, tmp_path / "out", "--to", to)
    assert code == 2
    assert "corrupt or truncated" in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1


def test_truncated_gguf_in_compare_is_a_one_line_error(tiny_llama, tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:100_000])
    code, _, err = run_cli("compare", tiny_llama, cut)
    assert code == 2 and "corrupt or truncated" in err


def test_config_without_num_key_value_heads_is_refused(tiny_llama, tmp_path):
    # the tiny Llama has 4 heads, 2 KV heads: without the key, transformers (and keishiki)
    # default to 4; the GGUF was written with head_count_kv 4 and llama.cpp refused to load it
    src = tmp_path / "nokv"
    shutil.copytree(tiny_llama, src)
    config = json.loads((src / "config.json").read_text())
    del config["num_key_value_heads"]
    (src / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("convert", src, tmp_path / "nokv.gguf", "--to", "gguf")
    assert code == 2, err
    assert "num_key_value_heads" in err and "set num_key_value_heads to 2" in err
    assert not (tmp_path / "nokv.gguf").exists()


def test_linear_rope_scaling_is_written_and_read_back(tiny_llama, tmp_path):
    # rope_type 'linear' was dropped with a warning: llama.cpp then computed unscaled rope
    # (logits 30x further from transformers'); it reads rope.scaling.type/factor
    import numpy as np
    import torch
    import transformers

    src = tmp_path / "linear"
    shutil.copytree(tiny_llama, src)
    config = json.loads((src / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "linear.gguf"
    code, stdout, err = run_cli("convert", src, out, "--to", "gguf", "--json")
    assert code == 0, err
    assert "rope_type" not in stdout  # no 'not written' warning any more
    import gguf

    fields = gguf.GGUFReader(str(out)).fields
    assert fields["llama.rope.scaling.type"].contents() == "linear"
    assert fields["llama.rope.scaling.factor"].contents() == 4.0
    back = tmp_path / "back"
    code, _, err = run_cli("convert", out, back, "--to", "hf-model", "--quiet")
    assert code == 0, err
    ids = [[1, 5, 77, 200, 300, 42, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
    logits = []
    for folder in (src, back):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        assert model.config.rope_parameters["rope_type"] == "linear"
        with torch.no_grad():
            logits.append(model(torch.tensor(ids)).logits[0].numpy())
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(out), logits_all=True, verbose=False, n_ctx=64)
    llm.eval(ids[0])
    assert np.abs(np.array(llm.scores[: len(ids[0])]) - logits[0]).max() < 1e-3


@pytest.mark.parametrize(
    "entry, result",
    [
        ("num_attention_heads", 2),
        ("vocab_size", 2),
        ("num_hidden_layers", 2),
        ("hidden_size", 2),
        ("intermediate_size", 2),
    ],
)
def test_config_missing_an_entry_is_a_one_line_refusal(tiny_llama, tmp_path, entry, result):
    # before: KeyError -> "internal error" (heads, vocab, layers) or exit 1 after the whole
    # write with a '.unverified' file left (hidden_size, intermediate_size)
    src = tmp_path / "cfg"
    shutil.copytree(tiny_llama, src)
    config = json.loads((src / "config.json").read_text())
    del config[entry]
    (src / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("convert", src, tmp_path / "x.gguf", "--to", "gguf")
    assert code == result
    assert f"config.json has no {entry}" in err and "internal error" not in err
    assert not list(tmp_path.glob("x.gguf*"))


def _strip_gguf(src, out, drop):
    """A copy of GGUF ``src`` without the metadata keys / tensors named in ``drop``."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), kind)
    for t in reader.tensors:
        if t.name not in drop:
            writer.add_tensor(t.name, np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    "drop, says",
    [
        ("llama.attention.head_count", "no llama.attention.head_count"),  # was KeyError
        ("llama.embedding_length", "no llama.embedding_length"),  # was KeyError
        ("token_embd.weight", "model.embed_tokens.weight"),  # was StopIteration
        ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight"),  # was exit 0, no q_proj
    ],
)
def test_incomplete_gguf_to_hf_is_refused(tiny_gguf, tmp_path, drop, says):
    cut = tmp_path / "cut.gguf"
    _strip_gguf(tiny_gguf, cut, {drop})
    code, _, err = run_cli("convert", cut, tmp_path / "hf", "--to", "hf-model")
    assert code == 2, err
    assert says in err and "internal error" not in err
    assert not (tmp_path / "hf").exists()


def test_gguf_without_output_or_context_length_still_converts(tiny_gguf, tmp_path):
    # the completeness check keeps the fallbacks: no output.weight = tied, context 2048
    cut = tmp_path / "cut.gguf"
    _strip_gguf(tiny_gguf, cut, {"output.weight", "llama.context_length"})
    code, _, err = run_cli("convert", cut, tmp_path / "hf", "--to", "hf-model", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 2048


def test_hf_weights_missing_a_layer_tensor_are_refused(tiny_llama, tmp_path):
    # before: exit 0 and a GGUF without blk.1.attn_q (llama.cpp: "missing tensor")
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "holes"
    shutil.copytree(tiny_llama, src)
    weights = load_file(src / "model.safetensors")
    del weights["model.layers.1.self_attn.q_proj.weight"]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli("convert", src, tmp_path / "x.gguf", "--to", "gguf")
    assert code == 2, err
    assert "model.layers.1.self_attn.q_proj.weight" in err
    assert not list(tmp_path.glob("x.gguf*"))


def test_vocab_only_gguf_to_hf_says_so(tmp_path):
    # before: StopIteration ("internal error") looking for the embedding
    from tests.conftest import corpus_path

    vocab = corpus_path("gguf/llama.cpp-vocab/ggml-vocab-llama-spm.gguf")
    code, _, err = run_cli("convert", vocab, tmp_path / "hf", "--to", "hf-model")
    assert code == 2
    assert "vocabulary-only GGUF" in err and len(err.strip().splitlines()) == 1


def test_phi3_config_without_num_key_value_heads_is_refused(tiny_llama, tmp_path):
    # phi3's fused qkv_proj: (heads + 2 x kv heads) x head_dim rows; before: exit 0 and a
    # GGUF with head_count_kv 4 for 2 KV heads
    import transformers

    config = transformers.Phi3Config(
        vocab_size=384,
        hidden_size=64,
        num_hidden_layers=1,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    src = tmp_path / "phi3"
    transformers.Phi3ForCausalLM(config).save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, src / name)
    saved = json.loads((src / "config.json").read_text())
    del saved["num_key_value_heads"]
    (src / "config.json").write_text(json.dumps(saved))
    code, _, err = run_cli("convert", src, tmp_path / "x.gguf", "--to", "gguf")
    assert code == 2, err
    assert "set num_key_value_heads to 2" in err


def test_gguf_without_head_count_kv_reads_the_kv_heads_from_attn_k(tiny_gguf, tmp_path):
    """An old GGUF may omit head_count_kv; with 2 KV heads for 4 query heads the default
    (= head_count) un-permuted K wrongly and wrote num_key_value_heads 4, which transformers
    cannot load.  The rows of blk.0.attn_k say 2."""
    transformers = pytest.importorskip("transformers")
    cut = tmp_path / "nokv.gguf"
    _strip_gguf(tiny_gguf, cut, {"llama.attention.head_count_kv"})
    code, _, err = run_cli("convert", cut, tmp_path / "hf", "--to", "hf-model", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")  # loads
    code, _, err = run_cli("compare", tiny_gguf, cut)
    assert code == 0, err


def test_vocab_only_gguf_to_safetensors_is_refused(tmp_path):
    from tests.conftest import corpus_path

    vocab = corpus_path("gguf/llama.cpp-vocab/ggml-vocab-llama-spm.gguf")
    code, _, err = run_cli("convert", vocab, tmp_path / "v.safetensors", "--to", "safetensors")
    assert code == 2 and "vocabulary-only GGUF" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("v.safetensors*"))


def test_compare_hf_with_a_gguf_lacking_head_count_kv(tiny_llama, tiny_gguf, tmp_path):
    """compare un-permutes attn_k with the KV heads read from the tensor when the metadata
    omits them (with 4 assumed for 2, every K weight compared 'different')."""
    cut = tmp_path / "nokv.gguf"
    _strip_gguf(tiny_gguf, cut, {"llama.attention.head_count_kv"})
    report = __import__("keishiki").compare(tiny_llama, cut, rtol=1e-3, atol=1e-3)
    k = [d for d in report.tensors if d.pair.a.endswith("k_proj.weight")]
    assert len(k) == 2 and all(d.ok and d.transform == "llama-rope-unpermute" for d in k)
