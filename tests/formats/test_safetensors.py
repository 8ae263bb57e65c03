import json
import struct

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.tensor import LazyTensor, TensorInfo
from keishiki.errors import CorruptFile
from keishiki.formats import identify
from keishiki.formats import safetensors as st
from tests.conftest import FACTS, corpus_path, facts_where, run_cli

CASES = facts_where(lambda f: f.get("format") == "safetensors")


@pytest.mark.parametrize("rel", CASES)
def test_corpus_facts(rel):
    facts = FACTS[rel]
    info = inspect(corpus_path(rel))
    assert info.format == "safetensors"
    assert info.n_tensors == facts["tensor_count"]
    assert info.total_bytes == facts["data_bytes"]
    assert info.metadata == (facts["metadata"] or {})
    names = [f"{t.name}:{t.dtype}{list(t.shape)}" for t in info.tensors]
    expected = [e.split(":")[0] for e in facts["tensors_first"]]
    assert [n.split(":")[0] for n in names[: len(expected)]] == expected
    if "values" in facts:
        arr = info.tensor_loader(info.tensors[0])
        assert arr.tolist() == facts["values"]


def test_roundtrip_writer_matches_reference(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, -2], np.int8),
        "empty": np.zeros((0, 4), np.float16),
    }
    lazies = [
        LazyTensor(TensorInfo(k, str(v.dtype), v.shape, v.nbytes), (lambda v=v: v))
        for k, v in arrays.items()
    ]
    out = tmp_path / "w.safetensors"
    with open(out, "wb") as fh:
        st.write(fh, lazies, metadata={"format": "pt"})
    back = safetensors_numpy.load_file(out)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    info = inspect(out)
    assert info.metadata == {"format": "pt"} and info.n_parameters == 8


def _write_raw(path, header_len_field, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", header_len_field) + header + data)
    return path


def test_absurd_header_length(tmp_path):
    p = _write_raw(tmp_path / "x.safetensors", 2**63, b'{"a":1}')
    # not even sniffed as safetensors: the length cannot be right
    code, out, err = run_cli("info", p)
    assert code == 2 and "not a model file" in err and "Traceback" not in err


def test_offsets_outside_file(tmp_path):
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
    ).encode()
    p = _write_raw(tmp_path / "x.safetensors", len(header), header, b"\0" * 16)
    with pytest.raises(CorruptFile, match="outside the file"):
        inspect(p)
    code, _, err = run_cli("info", p)
    assert code == 2 and err.count("\n") == 1 and "corrupt" in err


def test_size_mismatch(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    p = _write_raw(tmp_path / "x.safetensors", len(header), header, b"\0" * 8)
    with pytest.raises(CorruptFile, match="needs 12 bytes"):
        inspect(p)


def test_identify_ignores_extension(tmp_path):
    src = corpus_path("safetensors/safetensors-samples/f.safetensors")
    renamed = tmp_path / "weights.ckpt"
    renamed.write_bytes(src.read_bytes())
    assert identify(renamed).format == "safetensors"


def test_cli_json_and_tensors(tmp_path):
    p = corpus_path("safetensors/safetensors-samples/overall.safetensors")
    code, out, _ = run_cli("info", p, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "safetensors" and data["n_tensors"] == 9
    assert data["dtypes"]["float16"] == 1 and data["n_parameters"] == 54
    code, out, _ = run_cli("tensors", p, "--json", "--filter", "[de]")
    assert [t["name"] for t in json.loads(out)["tensors"]] == ["d", "e"]


def _one_tensor_file(path, code: str, shape, nbytes: int):
    header = json.dumps({"w": {"dtype": code, "shape": shape, "data_offsets": [0, nbytes]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\x01" * nbytes)
    return path


def test_unknown_dtype_code_is_refused_as_safetensors_refuses_it(tmp_path):
    """ "F8" is no safetensors dtype; lower-cased it would have been numpy's float64 (a fuzz
    find: info said f8, loading crashed in reshape).  The safetensors library refuses the
    file, and so does every keishiki command, in one line naming the tensor and the code."""
    from safetensors import SafetensorError, safe_open

    path = _one_tensor_file(tmp_path / "w.safetensors", "F8", [6], 6)
    with pytest.raises(SafetensorError):
        safe_open(str(path), framework="np")
    with pytest.raises(CorruptFile, match="tensor 'w': unknown dtype \"F8\""):
        inspect(path)
    for args in (
        ["info", path],
        ["convert", path, tmp_path / "o.safetensors", "--to", "safetensors"],
    ):
        code, _out, err = run_cli(*args)
        assert code == 2 and 'unknown dtype "F8"' in err and err.count("\n") == 1


def test_loader_failure_becomes_corrupt_file_naming_the_tensor(tmp_path):
    """Whatever a loader trips on in lying bytes, ModelInfo.load_tensor reports CorruptFile
    with the tensor's name (the fuzz test's contract for every format)."""
    path = _one_tensor_file(tmp_path / "w.safetensors", "F32", [2], 8)
    info = inspect(path)
    import dataclasses

    # what a damaged index would declare: 3 elements in 8 bytes
    info.tensors[0] = dataclasses.replace(info.tensors[0], shape=(3,))
    with pytest.raises(CorruptFile, match="tensor 'w': ValueError: cannot reshape"):
        next(info.lazy_tensors()).load()
