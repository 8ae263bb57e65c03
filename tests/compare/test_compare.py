"""keishiki.compare / ``keishiki compare``: weights tensor by tensor, verdicts, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import keishiki
from keishiki._compare.weights import apply_transform, value_diff
from keishiki.errors import InvalidRequest
from tests.conftest import corpus_path, run_cli


def by_a(report) -> dict:
    return {d.pair.a: d for d in report.tensors}


def test_identical_across_containers(seq_files):
    report = keishiki.compare(seq_files["safetensors"], seq_files["pt"])
    assert report.verdict == "identical" and report.exit_code == 0
    assert report.counts() == {"identical": 4}
    assert all(d.bit_equal and d.max_abs_diff == 0.0 for d in report.tensors)


def test_perturbed_tensor_is_named(seq_files):
    report = keishiki.compare(seq_files["safetensors"], seq_files["perturbed"])
    assert report.verdict == "different" and report.exit_code == 1
    diff = by_a(report)["2.weight"]
    assert diff.status == "different" and not diff.bit_equal and diff.n_over_tolerance == 1
    assert diff.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert "2.weight" in report.reasons[0]
    assert all(by_a(report)[n].status == "identical" for n in ("0.weight", "0.bias", "2.bias"))
    # a tolerance above the change accepts it
    loose = keishiki.compare(seq_files["safetensors"], seq_files["perturbed"], atol=2e-3)
    assert loose.verdict == "within tolerance" and loose.exit_code == 0


def test_module_prefix_and_onnx_transposed_are_identical(seq_files):
    assert keishiki.compare(seq_files["safetensors"], seq_files["module"]).verdict == "identical"
    report = keishiki.compare(seq_files["pt"], seq_files["onnx"])
    assert report.verdict == "identical"
    assert by_a(report)["0.weight"].pair.how == "value-transposed"


def test_bfloat16_copy_is_within_tolerance_not_identical(seq_files, seq_state_dict):
    _, sd = seq_state_dict
    report = keishiki.compare(seq_files["safetensors"], seq_files["bf16"])
    assert report.verdict == "different"  # exact by default; bfloat16 rounding differs
    d = by_a(report)["0.weight"]
    assert d.pair.b_dtype == "bfloat16" and d.to_dict()["dtype_differs"] is True
    import ml_dtypes

    expected = np.max(
        np.abs(sd["0.weight"] - sd["0.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))
    )
    assert d.max_abs_diff == pytest.approx(float(expected), rel=1e-6)
    ok = keishiki.compare(seq_files["safetensors"], seq_files["bf16"], rtol=2**-8)
    assert ok.verdict == "within tolerance"


def test_unpaired_and_shape_mismatch(seq_files):
    extra = keishiki.compare(seq_files["safetensors"], seq_files["extra"])
    assert extra.verdict == "different" and "1 only in B" in extra.reasons[0]
    allowed = keishiki.compare(seq_files["safetensors"], seq_files["extra"], allow_unmatched=True)
    assert allowed.verdict == "within tolerance"
    shape = keishiki.compare(seq_files["safetensors"], seq_files["shape"])
    assert by_a(shape)["0.bias"].status == "shape mismatch" and shape.verdict == "different"


def test_gguf_llama_unpermutes_and_dequantizes(llama_gguf_pair):
    hf, gg, _ = llama_gguf_pair
    report = keishiki.compare(hf, gg)
    d = by_a(report)
    assert d["model.layers.0.self_attn.q_proj.weight"].status == "identical"
    assert d["model.layers.0.self_attn.k_proj.weight"].status == "identical"
    up = d["model.layers.0.mlp.up_proj.weight"]  # q8_0: dequantized, small error
    # within the quantization-aware tolerance by default (issue 13), not bit-equal
    assert up.pair.b_dtype == "q8_0" and up.status == "within tolerance"
    assert "quantization-aware tolerance" in up.notes[-1]
    assert 0 < up.max_abs_diff < 0.05
    assert keishiki.compare(hf, gg, atol=0.05).verdict == "within tolerance"
    # and with GGUF as A, the HF side gets permuted instead
    back = keishiki.compare(gg, hf, atol=0.05)
    assert back.verdict == "within tolerance"
    assert by_a(back)["blk.0.attn_q.weight"].status == "identical"


def test_real_corpus_legacy_vs_zip_identical():
    legacy = corpus_path("pytorch_legacy/torch-1.13.1-debian/tinynet_state_dict_legacy.pt")
    zipped = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")
    report = keishiki.compare(legacy, zipped)
    assert report.verdict == "identical" and len(report.tensors) == 9


def test_real_corpus_onnx_with_folded_batchnorm():
    """torch 1.13's export folded BatchNorm into the conv (onnx::Conv_16/17): the fold is
    recomputed from the state_dict and the generated tensors are paired with the conv's."""
    sd = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")
    graph = corpus_path("onnx/torch-1.13.1-debian/tinynet_torch113_opset13.onnx")
    report = keishiki.compare(sd, graph)
    by_a = {d.pair.a: d for d in report.tensors}
    assert {a: (d.pair.b, d.pair.how) for a, d in by_a.items()} == {
        "fc.weight": ("fc.weight", "exact"),
        "fc.bias": ("fc.bias", "exact"),
        "conv.weight": ("onnx::Conv_16", "folded"),
        "conv.bias": ("onnx::Conv_17", "folded"),
    }
    assert by_a["fc.weight"].status == "identical"
    assert by_a["conv.weight"].status == "within tolerance"
    assert by_a["conv.weight"].max_rel_diff < 1e-6
    assert report.mapping.unmatched_b == []
    assert report.mapping.counted_unmatched == ([], [])
    assert set(report.mapping.folded_into) == {
        f"bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert report.verdict == "within tolerance"


def test_value_diff_nan_inf_and_ints():
    a = np.array([1.0, np.nan, np.inf, -2.0], np.float32)
    assert value_diff(a, a.copy(), 0, 0) == (0.0, 0.0, 0)
    b = a.copy()
    b[1] = 0.0
    max_abs, _, over = value_diff(a, b, 0, 0)
    assert max_abs == float("inf") and over == 1
    assert value_diff(np.array([5, 7]), np.array([5, 9]), 0, 0)[0] == 2.0


I64 = np.iinfo(np.int64)


@pytest.mark.parametrize(
    "a, b, atol, max_abs, over",
    [
        # integers: no wrap-around in int64 (INT64_MAX - INT64_MIN gave 1), uint64 by value
        (np.array([I64.max, 7], np.int64), np.array([I64.min, 7], np.int64), 1.0, 2.0**64, 1),
        (np.array([2**64 - 1], np.uint64), np.array([-1], np.int64), 0.0, 2.0**64, 1),
        (np.array([2**62 + 1], np.int64), np.array([2**62], np.int64), 0.0, 1.0, 1),  # float64 ties
        (np.array([True, False]), np.array([1, 0], np.uint8), 0.0, 0.0, 0),
        (np.array([3], np.int8), np.array([3], np.uint64), 0.0, 0.0, 0),
        # an infinite difference counts whatever the tolerance
        (np.array([1.0, 2.0]), np.array([np.nan, 2.0]), np.inf, np.inf, 1),
        (np.array([np.inf, 2.0]), np.array([-np.inf, 2.0]), np.inf, np.inf, 1),
        (np.array([np.inf, 2.0]), np.array([np.inf, 2.5]), np.inf, 0.5, 0),
    ],
)
def test_value_diff_cases(a, b, atol, max_abs, over):
    got_abs, _rel, got_over = value_diff(a, b, atol, 0.0)
    assert (got_abs, got_over) == (max_abs, over)


@pytest.mark.parametrize("atol, rtol", [(float("nan"), 0.0), (0.0, float("nan")), (-1.0, 0.0)])
def test_bad_tolerances_are_refused(atol, rtol):
    from tests.compare.test_mapping import memory_model

    w = np.ones(2, np.float32)
    with pytest.raises(InvalidRequest, match="must be >= 0, got"):
        keishiki.compare(memory_model({"w": w}), memory_model({"w": w}), atol=atol, rtol=rtol)
    with pytest.raises(InvalidRequest, match="`logits_atol` must be >= 0"):  # its own name
        keishiki.compare(memory_model({"w": w}), memory_model({"w": w}), logits_atol=-1.0)


def test_transforms_round_trip():
    w = np.arange(8 * 3).reshape(8, 3)
    from keishiki._convert.gguf_names import permute

    assert np.array_equal(apply_transform(permute(w, 2), "llama-rope-unpermute", {"n_head": 2}), w)
    assert np.array_equal(apply_transform(w, "llama-rope-permute", {"n_head": 2}), permute(w, 2))
    assert apply_transform(w, "transpose", {}).shape == (3, 8)


def test_cli_exit_codes_and_json(seq_files):
    code, out, err = run_cli("compare", seq_files["safetensors"], seq_files["onnx"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "identical" and doc["n_pairs"] == 4
    assert doc["how"] == {"exact": 2, "value-transposed": 2}
    code, out, err = run_cli("compare", seq_files["safetensors"], seq_files["perturbed"])
    assert code == 1 and "2.weight" in out and "different" in out
    code, out, err = run_cli(
        "compare", seq_files["safetensors"], seq_files["perturbed"], "--atol", "0.01"
    )
    assert code == 0 and "within tolerance" in out


def test_cli_bad_input(tmp_path, seq_files):
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    for args in (
        [garbage, seq_files["pt"]],
        [seq_files["pt"], tmp_path / "nope"],
        [seq_files["pt"], seq_files["pt"], "--atol", "-1"],
    ):
        code, out, err = run_cli("compare", *args)
        assert code == 2, (args, out, err)
        assert err.startswith("keishiki: error:") and err.count("\n") == 1, err
    code, out, err = run_cli("compare", seq_files["pt"], seq_files["pt"], "--atol", "abc")
    assert code == 2  # a usage error from the option parser


@pytest.mark.slow
def test_outputs_hf_vs_onnx_export(tiny_llama, tmp_path_factory):
    """The tiny Llama against its ONNX export: weights identical, greedy tokens equal."""
    pytest.importorskip("onnxruntime")
    from keishiki._convert.onnx_export import export_causal_lm

    out = tmp_path_factory.mktemp("tl-onnx") / "onnx"
    export_causal_lm(tiny_llama, out)
    report = keishiki.compare(tiny_llama, out / "model.onnx", outputs=True, max_tokens=6)
    assert report.verdict == "identical", report.reasons
    o = report.outputs
    assert o["passed"] and o["tokens_match"] and len(o["tokens_a"]) == 6
    assert (o["backend_a"], o["backend_b"]) == ("torch", "onnxruntime")
    assert o["max_abs_diff"] < 1e-4
    code, text, err = run_cli(
        "compare", tiny_llama, out / "model.onnx", "--outputs", "--max-tokens", "3", "--json"
    )
    assert code == 0, err
    assert json.loads(text)["outputs"]["tokens_match"] is True


def test_torch7_sequential_vs_pytorch_names(tmp_path):
    """A Lua Torch nn.Sequential (named 0.weight, 2.bias… by the reader) against the
    state_dict of the equivalent PyTorch model."""
    t7 = pytest.importorskip("tests.formats.test_torch7")
    from safetensors.numpy import save_file

    (tmp_path / "net.t7").write_bytes(t7.write_sequential())
    save_file(
        {"0.weight": t7.W1, "0.bias": t7.B1, "2.weight": t7.W2, "2.bias": t7.B2},
        str(tmp_path / "net.safetensors"),
    )
    report = keishiki.compare(tmp_path / "net.safetensors", tmp_path / "net.t7")
    assert report.verdict == "identical", report.reasons
    assert report.mapping.how_counts() == {"exact": 4}


def test_parameter_named_but_stored_transposed():
    """keishiki's ONNX export keeps parameter names on MatMul operands (stored transposed)."""
    from tests.compare.test_mapping import memory_model

    rng = np.random.default_rng(3)
    rect, square = rng.standard_normal((2, 3)), rng.standard_normal((3, 3))
    a = memory_model({"fc.weight": rect, "sq.weight": square})
    b = memory_model({"fc.weight": rect.T.copy(), "sq.weight": square.T.copy()}, fmt="onnx")
    report = keishiki.compare(a, b)
    assert report.verdict == "identical", report.reasons
    fc, sq = by_a(report)["fc.weight"], by_a(report)["sq.weight"]
    assert fc.pair.transform == "transpose" and fc.pair.how == "exact"
    assert sq.transform == "transpose" and "only with the transpose" in sq.notes[0]


@pytest.mark.parametrize(
    "fmt_a, fmt_b, verdict, rect_status, square_status",
    [
        # PyTorch layout on both sides: a weight stored transposed is another tensor
        ("safetensors", "safetensors", "different", "shape mismatch", "different"),
        ("pytorch", "gguf", "different", "shape mismatch", "different"),
        ("safetensors", "torchscript", "different", "shape mismatch", "different"),
        # a side stores [in, out] (MatMul operands, Keras/Flax kernels): the same weight
        ("safetensors", "onnx", "identical", "identical", "identical"),
        ("onnx", "pytorch", "identical", "identical", "identical"),
        ("flax-msgpack", "safetensors", "identical", "identical", "identical"),
        ("safetensors", "keras-h5", "identical", "identical", "identical"),
    ],
)
def test_transposed_storage_is_a_layout_only_where_a_format_has_it(
    fmt_a, fmt_b, verdict, rect_status, square_status
):
    """A 2-D weight under one name, stored transposed in B: the same weight when a side's
    format stores [in, out]; between two [out, in] formats a difference (it would not even
    load into the model), never "identical"."""
    from tests.compare.test_mapping import memory_model

    rng = np.random.default_rng(5)
    rect, square = rng.standard_normal((2, 3)), rng.standard_normal((3, 3))
    a = memory_model({"fc.weight": rect, "sq.weight": square}, fmt=fmt_a)
    b = memory_model({"fc.weight": rect.T.copy(), "sq.weight": square.T.copy()}, fmt=fmt_b)
    report = keishiki.compare(a, b)
    got = by_a(report)
    assert report.verdict == verdict, report.reasons
    assert (got["fc.weight"].status, got["sq.weight"].status) == (rect_status, square_status)
    assert got["fc.weight"].pair.transposed == (rect_status == "identical")


def test_real_corpus_state_dict_vs_torchscript():
    sd = corpus_path("pytorch_zip/torch-1.13.1-debian/tinynet_state_dict_zip.pt")
    scripted = corpus_path("torchscript/torch-1.13.1-debian/tinynet_scripted.pt")
    report = keishiki.compare(sd, scripted)
    assert report.verdict == "identical" and len(report.tensors) == 9


def test_computed_buffers_do_not_count():
    from tests.compare.test_mapping import memory_model

    w = np.ones((2, 2), np.float32)
    a = memory_model({"model.layers.0.w": w})
    b = memory_model(
        {"lm.model.layers.0.w": w, "lm.model.rotary_emb.inv_freq": np.arange(4, dtype=np.float32)},
        fmt="torchscript",
    )
    report = keishiki.compare(a, b)
    assert report.verdict == "identical", report.reasons
    assert report.to_dict()["unmatched_b"] == [
        {
            "name": "lm.model.rotary_emb.inv_freq",
            "dtype": "float32",
            "shape": [4],
            "not_counted": "computed buffer",
        }
    ]


def test_outputs_of_weights_only_files_is_a_one_line_error(seq_files):
    pytest.importorskip("keishiki.runtimes")
    code, out, err = run_cli("compare", seq_files["safetensors"], seq_files["pt"], "--outputs")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "cannot compare outputs" in err and "cannot generate" in err


@pytest.mark.slow
def test_outputs_hf_vs_torchscript_export(tiny_llama, tmp_path):
    """Names in a traced archive carry the wrapper's prefix (``lm.``) and its rotary
    buffers, which a state_dict lacks: still identical, and the same greedy tokens."""
    from keishiki._convert import convert

    convert(tiny_llama, tmp_path / "ts", to="torchscript", verify=False, quiet=True)
    report = keishiki.compare(tiny_llama, tmp_path / "ts" / "model.pt", outputs=True, max_tokens=4)
    assert report.verdict == "identical", report.reasons
    assert set(report.mapping.how_counts()) <= {"exact", "prefix"}
    assert {t["not_counted"] for t in report.to_dict()["unmatched_b"]} <= {"computed buffer"}
    assert report.outputs["tokens_match"] and report.outputs["backend_b"] == "torchscript"


def test_real_corpus_keras_h5_vs_keras_v3_zip():
    """One Keras model saved both ways: ``model_weights/hidden/hidden/kernel`` in HDF5,
    ``layers/dense/vars/0`` in the .keras zip; names share nothing, values pair them."""
    h5 = corpus_path("keras_h5/keras-3.15.1/tiny_mlp_keras3_legacy.h5")
    v3 = corpus_path("other/keras_v3_zip/keras-3.15.1/tiny_mlp_keras3.keras")
    report = keishiki.compare(h5, v3)
    assert report.verdict == "identical", report.reasons
    assert set(report.mapping.how_counts()) == {"value"} and len(report.tensors) >= 4


def test_config_differences_are_reported_not_judged():
    from tests.compare.test_mapping import memory_model

    w = np.ones((2, 2), np.float32)
    a, b = memory_model({"w": w}), memory_model({"w": w.copy()})
    a.config = {"model_type": "llama", "dtype": "float32", "vocab_size": 10}
    b.config = {"model_type": "llama", "dtype": "float16", "vocab_size": 10, "extra": 1}
    report = keishiki.compare(a, b)
    assert report.config_diff == {"dtype": ["float32", "float16"], "extra": [None, 1]}
    assert report.verdict == "identical"
    assert keishiki.compare(memory_model({"w": w}), memory_model({"w": w})).config_diff is None
    # NaN (json reads it) equals NaN, nested too; 1 and 1.0 are one value
    a.config = b.config = {"f": float("nan"), "rope": {"factor": float("nan")}, "t": [1, 2.0]}
    assert keishiki.compare(a, b).config_diff == {}
    b.config = {"f": float("nan"), "rope": {"factor": 2.0}, "t": [1.0, 2]}
    assert list(keishiki.compare(a, b).config_diff) == ["rope"]


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_hf_vs_keishiki_gguf(tiny_llama, tmp_path, quant):
    """The tiny Llama converted by ``keishiki convert --to gguf``: names mapped back, Q/K
    permutation undone (or not, if the converter keeps HF order), Q8_0 within its rounding."""
    pytest.importorskip("gguf")
    from keishiki._convert import convert
    from keishiki.errors import NoConversionPath

    out = tmp_path / f"tiny-{quant}.gguf"
    try:
        convert(tiny_llama, out, to="gguf", quant=quant, verify=False, quiet=True)
    except (ImportError, NoConversionPath) as exc:
        pytest.skip(f"HF → GGUF conversion not available here: {exc}")
    report = keishiki.compare(tiny_llama, out, atol=0.0 if quant == "f32" else 0.05)
    assert report.verdict == ("identical" if quant == "f32" else "within tolerance"), report.reasons
    assert report.mapping.how_counts().get("gguf", 0) >= 18
    q = next(d for d in report.tensors if d.pair.a.endswith("layers.0.self_attn.q_proj.weight"))
    assert q.pair.b == "blk.0.attn_q.weight"


def test_gemma2_hf_vs_its_gguf_is_identical_both_ways(tiny_llama, tmp_path):
    """gemma2's GGUF names come from the converter's architecture table (not the llama one:
    post_attention_layernorm is not ffn_norm there), and llama.cpp's w + 1 on RMSNorm
    weights is undone exactly (B = A + 1 in float32 is what the writer computed)."""
    import shutil

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=vocab,
            query_pre_attn_scalar=16,
        )
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3)  # |w| < 1: where w + 1 - 1 would round
    hf = tmp_path / "g2"
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, hf / name)
    keishiki.convert(hf, tmp_path / "g2.gguf", to="gguf", quiet=True)
    for a, b in ((hf, tmp_path / "g2.gguf"), (tmp_path / "g2.gguf", hf)):
        report = keishiki.compare(a, b)
        assert report.verdict == "identical", report.reasons
        norms = [d for d in report.tensors if "norm" in d.pair.a + d.pair.b]
        assert len(norms) == 2 * 4 + 1 and all(d.bit_equal for d in norms)
        assert {d.pair.transform for d in norms} == {"subtract-offset" if a == hf else "add-offset"}


@pytest.mark.parametrize(
    "a_tensors, b_tensors, verdict, code",
    [
        ({}, {}, "identical", 0),  # nothing on either side: nothing differs
        ({"w": [1.0]}, {}, "different", 1),  # one side empty: nothing pairs
    ],
)
def test_models_without_tensors(tmp_path, a_tensors, b_tensors, verdict, code):
    torch = pytest.importorskip("torch")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({k: torch.tensor(v) for k, v in a_tensors.items()}, a)
    torch.save({k: torch.tensor(v) for k, v in b_tensors.items()}, b)
    rc, out, _ = run_cli("compare", a, b, "--json")
    assert rc == code and json.loads(out)["verdict"] == verdict
