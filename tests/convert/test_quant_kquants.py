"""The numpy k-quant quantizer and gguf-py's plain types: bytes, round-trip error, layout."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from keishiki._convert import gguf_quant, kquants  # noqa: E402

from .quant_reference import REFERENCE  # noqa: E402

# llama.cpp's own bounds for its total quantization error on this data
# (tests/test-quantize-fns.cpp: generate_data(0.0, 32*128) and sqrt(sum d^2) / n)
LLAMA_CPP_BOUND = {
    "Q2_K": 0.0075,
    "Q3_K": 0.0040,
    "Q4_K": 0.002,
    "Q5_K": 0.002,
    "Q6_K": 0.002,
    "Q4_0": 0.002,
    "Q4_1": 0.002,
    "Q5_0": 0.002,
    "Q5_1": 0.002,
    "Q8_0": 0.002,
}
# relative RMS error on N(0, 1) weights, measured with this quantizer (docs/quantize.md);
# each row is the measured value rounded up by ~3%
GAUSSIAN_REL_RMSE = {
    "Q2_K": 0.306,
    "Q3_K": 0.156,
    "Q4_K": 0.074,
    "Q5_K": 0.0374,
    "Q6_K": 0.0184,
    "Q4_0": 0.0888,
    "Q4_1": 0.0807,
    "Q5_0": 0.0442,
    "Q5_1": 0.0392,
    "Q8_0": 0.00555,
}
ALL_TYPES = sorted(LLAMA_CPP_BOUND)


def _roundtrip(x: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    q = gguf_quant.quantize(x, qtype)
    return q, gguf.quants.dequantize(q, getattr(gguf.GGMLQuantizationType, qtype))


@pytest.fixture(scope="module")
def blocks() -> np.ndarray:
    """Gaussian, small-offset, all-zero, llama.cpp's cosine and heavy-tailed blocks."""
    rng = np.random.default_rng(0)
    return np.concatenate(
        [
            rng.standard_normal((5, 256)),
            rng.standard_normal((2, 256)) * 0.01 + 0.02,
            np.zeros((1, 256)),
            (0.1 + 2 * np.cos(np.arange(512))).reshape(2, 256),
            rng.standard_t(3, (3, 256)),
            -np.abs(rng.standard_normal((1, 256))),
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("qtype", kquants.TYPES)
def test_same_bytes_as_a_transcription_of_llama_cpp(blocks, qtype):
    """Every block byte-identical to the line-by-line float32 transcription of
    quantize_row_<type>_ref (tests/convert/quant_reference.py)."""
    ours = kquants.quantize(blocks, qtype).reshape(len(blocks), -1)
    ref = np.stack([np.frombuffer(REFERENCE[qtype](b), np.uint8) for b in blocks])
    assert (
        ours.shape[1]
        == kquants.BLOCK_BYTES[qtype]
        == gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)][1]
    )
    assert [i for i in range(len(blocks)) if not np.array_equal(ours[i], ref[i])] == []


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_error_within_llama_cpp_bound(qtype):
    n = 32 * 128
    x = (0.1 + 2 * np.cos(np.arange(n, dtype=np.float32))).astype(np.float32)
    q, back = _roundtrip(x.reshape(1, -1), qtype)
    assert q.dtype == np.uint8 and back.shape == (1, n)
    error = float(np.sqrt(((x.astype(np.float64) - back.reshape(-1)) ** 2).sum()) / n)
    assert error < LLAMA_CPP_BOUND[qtype]


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_gaussian_error_and_shape(qtype):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    q, back = _roundtrip(w, qtype)
    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    assert q.shape == (64, 512 // block * size)  # what GGUFWriter takes for the tensor
    err = gguf_quant.weight_error(w, back.reshape(w.shape))
    assert err["rel_rmse"] <= GAUSSIAN_REL_RMSE[qtype]
    assert err["rel_rmse"] <= gguf_quant.WEIGHT_REL_RMSE[qtype] / 1.5  # the read-back bound


@pytest.mark.parametrize("qtype", kquants.TYPES)
@pytest.mark.parametrize("case", ["zeros", "constant", "one-spike", "negative", "tiny"])
def test_edge_blocks_dequantize_sensibly(qtype, case):
    x = {
        "zeros": np.zeros(256),
        "constant": np.full(256, 0.5),
        "one-spike": np.eye(1, 256, 7)[0] * 100,
        "negative": -np.linspace(0.1, 3, 256),
        "tiny": np.full(256, 1e-30),
    }[case].astype(np.float32)[None]
    _, back = _roundtrip(x, qtype)
    assert np.isfinite(back).all()
    assert np.abs(back - x).max() <= np.abs(x).max() * 0.55 + 1e-6


def test_chunks_do_not_change_the_bytes(monkeypatch):
    x = np.random.default_rng(2).standard_normal((10, 256)).astype(np.float32)
    whole = kquants.quantize(x, "Q4_K")
    monkeypatch.setattr(kquants, "CHUNK_BLOCKS", 3)
    assert np.array_equal(kquants.quantize(x, "Q4_K"), whole)


@pytest.mark.parametrize("shape, message", [((3, 100), "multiple of 256"), ((), "multiple of 256")])
def test_refuses_rows_that_are_not_whole_blocks(shape, message):
    with pytest.raises(ValueError, match=message):
        kquants.quantize(np.zeros(shape, np.float32), "Q4_K")


def test_unknown_type():
    with pytest.raises(ValueError, match="no k-quant quantizer for 'Q7_K'"):
        kquants.quantize(np.zeros((1, 256), np.float32), "Q7_K")
