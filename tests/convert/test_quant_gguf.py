"""GGUF quantization end to end: every --quant type written, read back by gguf-py, run
against the source, and run by keishiki; the verification report; bad values refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

from .quant_fixtures import llama256  # noqa: F401  (a fixture)

gguf = pytest.importorskip("gguf")

QUALITY_KEYS = {
    "max_abs_diff",
    "mean_abs_diff",
    "kl_mean",
    "kl_max",
    "top1_agreement",
    "top1_agreement_confident",
    "n_confident",
    "kl_mean_allowed",
    "top1_min",
    "n_positions",
    "passed",
    "quant",
}
# the types each --quant writes for the 2-layer model (rows of 256 and 512: whole blocks)
TYPES = {
    "q8_0": {"Q8_0"},
    "q4_0": {"Q4_0", "Q6_K"},
    "q4_1": {"Q4_1", "Q6_K"},
    "q5_0": {"Q5_0", "Q6_K"},
    "q5_1": {"Q5_1", "Q6_K"},
    "q2_K": {"Q2_K", "Q3_K", "Q6_K"},
    "q3_K_M": {"Q3_K", "Q4_K", "Q5_K", "Q6_K"},
    "q4_K_S": {"Q4_K", "Q5_K", "Q6_K"},
    "q4_K_M": {"Q4_K", "Q6_K"},
    "q5_K_M": {"Q5_K", "Q6_K"},
    "q6_K": {"Q6_K"},
}


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.slow
@pytest.mark.parametrize("quant", sorted(TYPES))
def test_every_type_written_read_back_and_judged(llama256, tmp_path, quant):
    """gguf-py reads every tensor back (bytes and error bound); the run against the source
    reports its metrics and its verdict follows the type's tolerance row."""
    import keishiki
    from keishiki._convert.quant_verify import tolerance
    from keishiki.errors import Mismatch

    out = tmp_path / f"m-{quant}.gguf"
    try:
        report = keishiki.convert(llama256, out, to="gguf", quant=quant, quiet=True).to_dict()
        written = out
    except Mismatch as exc:  # a lossy type may fail its tolerance on a random model
        report, written = exc.report, tmp_path / f"m-{quant}.gguf.unverified"
    verify = report["steps"][0]["verify"]
    assert verify["n_mismatched"] == 0 and verify["n_compared"] == 21
    assert set(_types(written).values()) - {"F32"} == TYPES[quant]
    reader = gguf.GGUFReader(str(written))
    assert (
        reader.fields["general.file_type"].contents()
        == gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"]
    )
    for t in reader.tensors:  # every tensor dequantizes, finite
        assert np.isfinite(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)).all()
    quality = verify["quality"]
    assert QUALITY_KEYS <= set(quality)
    tol = tolerance(quant)
    sure = quality["top1_agreement_confident"]
    assert quality["passed"] == (
        quality["kl_mean"] <= tol["kl_mean"] and (sure is None or sure >= tol["top1"])
    )
    assert verify["passed"] == quality["passed"]
    assert 0 < quality["mean_abs_diff"] <= quality["max_abs_diff"]
    if quant != "q8_0":
        assert verify["quant_rel_rmse"]["Q6_K"] < 0.03


@pytest.mark.slow
def test_q4_k_m_convert_then_run(llama256, tmp_path, monkeypatch):
    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tiny-q4_K_M.gguf"
    code, stdout, err = run_cli(
        "convert", llama256, out, "--to", "gguf", "--quant", "q4_K_M", "--json", "--quiet"
    )
    assert code == 0, err
    step = json.loads(stdout)["steps"][0]
    assert step["details"]["quant"] == "q4_K_M"
    assert step["details"]["types"] == ["F32", "Q4_K", "Q6_K"]
    quality = step["verify"]["quality"]
    assert quality["passed"] and quality["kl_mean"] < 0.01 and quality["n_positions"] == 64
    types = _types(out)
    # llama.cpp's q4_K_M for 2 layers: use_more_bits(1, 2) lifts layer 1's attn_v/ffn_down
    assert (types["blk.0.attn_v.weight"], types["blk.1.attn_v.weight"]) == ("Q4_K", "Q6_K")
    assert (types["blk.0.ffn_down.weight"], types["blk.1.ffn_down.weight"]) == ("Q4_K", "Q6_K")
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    code, stdout, err = run_cli("run", out, "-p", "Hello", "-n", "4", "--temperature", "0")
    assert code == 0, err
    assert stdout.strip()


def test_human_report_prints_the_quality_line(llama256, tmp_path):
    code, stdout, err = run_cli(
        "convert", llama256, tmp_path / "m.gguf", "--to", "gguf", "--quant", "Q8_0", "--quiet"
    )
    assert code == 0, err
    assert "q8_0 vs original on 64 positions: KL mean" in stdout


def test_safetensors_to_gguf_quantized_keeps_names(tmp_path):
    from safetensors.numpy import save_file

    import keishiki

    rng = np.random.default_rng(0)
    save_file(
        {
            "w": rng.standard_normal((8, 512)).astype(np.float32),
            "b": np.zeros(8, np.float32),
            "odd": np.ones((4, 40), np.float32),
        },
        str(tmp_path / "t.safetensors"),
    )
    report = keishiki.convert(
        tmp_path / "t.safetensors", tmp_path / "t.gguf", to="gguf", quant="q4_K_M", quiet=True
    )
    assert report.passed
    assert _types(tmp_path / "t.gguf") == {"w": "Q4_K", "b": "F32", "odd": "F16"}


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--to", "gguf", "--quant", "q4_K_X"],
            "--quant 'q4_K_X' for --to gguf: use one of f32, f16, bf16, q8_0, q4_0",
        ),
        (["--to", "gguf", "--quant", "int8"], "q4_K_M, q5_K, q5_K_M, q6_K"),
        (["--to", "onnx", "--quant", "q4_K_M"], "for --to onnx: use one of int8, int4"),
        (["--to", "safetensors", "--quant", "q8_0"], "--quant applies to --to gguf / onnx only"),
        (["--to", "onnx", "--quant", "int8", "--block-size", "32"], "applies to --quant int4"),
    ],
)
def test_bad_quant_one_line_exit_2(llama256, tmp_path, args, message):
    code, stdout, err = run_cli("convert", llama256, tmp_path / "x", *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("keishiki: error: ")
    assert message in err
    assert not (tmp_path / "x").exists()


def test_quality_metrics_values():
    from keishiki._convert.quant_verify import judge, logit_metrics

    ref = [np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))]
    got = [np.log(np.array([[0.25, 0.75], [0.9, 0.1]]))]
    m = logit_metrics(ref, got)
    kl0 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert m["kl_mean"] == pytest.approx(kl0 / 2)
    assert m["kl_max"] == pytest.approx(kl0)
    assert m["top1_agreement"] == 0.5  # a 0.5/0.5 tie broken by argmax, then 0.25 < 0.75
    # ... where the original was not confident: only the 0.9 position counts
    assert (m["n_confident"], m["top1_agreement_confident"]) == (1, 1.0)
    assert m["max_abs_diff"] == pytest.approx(np.log(2))  # log 0.25 - log 0.5
    assert judge(m, "q4_K_M")["passed"] is True  # KL mean 0.072 <= 0.1
    strict = judge(m, "q8_0")
    assert strict["passed"] is False and strict["kl_mean_allowed"] == 0.005
    assert strict["reason"] == "q8_0: mean KL divergence 0.0719 over 0.005"


def test_a_confident_flip_fails_even_with_small_kl():
    from keishiki._convert.quant_verify import judge, logit_metrics

    ref = [np.array([[3.0, 0.0, 0.0]] * 9 + [[0.1, 0.0, 0.0]])]  # p(top) 0.87 at 9 positions
    got = [np.array([[3.0, 0.0, 0.0]] * 8 + [[0.0, 3.0, 0.0], [0.0, 0.1, 0.0]])]
    m = logit_metrics(ref, got)
    assert (m["n_confident"], m["top1_agreement_confident"]) == (9, 8 / 9)
    verdict = judge(m, "q8_0")
    assert not verdict["passed"]
    assert (
        "greedy-token agreement 88.9% where the original is confident (9 positions) "
        "under 95%" in verdict["reason"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("quant", sorted(TYPES))
def test_llama_cpp_runs_the_quantized_gguf(llama256, tmp_path, quant):
    """llama.cpp itself (llama-cpp-python, when installed: no PyPI wheel, a ~10 minute
    build, so usually skipped) loads the file and its logits match the model dequantized by
    gguf-py and run by transformers within 3% of the largest logit, whatever the type: it
    reads the bits as gguf-py does.  (Measured with llama-cpp-python 0.3.36: 1.3-1.7% for
    every type, llama.cpp's own activation rounding; the quantization error itself is 1.3%
    at q8_0 and 54% at q2_K on this random model.)"""
    llama_cpp = pytest.importorskip("llama_cpp")
    import keishiki
    from keishiki._convert.quant_verify import prompts

    out = tmp_path / f"m-{quant}.gguf"
    keishiki.convert(llama256, out, to="gguf", quant=quant, quiet=True, verify=False)
    hf = tmp_path / "dequantized"
    keishiki.convert(out, hf, to="hf-model", quiet=True)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = prompts(model.config.vocab_size)[0]
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids)).logits[0].numpy()
    llm = llama_cpp.Llama(
        model_path=str(out), logits_all=True, n_ctx=64, n_threads=2, verbose=False
    )
    llm.eval(ids[0].tolist())
    got = np.asarray(llm.scores[: ids.shape[1]])
    llm.close()
    np.testing.assert_allclose(got, expected, atol=0.03 * np.abs(expected).max(), rtol=0)
