"""`keishiki compare` against a quantized model: the quantization-aware tolerance."""

from __future__ import annotations

import pytest

from .quant_fixtures import llama256, llama256_q8  # noqa: F401  (fixtures)

pytest.importorskip("gguf")


def test_q8_0_weights_within_tolerance_by_default(llama256, llama256_q8):
    import keishiki

    report = keishiki.compare(llama256, llama256_q8)
    assert report.verdict == "within tolerance" and report.exit_code == 0
    quantized = [d for d in report.tensors if d.pair.b_dtype == "q8_0"]
    assert len(quantized) == 16  # 7 projections x 2 layers, embedding, lm_head
    assert all("Q8_0: relative RMS error" in d.notes[-1] for d in quantized)
    # an explicit tolerance is the user's: no quantization-aware one then
    assert keishiki.compare(llama256, llama256_q8, atol=1e-9).verdict == "different"


@pytest.mark.slow
def test_outputs_judged_by_kl_and_agreement(llama256, llama256_q8, tmp_path, monkeypatch):
    import keishiki

    monkeypatch.setenv("KEISHIKI_CACHE", str(tmp_path / "cache"))
    report = keishiki.compare(llama256, llama256_q8, outputs=True, max_tokens=8)
    quantized = report.outputs["quantized"]
    assert quantized["quant"] == "Q8_0" and quantized["kl_mean_allowed"] == 0.005
    assert quantized["n_positions"] == 8
    assert report.outputs["passed"] == quantized["passed"] is True
    assert "quantized (Q8_0): KL mean" in report.outputs["summary"]
