"""keishiki.mapping / ``keishiki map``: pairing tensors across formats."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.model import ModelInfo
from keishiki.core.tensor import TensorInfo
from keishiki.mapping import content_digest, map_names, strip_wrappers
from tests.conftest import corpus_path, run_cli


def pairs_of(name_map) -> dict[str, tuple[str, str]]:
    return {p.a: (p.b, p.how) for p in name_map.pairs}


def memory_model(arrays: dict[str, np.ndarray], fmt: str = "safetensors") -> ModelInfo:
    """A ModelInfo over in-memory arrays (the mapping only needs names, shapes, a loader)."""
    infos = [TensorInfo(k, str(v.dtype), v.shape, v.nbytes) for k, v in arrays.items()]
    return ModelInfo(
        path=f"<{fmt}>", format=fmt, tensors=infos, tensor_loader=lambda info: arrays[info.name]
    )


def test_exact_names_safetensors_vs_torch_save(seq_files):
    m = map_names(inspect(seq_files["safetensors"]), inspect(seq_files["pt"]))
    assert pairs_of(m) == {n: (n, "exact") for n in ("0.weight", "0.bias", "2.weight", "2.bias")}
    assert m.unmatched_a == [] and m.unmatched_b == []


@pytest.mark.parametrize("key, b_prefix", [("module", "module."), ("compiled", "_orig_mod.model.")])
def test_wrapper_and_model_prefixes(seq_files, key, b_prefix):
    m = map_names(inspect(seq_files["safetensors"]), inspect(seq_files[key]))
    assert pairs_of(m) == {
        n: (b_prefix + n, "prefix") for n in ("0.weight", "0.bias", "2.weight", "2.bias")
    }
    # and the other way round
    back = map_names(inspect(seq_files[key]), inspect(seq_files["safetensors"]))
    assert {p.b for p in back.pairs} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_onnx_matmul_names_map_back_transposed(seq_files):
    onnx_info = inspect(seq_files["onnx"])
    generated = [t.name for t in onnx_info.tensors if t.name.startswith("onnx::MatMul_")]
    assert len(generated) == 2, [t.name for t in onnx_info.tensors]  # what the exporter wrote
    m = map_names(inspect(seq_files["safetensors"]), onnx_info)
    got = {p.a: p for p in m.pairs}
    for name, shape in (("0.weight", (8, 4)), ("2.weight", (3, 8))):
        pair = got[name]
        assert pair.b in generated and pair.how == "value-transposed" and pair.transposed
        assert pair.a_shape == shape and pair.b_shape == shape[::-1]
    assert got["0.bias"].how == "exact" and not got["0.bias"].transposed
    assert m.unmatched_a == [] and m.counted_unmatched == ([], [])


def test_no_values_leaves_generated_names_unpaired(seq_files):
    m = map_names(inspect(seq_files["safetensors"]), inspect(seq_files["onnx"]), by_value=False)
    assert {t.name for t in m.unmatched_a} == {"0.weight", "2.weight"}


def test_gguf_llama_names(llama_gguf_pair):
    hf, gg, sd = llama_gguf_pair
    m = map_names(inspect(hf), inspect(gg))
    got = pairs_of(m)
    assert got["model.layers.0.mlp.up_proj.weight"] == ("blk.0.ffn_up.weight", "gguf")
    assert got["model.embed_tokens.weight"] == ("token_embd.weight", "gguf")
    assert len(got) == len(sd) and not m.unmatched_a and not m.unmatched_b
    q = next(p for p in m.pairs if p.b == "blk.0.attn_q.weight")
    k = next(p for p in m.pairs if p.b == "blk.0.attn_k.weight")
    assert (q.transform, q.extra["n_head"]) == ("llama-rope-unpermute", 4)
    assert (k.transform, k.extra["n_head"]) == ("llama-rope-unpermute", 2)


def test_gguf_bert_from_llama_cpp_corpus():
    """A real llama.cpp conversion: names come from the gguf package's table (bert)."""
    hf = inspect(corpus_path("hf_dir/tiny-bert-safetensors"))
    gg = inspect(corpus_path("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf"))
    m = map_names(hf, gg, by_value=False)
    got = pairs_of(m)
    assert got["embeddings.word_embeddings.weight"] == ("token_embd.weight", "gguf")
    assert got["encoder.layer.1.attention.self.query.weight"] == ("blk.1.attn_q.weight", "gguf")
    assert len(m.pairs) == 37 and not m.unmatched_b  # every GGUF tensor found its HF name
    assert {t.name for t in m.unmatched_a} == {"pooler.dense.weight", "pooler.dense.bias"}


def test_value_match_bfloat16_against_float32_and_tied_weights():
    import ml_dtypes

    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 8  # exact in bfloat16
    a = memory_model(
        {"embed.weight": w, "lm_head.weight": w.copy(), "norm": np.array([1.5, 2.0], np.float32)}
    )
    b = memory_model(
        {"val_1": w.astype(ml_dtypes.bfloat16), "val_2": np.array([1.5, 2], np.float32)}, fmt="onnx"
    )
    m = map_names(a, b)
    got = {p.a: p for p in m.pairs}
    assert (got["embed.weight"].b, got["embed.weight"].how) == ("val_1", "value")
    assert got["lm_head.weight"].b == "val_1" and got["lm_head.weight"].extra == {"shared": True}
    assert got["norm"].b == "val_2"
    assert not m.unmatched_a and not m.unmatched_b


def test_prefix_needs_matching_sizes():
    a = memory_model({"fc.weight": np.zeros((2, 2), np.float32)})
    b = memory_model({"model.fc.weight": np.zeros((3, 2), np.float32)})
    m = map_names(a, b, by_value=False)
    assert m.pairs == [] and len(m.unmatched_a) == 1


def test_helpers():
    assert strip_wrappers("module._orig_mod.module.fc.weight") == "fc.weight"
    assert strip_wrappers("model.fc") == "model.fc"
    x = np.array([1.0, 2.5], np.float32)
    assert content_digest(x) == content_digest(x.astype(np.float16))
    assert content_digest(x) != content_digest(x.astype(np.float64))
    assert content_digest(np.array([1, 2], np.int64)) != content_digest(np.array([1, 2], np.int32))


def test_cli_map_json_and_exit_codes(seq_files):
    code, out, err = run_cli("map", seq_files["safetensors"], seq_files["onnx"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_pairs"] == 4 and doc["how"] == {"exact": 2, "value-transposed": 2}
    weight = next(p for p in doc["pairs"] if p["a"] == "2.weight")
    assert weight["b"].startswith("onnx::MatMul_") and weight["transposed"] is True
    assert weight["a_shape"] == [3, 8] and weight["b_shape"] == [8, 3]
    code, out, err = run_cli("map", seq_files["safetensors"], seq_files["extra"])
    assert code == 1 and "3.weight" in out and "only in B" in out
    code, out, err = run_cli("map", seq_files["safetensors"], seq_files["module"])
    assert code == 0 and "module.0.weight" in out and "prefix" in out


def test_cli_map_bad_input(tmp_path, seq_files):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a model at all" * 10)
    code, out, err = run_cli("map", garbage, seq_files["safetensors"])
    assert code == 2 and err.count("\n") == 1 and "not a model file" in err
    code, out, err = run_cli("map", tmp_path / "missing.pt", seq_files["safetensors"])
    assert code == 2 and err.startswith("keishiki: error:") and "Traceback" not in err


def test_constant_node_weight_paired_by_value(tmp_path):
    """A weight stored as a Constant node (as exporters do for large models, whose values go
    to ``Constant_<N>_attr__value`` files) pairs by value, transposed."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    w = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    save_file({"fc.weight": w}, str(tmp_path / "fc.safetensors"))
    const = helper.make_node(
        "Constant",
        [],
        ["c"],
        name="Constant_5",
        value=numpy_helper.from_array(np.ascontiguousarray(w.T)),
    )
    graph = helper.make_graph(
        [const, helper.make_node("MatMul", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "fc.onnx"))
    m = map_names(inspect(tmp_path / "fc.safetensors"), inspect(tmp_path / "fc.onnx"))
    assert [(p.a, p.how, p.transposed) for p in m.pairs] == [
        ("fc.weight", "value-transposed", True)
    ]


@pytest.mark.slow
def test_dynamo_exporter_val_names(tmp_path, seq_state_dict):
    """torch.onnx.export(dynamo=True) optimizes weights into ``val_<N>`` initializers."""
    import warnings

    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from safetensors.numpy import save_file

    model, sd = seq_state_dict
    save_file(sd, str(tmp_path / "seq.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 2, 4),), str(tmp_path / "seq.onnx"), dynamo=True, verbose=False
        )
    m = map_names(inspect(tmp_path / "seq.safetensors"), inspect(tmp_path / "seq.onnx"))
    weights = {p.a: p for p in m.pairs if p.a.endswith("weight")}
    assert all(re.fullmatch(r"val_\d+", p.b) for p in weights.values()), weights
    assert all(p.how == "value-transposed" for p in weights.values())
    assert not m.unmatched_a


def test_merged_equal_tensors_share_one_named_tensor():
    """Exporters merge equal tensors (all-ones norms): the one left keeps one name."""
    ones = np.ones(4, np.float32)
    a = memory_model(
        {
            "l0.norm.weight": ones,
            "l1.norm.weight": ones.copy(),
            "l1.fc.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
        }
    )
    b = memory_model(
        {
            "l0.norm.weight": ones.copy(),
            "l1.fc.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
        },
        fmt="onnx",
    )
    m = map_names(a, b)
    got = {p.a: p for p in m.pairs}
    assert got["l1.norm.weight"].b == "l0.norm.weight"
    assert (got["l1.norm.weight"].how, got["l1.norm.weight"].extra) == ("value", {"shared": True})
    assert not m.unmatched_a and not m.unmatched_b


@pytest.mark.slow
def test_llama_export_matmul_names_back_to_hf_names(tiny_llama, tmp_path):
    """The mission's example: a plain TorchScript-exporter ONNX file of a Llama (constant
    folding on) names its MatMul weights ``onnx::MatMul_<N>``; they map back to
    ``model.layers.0.mlp.up_proj.weight`` & co., transposed."""
    import warnings

    torch = pytest.importorskip("torch")
    from keishiki._convert.onnx_export import load_causal_lm

    class Logits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids, mask, pos):
            return self.lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                return_dict=False,
            )[0]

    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(load_causal_lm(tiny_llama)),
            (ids, torch.ones_like(ids), torch.arange(3)[None]),
            str(tmp_path / "plain.onnx"),
            dynamo=False,
            do_constant_folding=True,
        )
    hf = inspect(tiny_llama)
    m = map_names(hf, inspect(tmp_path / "plain.onnx"))
    got = {p.a: p for p in m.pairs}
    up = got["model.layers.0.mlp.up_proj.weight"]
    assert re.fullmatch(r"onnx::MatMul_\d+", up.b) and up.how == "value-transposed"
    assert up.transposed and up.b_shape == up.a_shape[::-1]
    linear = [n for n in got if n.endswith("_proj.weight")]
    assert len(linear) == 2 * 7 and all(got[n].transposed for n in linear)
    assert m.counted_unmatched == ([], [])
    assert len(m.pairs) == hf.n_tensors


def test_flax_names_pair_by_value_and_name_similarity():
    """The corpus' Flax msgpack holds the same BERT weights as its safetensors twin, under
    Flax names (``…/kernel`` transposed, ``…/scale``, ``…/embedding``); the many all-zero
    biases tie on value and are told apart by their names."""
    hf = inspect(corpus_path("hf_dir/tiny-bert-safetensors"))
    flax = inspect(corpus_path("hf_dir/tiny-bert-flax"))
    m = map_names(hf, flax)
    assert len(m.pairs) == 39 and not m.unmatched_a and not m.unmatched_b
    assert m.how_counts() == {"value": 26, "value-transposed": 13}
    for p in m.pairs:
        assert not p.extra.get("ambiguous")
        stem = p.a.rsplit(".", 1)[0].replace(".", "/")
        assert p.b.rsplit("/", 1)[0] == stem, (p.a, p.b)
        assert p.transposed == p.b.endswith("/kernel")


def test_equal_values_are_told_apart_by_names():
    zeros = np.zeros(3, np.float32)
    a = memory_model({"enc.q.bias": zeros, "enc.k.bias": zeros.copy(), "enc.v.bias": zeros.copy()})
    b = memory_model(
        {"enc/v/bias": zeros.copy(), "enc/q/bias": zeros.copy(), "enc/k/bias": zeros.copy()},
        fmt="flax-msgpack",
    )
    m = map_names(a, b)
    assert {p.a: p.b for p in m.pairs} == {
        "enc.q.bias": "enc/q/bias",
        "enc.k.bias": "enc/k/bias",
        "enc.v.bias": "enc/v/bias",
    }


@pytest.fixture(scope="module")
def bn_folded(tmp_path_factory):
    """A conv net with trained-looking BatchNorms (random statistics, one eps=1e-3, one
    conv without bias), saved as a state_dict and exported by torch.onnx's TorchScript
    exporter, which folds each BatchNorm into the conv before it (onnx::Conv_N)."""
    import warnings

    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 1, bias=False),
        torch.nn.BatchNorm2d(6, eps=1e-3),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 6 * 6, 2),
    ).eval()
    for bn in (net[1], net[4]):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n))
        bn.running_var.copy_(torch.rand(n) * 3 + 0.2)
        bn.weight.data.copy_(torch.randn(n))
        bn.bias.data.copy_(torch.randn(n))
    folder = tmp_path_factory.mktemp("bn")
    torch.save(net.state_dict(), folder / "net.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, 8, 8),),
            str(folder / "net.onnx"),
            dynamo=False,
            do_constant_folding=True,
        )
    return folder


def test_batchnorm_folded_into_conv_is_traced_back(bn_folded):
    import keishiki

    a, b = inspect(bn_folded / "net.pt"), inspect(bn_folded / "net.onnx")
    m = map_names(a, b)
    got = {p.a: p for p in m.pairs}
    assert {n: got[n].how for n in got} == {
        "0.weight": "folded",
        "0.bias": "folded",
        "3.weight": "folded",
        "4.bias": "folded",  # conv 3 has no bias: the fold's bias comes from BN 4's
        "6.weight": "exact",
        "6.bias": "exact",
    }
    assert all(got[n].b.startswith("onnx::Conv_") for n in ("0.weight", "0.bias", "3.weight"))
    assert got["3.weight"].extra["fold"]["eps"] == 1e-3
    assert got["0.weight"].extra["fold"]["eps"] == 1e-5
    # the BatchNorms' own tensors are accounted for, not missing
    assert m.counted_unmatched == ([], [])
    assert m.folded_into["1.running_var"] == got["0.weight"].b
    assert "4.num_batches_tracked" in m.folded_into
    # the fold is what pairs them: the raw conv weight is far from the folded one
    raw = np.asarray(a.load_tensor(a.tensor("0.weight")), np.float64)
    folded = np.asarray(b.load_tensor(b.tensor(got["0.weight"].b)), np.float64)
    assert np.max(np.abs(raw - folded)) > 1e-2
    report = keishiki.compare(a, b)
    assert report.verdict == "within tolerance" and report.exit_code == 0
    assert all(d.max_rel_diff < 1e-5 for d in report.tensors if d.pair.how == "folded")
    code, out, _err = run_cli("map", bn_folded / "net.pt", bn_folded / "net.onnx", "--json")
    assert code == 0
    notes = {u["name"]: u.get("not_counted") for u in json.loads(out)["unmatched_a"]}
    assert notes["1.weight"] == f"BatchNorm folded into {got['0.weight'].b}"
