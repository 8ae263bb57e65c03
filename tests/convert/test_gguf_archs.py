"""HF <-> GGUF beyond the llama family (qwen2, qwen3, gemma, gemma2, phi3), checked by readers that
are not keishiki's: transformers' own GGUF loader (``from_pretrained(gguf_file=...)``, which
maps llama.cpp's names back and undoes gemma's norm offset itself) must give the original
model's logits, and so must the HF folder keishiki makes from the GGUF.  transformers 5.24
does not load ``gemma`` (1) GGUF files: that one is checked with gguf.GGUFReader and the
round trip.  Where llama-cpp-python is installed, llama.cpp itself runs every GGUF too."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

import keishiki
from keishiki.errors import InvalidRequest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TOKEN_IDS = [[1, 5, 77, 200, 383, 42, 9, 300]]
_SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
# qwen3: head_dim 128 != hidden/heads, as in the real Qwen3 models (transformers' GGUF loader
# does not read attention.key_length for qwen3 and takes Qwen3Config's default 128).
# gemma2: head_dim 256 = query_pre_attn_scalar's default, which is what llama.cpp scales by.
CASES = {
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True),
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256),
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            original_max_position_embeddings=256,
        ),
    ),
}
TRANSFORMERS_READS = ("qwen2", "qwen3", "gemma2", "phi3")  # transformers.integrations.ggml
# keys llama.cpp's loader (llama-model.cpp load_hparams) reads as required, plus the ones
# its converter always writes for these architectures (key_length for gemma)
LLAMA_CPP_KEYS = {
    "qwen2": [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
    ],
    "qwen3": [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
    ],
    "gemma": [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
    ],
    "gemma2": [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
        "attention.sliding_window",
        "attn_logit_softcapping",
        "final_logit_softcapping",
    ],
    "phi3": [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "rope.dimension_count",
        "rope.freq_base",
        "rope.scaling.original_context_length",
        "attention.sliding_window",
    ],
}


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKEN_IDS)).logits.float().numpy()


@pytest.fixture(scope="session")
def tiny_models(tiny_llama, tmp_path_factory):
    """arch -> (HF folder, reference logits): random weights (norms and biases too, so a
    swapped or un-offset tensor shows), the tiny Llama's tokenizer."""
    base = json.loads((tiny_llama / "config.json").read_text())
    out = {}
    for arch, (config_cls, model_cls, extra) in CASES.items():
        # general.name comes from the folder name; llama.cpp special-cases a name containing
        # "phi3" (Phi-3's SentencePiece tokens), which the tiny tokenizer does not have
        folder = tmp_path_factory.mktemp(f"archs-{arch}") / "tiny"
        config = getattr(transformers, config_cls)(
            vocab_size=base["vocab_size"],
            bos_token_id=base["bos_token_id"],
            eos_token_id=base["eos_token_id"],
            pad_token_id=base["pad_token_id"],
            **_SMALL,
            **extra,
        )
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config).eval()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                centre = 1.0 if "norm" in name and not arch.startswith("gemma") else 0.0
                p.copy_(centre + 0.1 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tiny_llama / name).exists():
                shutil.copy(tiny_llama / name, folder / name)
        out[arch] = (folder, _logits(model))
    return out


@pytest.fixture(scope="session")
def arch_ggufs(tiny_models, tmp_path_factory):
    """(arch, quant) -> GGUF path written by keishiki convert (which verified it)."""
    folder = tmp_path_factory.mktemp("arch-gguf")
    out = {}
    for arch, (src, _) in tiny_models.items():
        for quant in ("f32", "q8_0"):
            path = folder / f"{arch}-{quant}.gguf"
            report = keishiki.convert(src, path, to="gguf", quant=quant, quiet=True)
            assert report.passed, report.to_dict()
            assert report.steps[0].details["architecture"] == arch
            assert report.steps[0].verify["metadata_keys_checked"] > 8
            out[arch, quant] = path
    return out


def _fields(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("arch", list(CASES))
def test_metadata_llama_cpp_needs(arch, arch_ggufs, tiny_models):
    config = json.loads((tiny_models[arch][0] / "config.json").read_text())
    _, kv = _fields(arch_ggufs[arch, "f32"])
    assert kv["general.architecture"] == arch
    missing = [k for k in LLAMA_CPP_KEYS[arch] if f"{arch}.{k}" not in kv]
    assert not missing
    assert kv[f"{arch}.block_count"] == config["num_hidden_layers"]
    assert kv[f"{arch}.embedding_length"] == config["hidden_size"]
    assert kv[f"{arch}.feed_forward_length"] == config["intermediate_size"]
    assert kv[f"{arch}.attention.head_count_kv"] == config["num_key_value_heads"]
    assert kv[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    if "head_dim" in config and arch != "qwen2":
        assert kv[f"{arch}.attention.key_length"] == config["head_dim"]
    if arch == "phi3":
        assert kv["phi3.rope.dimension_count"] == 16  # hidden 64 / 4 heads, all rotated
        assert kv["phi3.attention.sliding_window"] == 0  # none: llama.cpp's "no SWA"
    if arch == "gemma2":
        assert kv["gemma2.final_logit_softcapping"] == pytest.approx(30.0)
        assert kv["gemma2.attention.sliding_window"] == config["sliding_window"]
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert not any(k.startswith("llama.") for k in kv)


def test_tensor_names_and_what_llama_cpp_changes(arch_ggufs, tiny_models):
    """qwen: no Q/K permutation, biases and q_norm/k_norm under llama.cpp's names; gemma:
    norms stored as w + 1, no output.weight."""
    from safetensors.numpy import load_file

    for arch in CASES:
        hf = load_file(tiny_models[arch][0] / "model.safetensors")
        reader, _ = _fields(arch_ggufs[arch, "f32"])
        t = {
            x.name: np.asarray(x.data).reshape(tuple(reversed(x.shape.tolist())))
            for x in reader.tensors
        }
        if arch.startswith("qwen"):  # not permuted
            np.testing.assert_array_equal(
                t["blk.1.attn_q.weight"], hf["model.layers.1.self_attn.q_proj.weight"]
            )
            np.testing.assert_array_equal(
                t["blk.1.ffn_norm.weight"], hf["model.layers.1.post_attention_layernorm.weight"]
            )
            # qwen3 here ties its embeddings: llama.cpp writes no output.weight then
            assert ("output.weight" in t) == (arch != "qwen3")
        if arch == "qwen2":
            np.testing.assert_array_equal(
                t["blk.0.attn_k.bias"], hf["model.layers.0.self_attn.k_proj.bias"]
            )
        if arch == "qwen3":
            np.testing.assert_array_equal(
                t["blk.0.attn_k_norm.weight"], hf["model.layers.0.self_attn.k_norm.weight"]
            )
            assert t["blk.0.attn_q_norm.weight"].shape == (128,)
        if arch.startswith("gemma"):
            assert "output.weight" not in t
            np.testing.assert_array_equal(t["output_norm.weight"], hf["model.norm.weight"] + 1)
            np.testing.assert_array_equal(
                t["blk.0.attn_norm.weight"], hf["model.layers.0.input_layernorm.weight"] + 1
            )
        if arch == "phi3":  # fused tensors kept fused, as llama.cpp does
            np.testing.assert_array_equal(
                t["blk.1.attn_qkv.weight"], hf["model.layers.1.self_attn.qkv_proj.weight"]
            )
            np.testing.assert_array_equal(
                t["blk.0.ffn_up.weight"], hf["model.layers.0.mlp.gate_up_proj.weight"]
            )
        if arch == "gemma2":
            np.testing.assert_array_equal(
                t["blk.1.post_ffw_norm.weight"],
                hf["model.layers.1.post_feedforward_layernorm.weight"] + 1,
            )
            np.testing.assert_array_equal(
                t["blk.1.ffn_norm.weight"],
                hf["model.layers.1.pre_feedforward_layernorm.weight"] + 1,
            )


@pytest.mark.parametrize("arch", TRANSFORMERS_READS)
@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_transformers_gguf_loader_gives_the_same_logits(
    arch, quant, arch_ggufs, tiny_models, tmp_path
):
    """f32: the original logits; q8_0: within quantization of them, and the same (to float
    rounding) as keishiki's own GGUF -> HF folder of the same file."""
    path = arch_ggufs[arch, quant]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    assert type(model).__name__ == CASES[arch][1]
    got, expected = _logits(model), tiny_models[arch][1]
    if quant == "f32":
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        return
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max(), rtol=0)
    assert np.abs(got - expected).max() > 1e-6  # it really was quantized
    back = tmp_path / "back"
    assert keishiki.convert(path, back, to="hf-model", quiet=True).passed
    ours = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    np.testing.assert_allclose(_logits(ours), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", list(CASES))
def test_gguf_to_hf_model_round_trip(arch, arch_ggufs, tiny_models, tmp_path):
    src, expected = tiny_models[arch]
    out = tmp_path / "back"
    report = keishiki.convert(arch_ggufs[arch, "f32"], out, to="hf-model", quiet=True)
    assert report.passed, report.to_dict()
    config = json.loads((out / "config.json").read_text())
    original = json.loads((src / "config.json").read_text())
    for key in (
        "model_type",
        "architectures",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "tie_word_embeddings",
        "vocab_size",
    ):
        if key in original:  # qwen2 has no head_dim entry
            assert config[key] == original[key], key
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    # f32 round trip: bit-exact except gemma's norms, (w + 1) - 1 in float32
    np.testing.assert_allclose(_logits(model), expected, atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (
        tok("Hello world")["input_ids"]
        == transformers.AutoTokenizer.from_pretrained(src)("Hello world")["input_ids"]
    )


def test_q8_0_round_trip_within_quantization(arch_ggufs, tiny_models, tmp_path):
    """gemma (which transformers cannot load from GGUF) through q8_0 and back."""
    out = tmp_path / "back"
    assert keishiki.convert(arch_ggufs["gemma", "q8_0"], out, to="hf-model", quiet=True).passed
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_logits(model), tiny_models["gemma"][1], atol=0.05, rtol=0)


def test_other_model_types_are_refused_with_the_list(tiny_llama, tmp_path):
    folder = tmp_path / "phi"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="falcon", architectures=["FalconForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        InvalidRequest, match=r"falcon.*llama, mistral, qwen2, qwen3, gemma, gemma2, phi3 only"
    ):
        keishiki.convert(folder, tmp_path / "x.gguf", to="gguf", quiet=True)


def test_phi3_longrope_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "phi3-128k"
    shutil.copytree(tiny_models["phi3"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "long_factor": [1.0] * 8,
        "short_factor": [1.0] * 8,
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="long_factor.*rope_factors"):
        keishiki.convert(folder, tmp_path / "x.gguf", to="gguf", quiet=True)
    assert not (tmp_path / "x.gguf").exists()


def test_gemma2_query_scalar_llama_cpp_cannot_carry_is_a_warning(tiny_models, tmp_path):
    folder = tmp_path / "g2"
    shutil.copytree(tiny_models["gemma2"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["query_pre_attn_scalar"] = 144
    (folder / "config.json").write_text(json.dumps(config))
    report = keishiki.convert(folder, tmp_path / "g2.gguf", to="gguf", quiet=True)
    assert report.passed
    assert any("query_pre_attn_scalar 144" in w for w in report.steps[0].warnings)


@pytest.mark.parametrize("quant,rel", [("f16", 0.005), ("bf16", 0.03)])
def test_half_precision_through_the_cli(quant, rel, tiny_models, tmp_path):
    """``keishiki convert --quant f16|bf16`` of qwen3 (q/k norms kept f32, like llama.cpp),
    read by transformers' GGUF loader."""
    from tests.conftest import run_cli

    src, expected = tiny_models["qwen3"]
    out = tmp_path / f"qwen3-{quant}.gguf"
    code, stdout, stderr = run_cli(
        "convert", str(src), str(out), "--to", "gguf", "--quant", quant, "--quiet", "--json"
    )
    assert code == 0, stderr
    assert json.loads(stdout)["passed"] is True
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == quant.upper()
    assert types["blk.0.attn_q_norm.weight"] == "F32"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out.parent, gguf_file=out.name, dtype=torch.float32
    ).eval()
    np.testing.assert_allclose(_logits(model), expected, atol=rel * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("arch", list(CASES))
def test_llama_cpp_runs_the_gguf(arch, arch_ggufs, tiny_models):
    """llama.cpp (through llama-cpp-python, when installed) loads the GGUF and gives the
    original logits: within 2e-3 of the largest at f32 (its KV cache is f16), 5% at q8_0."""
    llama_cpp = pytest.importorskip("llama_cpp")
    expected = tiny_models[arch][1][0]
    for quant, rel in (("f32", 2e-3), ("q8_0", 0.05)):
        llm = llama_cpp.Llama(
            model_path=str(arch_ggufs[arch, quant]),
            logits_all=True,
            n_ctx=64,
            n_threads=2,
            verbose=False,
        )
        llm.eval(TOKEN_IDS[0])
        got = np.asarray(llm.scores[: len(TOKEN_IDS[0])])
        llm.close()
        np.testing.assert_allclose(
            got, expected, atol=rel * np.abs(expected).max(), rtol=0, err_msg=f"{arch} {quant}"
        )


@pytest.mark.parametrize("arch", list(CASES))
def test_llama_cpp_tokenizes_like_the_hf_folder(arch, arch_ggufs, tiny_models):
    """The pre-tokenizer written (``qwen2`` for a qwen2 folder, whose transformers tokenizer is
    Qwen2Tokenizer; ``gpt-2`` for GPT-2's split) makes llama.cpp's ids equal transformers'."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from keishiki._convert.gguf_vocab import LOOSE_SAMPLES, STRICT_SAMPLES

    llm = llama_cpp.Llama(model_path=str(arch_ggufs[arch, "f32"]), vocab_only=True, verbose=False)
    hf = transformers.AutoTokenizer.from_pretrained(tiny_models[arch][0])
    for text in STRICT_SAMPLES + LOOSE_SAMPLES:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True)
            == hf(text, add_special_tokens=False)["input_ids"]
        ), text
    llm.close()


@pytest.mark.parametrize("arch", ["llama", *CASES])
def test_torch_free_tokenizer_is_the_auto_one(arch, arch_ggufs, tiny_llama, tmp_path, monkeypatch):
    """The tokenizer check's child loads a GGUF's tokenizer without torch for the
    architectures transformers has no tokenizer class of its own for (its generic class,
    transformers' GGUF metadata reader served by gguf-py): exactly those are listed, and
    what comes out is ``AutoTokenizer``'s tokenizer (same class, backend JSON and special
    tokens)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    from keishiki._convert.encodings import TORCH_FREE_ARCHS, _serve_gguf_metadata
    from keishiki._convert.gguf_edges import _tokenizer_flags, reference_reader
    from keishiki._convert.gguf_vocab import load_gguf_tokenizer

    generic = TOKENIZER_MAPPING_NAMES.get(arch) in (None, "TokenizersBackend")
    assert (arch in TORCH_FREE_ARCHS) == generic
    if not generic:
        return
    if arch == "llama":
        path = tmp_path / "llama.gguf"
        keishiki.convert(tiny_llama, path, to="gguf", quiet=True, verify=False)
    else:
        path = arch_ggufs[arch, "f32"]
    reader = reference_reader(path)
    flags = _tokenizer_flags(reader)
    auto = load_gguf_tokenizer(path, flags)
    stand_in = "transformers.integrations.gguf.reader"  # restored (or removed) afterwards
    monkeypatch.setitem(sys.modules, stand_in, sys.modules.get(stand_in))
    _serve_gguf_metadata(path, reader)
    generic_tok = load_gguf_tokenizer(path, flags, generic=True)
    assert type(generic_tok) is type(auto)
    assert generic_tok.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token"):
        assert getattr(generic_tok, attr) == getattr(auto, attr), attr
