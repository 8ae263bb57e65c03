"""GGUF reader: corpus facts, values against gguf.GGUFReader, hostile headers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from keishiki import inspect
from keishiki.errors import CorruptFile
from keishiki.formats import gguf as kg
from keishiki.formats import identify
from tests.conftest import FACTS, corpus_path, count_calls, facts_where, run_cli

gguf = pytest.importorskip("gguf")

CASES = facts_where(lambda f: f.get("format") == "gguf")


@pytest.mark.parametrize("rel", CASES)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    g = info.gguf
    assert info.format == "gguf" and info.format_version == str(facts["version"])
    assert g["version"] == facts["version"] and g["kv_count"] == facts["kv_count"]
    assert g["tensor_count"] == info.n_tensors == facts["tensor_count"]
    assert list(g["kv"]) == facts["metadata_keys"]
    for key, want in facts["metadata_values"].items():
        got = g["kv"][key]
        if isinstance(want, str) and want.startswith("<array len "):
            length = got["length"] if isinstance(got, dict) else len(got)
            assert length == int(want[len("<array len ") : -1]), key
        else:
            assert got == want, key
    assert g["tensor_data_offset"] == facts["data_offset"]
    assert g["ggml_types"] == facts["tensor_types"]
    assert g["n_vocab_tokens"] == facts.get("n_vocab_tokens")
    assert g["architecture"] == facts.get("general.architecture")
    first = [
        f"{t.name}:{t.extra['ggml_type']}{t.extra['gguf_shape']}"
        for t in info.tensors[: len(facts["tensors_first"])]
    ]
    assert first == facts["tensors_first"]
    for t in info.tensors:  # row-major shapes: GGUF's ne[0] comes last
        assert list(t.shape) == list(reversed(t.extra["gguf_shape"]))


@pytest.mark.parametrize("rel", [r for r in CASES if FACTS[r]["tensor_count"]])
def test_corpus_values_match_gguf_reader(rel):
    path = corpus_path(rel)
    ref = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    info = inspect(path)
    for lazy in info.lazy_tensors():
        got = lazy.load()
        assert got.dtype == ref[lazy.name].dtype and got.shape == ref[lazy.name].shape
        np.testing.assert_array_equal(got, ref[lazy.name])


def test_type_table_matches_gguf_constants():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for qtype, (block, size) in GGML_QUANT_SIZES.items():
        assert kg.GGML_TYPES[qtype.value] == (qtype.name, block, size)
    assert len(kg.GGML_TYPES) >= len(GGMLQuantizationType) - 3  # removed Q4_2/Q4_3... ids


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """F32, F16, BF16-free set, I32 and Q8_0 tensors with every kind of metadata value."""
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    arrays = {
        "tok_embd.weight": rng.standard_normal((10, 64)).astype(np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((64, 64)).astype(np.float16),
        "ids": np.arange(12, dtype=np.int32).reshape(3, 4),
    }
    q_source = rng.standard_normal((4, 64)).astype(np.float32)
    q8 = quantize(q_source, gguf.GGMLQuantizationType.Q8_0)
    path = tmp_path_factory.mktemp("gguf") / "model.weights"  # extension must not matter
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("llama.flag", True)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])
    w.add_array("small.ints", [1, 2, 3])
    w.add_int64("big.neg", -(2**40))
    for name, arr in arrays.items():
        w.add_tensor(name, arr)
    w.add_tensor("blk.0.q8", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, arrays, q8


def test_written_file(written):
    path, arrays, q8 = written
    assert identify(path).format == "gguf"
    info = inspect(path)
    kv = info.gguf["kv"]
    assert info.gguf["architecture"] == "llama" and info.metadata["general.name"] == "tiny"
    assert kv["llama.block_count"] == 1 and kv["llama.flag"] is True
    assert kv["small.ints"] == [1, 2, 3] and kv["big.neg"] == -(2**40)
    assert kv["tokenizer.ggml.tokens"] == {
        "type": "string",
        "length": 100,
        "first": ["t0", "t1", "t2", "t3", "t4"],
    }
    assert info.gguf["n_vocab_tokens"] == 100
    dt = {t.name: (t.dtype, t.shape) for t in info.tensors}
    assert dt["tok_embd.weight"] == ("float32", (10, 64))
    assert dt["blk.0.attn_q.weight"] == ("float16", (64, 64))
    assert dt["ids"] == ("int32", (3, 4))
    assert dt["blk.0.q8"] == ("q8_0", (4, 64))
    assert info.tensor("blk.0.q8").nbytes == 4 * 2 * 34  # two 32-element blocks per row
    for name, arr in arrays.items():
        np.testing.assert_array_equal(info.tensor_loader(info.tensor(name)), arr)
    ref = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    raw = info.tensor_loader(info.tensor("blk.0.q8"))
    assert raw.dtype == np.uint8 and raw.shape == (4, 68)
    np.testing.assert_array_equal(raw, ref["blk.0.q8"])
    np.testing.assert_array_equal(raw, q8)


def _header(version=3, tensor_count=0, kv_count=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count)


def _string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


@pytest.mark.parametrize(
    "blob, message",
    [
        (_header(tensor_count=2**40) + b"\0" * 64, "cannot fit"),
        (_header(kv_count=2**50) + b"\0" * 64, "cannot fit"),
        (_header(kv_count=1) + struct.pack("<Q", 2**60) + b"key" + b"\0" * 40, "length"),
        (
            _header(kv_count=1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2**50) + b"\0" * 40,
            "array",
        ),
        (
            _header(kv_count=1) + _string(b"k") + struct.pack("<IIQ", 9, 4, 2**50) + b"\0" * 40,
            "array",
        ),
        (_header(kv_count=1) + _string(b"k") + struct.pack("<I", 77) + b"\0" * 40, "value type"),
        (_header(version=1) + b"\0" * 40, "version 1"),
        (_header(version=7) + b"\0" * 40, "unknown GGUF version"),
        (_header(tensor_count=1) + _string(b"t") + struct.pack("<I", 9) + b"\0" * 80, "dims"),
        # names given twice: gguf-py and llama.cpp refuse them (which one would count?)
        (
            _header(kv_count=2) + (_string(b"k") + struct.pack("<IB", 0, 7)) * 2 + b"\0" * 40,
            "metadata key 'k' given twice",
        ),
        (
            _header(tensor_count=2)
            + (_string(b"x") + struct.pack("<IQIQ", 1, 1, 0, 0)) * 2
            + b"\0" * 64,
            "tensor 'x' given twice",
        ),
        # a 0-dim q4_0 tensor is one value, not a whole 32-value block (read as 0 bytes)
        (
            _header(tensor_count=1) + _string(b"s") + struct.pack("<IIQ", 0, 2, 0) + b"\0" * 64,
            "row length 1 is not a multiple of the Q4_0 block size 32",
        ),
    ],
)
def test_hostile_headers_fail_fast(tmp_path, blob, message):
    p = tmp_path / "bad.gguf"
    p.write_bytes(blob)
    with pytest.raises(CorruptFile, match=message):
        inspect(p)
    with count_calls() as work, pytest.raises(CorruptFile):  # warm: no first-time imports
        inspect(p)
    assert work.calls < 10_000  # about 400: no loop over the header's 2**40 / 2**50 counts
    code, _out, err = run_cli("info", p)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    # convert runs keishiki's bounded reader before gguf.GGUFReader, which builds a numpy
    # view per array element of whatever length the file claims
    code, _out, err = run_cli("convert", p, tmp_path / "o.safetensors", "--to", "safetensors")
    assert code == 2 and err.count("\n") == 1 and "corrupt or truncated" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_truncated_and_bad_offsets(written, tmp_path):
    path, _arrays, _q8 = written
    blob = path.read_bytes()
    info = inspect(path)
    data_end = max(t.data_offset + t.nbytes for t in info.tensors)
    for cut in (30, info.gguf["tensor_data_offset"] - 5, data_end - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(blob[:cut])
        with pytest.raises(CorruptFile):
            inspect(p)


def test_cli_json(written):
    path, _a, _q = written
    code, out, _ = run_cli("info", path, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "gguf" and data["gguf"]["version"] == 3
    assert data["dtypes"] == {"float32": 1, "float16": 1, "int32": 1, "q8_0": 1}
    code, out, _ = run_cli("tensors", path, "--json")
    rows = {t["name"]: t for t in json.loads(out)["tensors"]}
    assert rows["blk.0.q8"]["gguf_shape"] == [64, 4] and rows["blk.0.q8"]["shape"] == [4, 64]


def test_inspect_loads_neither_gguf_nor_torch():
    import subprocess
    import sys

    path = corpus_path("gguf/llama.cpp-convert/tiny-bert-q8_0.gguf")
    code = (
        f"import sys, keishiki; keishiki.inspect({str(path)!r}); "
        f"print([m for m in ('gguf', 'torch', 'onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mutated_files_fail_cleanly(written, tmp_path):
    """Random overwrites and truncations of a GGUF: a model or a CorruptFile, in bounded work."""
    import random

    from keishiki.core.source import Source
    from keishiki.errors import KeishikiError

    rng = random.Random(3)
    path, _arrays, _q8 = written
    seed = path.read_bytes()
    header_end = inspect(path).gguf["tensor_data_offset"]
    for i in range(300):
        blob = bytearray(seed)
        pos = rng.randrange(header_end)
        if rng.random() < 0.8:
            blob[pos : pos + 8] = rng.getrandbits(64).to_bytes(8, "little")
        else:
            del blob[pos:]
        p = tmp_path / f"m{i}.gguf"
        p.write_bytes(bytes(blob))
        src = Source(p)
        if kg.sniff(src) is None:
            continue
        with count_calls() as work:
            try:
                info = kg.read(src, None)
                for lazy in info.lazy_tensors():
                    lazy.load()
            except KeishikiError:
                pass
        assert work.calls < 10_000, i  # at most ~950 (the whole intact file: ~970)


def test_big_endian_file(tmp_path):
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.arange(6, dtype=np.int16).reshape(2, 3),
    }
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("x.y", 7)
    w.add_array("arr", [1.5, 2.5])
    for name, arr in arrays.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = inspect(path)
    assert info.gguf["byte_order"] == "big" and info.gguf["version"] == 3
    assert info.gguf["kv"]["x.y"] == 7 and info.gguf["kv"]["arr"] == [1.5, 2.5]
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), arrays[lazy.name])
