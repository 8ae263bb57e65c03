"""flax-msgpack: facts.json golden values, the msgpack library as the reference for values,
flax's ext types (ndarray, scalar, complex, chunked arrays) written here, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.formats import flax_msgpack, identify
from tests.conftest import FACTS, corpus_path, run_cli

msgpack = pytest.importorskip("msgpack")

CASES = {
    "flax_msgpack/flax-0.12.8/mlp_params.msgpack": FACTS.get(
        "flax_msgpack/flax-0.12.8/mlp_params.msgpack", {}
    ),
    "hf_dir/tiny-bert-flax/flax_model.msgpack": FACTS.get("hf_dir/tiny-bert-flax", {})
    .get("weights", {})
    .get("flax_model.msgpack", {}),
}


def _reference(raw: bytes) -> dict:
    """flax.serialization.from_bytes' decoding, with msgpack and numpy only."""

    def hook(code, data):
        if code == 1:
            shape, dtype, buf = msgpack.unpackb(data)
            return np.frombuffer(buf, dtype).reshape(shape)
        if code == 3:
            dtype, buf = msgpack.unpackb(data)
            return np.frombuffer(buf, dtype)[0]
        if code == 2:
            re, im = msgpack.unpackb(data)
            return complex(re, im)
        raise ValueError(code)

    return msgpack.unpackb(raw, ext_hook=hook, strict_map_key=False)


def _get(tree, name):
    for key in name.split("/"):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("rel", sorted(CASES))
def test_corpus_facts_and_values(rel):
    facts, path = CASES[rel], corpus_path(rel)
    if not facts:
        pytest.skip("no facts for this file")
    assert identify(path).format == "flax-msgpack"
    info = inspect(path)
    assert info.details["flax-msgpack"]["top_keys"] == facts["top_keys"]
    assert info.n_tensors == facts["leaf_count"]
    assert info.n_parameters == facts["total_numel"]
    assert info.dtypes == facts["dtypes"]
    listed = [f"{t.name}:{t.dtype}{list(t.shape)}" for t in info.tensors]
    assert listed[: len(facts["leaves_first"])] == facts["leaves_first"]
    ref = _reference(path.read_bytes())
    for lazy in info.lazy_tensors():
        np.testing.assert_array_equal(lazy.load(), _get(ref, lazy.name))
        offset, nbytes = lazy.info.data_offset, lazy.info.nbytes
        assert path.read_bytes()[offset : offset + nbytes] == _get(ref, lazy.name).tobytes()


def _ndarray(arr: np.ndarray) -> "msgpack.ExtType":
    return msgpack.ExtType(1, msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes())))


def test_flax_ext_types_written_here(tmp_path):
    import ml_dtypes

    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    bf16 = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    big = np.arange(10, dtype=np.int32)
    state = {
        "params": {"dense": {"kernel": _ndarray(kernel), "bias": _ndarray(bf16)}},
        "step": msgpack.ExtType(3, msgpack.packb(("int64", np.int64(42).tobytes()))),
        "phase": msgpack.ExtType(2, msgpack.packb((1.0, -2.0))),
        "opt": {
            "mu": {
                "__msgpack_chunked_array__": True,
                "shape": [10],
                "chunks": {"0": _ndarray(big[:6]), "1": _ndarray(big[6:])},
            }
        },
    }
    p = tmp_path / "state.msgpack"
    p.write_bytes(msgpack.packb(state))
    info = inspect(p)
    assert [(t.name, t.dtype, t.shape) for t in info.tensors] == [
        ("params/dense/kernel", "float32", (3, 4)),
        ("params/dense/bias", "bfloat16", (2,)),
        ("step", "int64", ()),
        ("phase", "complex128", ()),
        ("opt/mu", "int32", (10,)),
    ]
    load = {t.name: info.tensor_loader(t) for t in info.tensors}
    np.testing.assert_array_equal(load["params/dense/kernel"], kernel)
    np.testing.assert_array_equal(load["params/dense/bias"], bf16)
    assert load["step"] == 42 and load["phase"] == complex(1, -2)
    np.testing.assert_array_equal(load["opt/mu"], big)


def test_plain_msgpack_without_arrays_is_not_flax(tmp_path):
    p = tmp_path / "plain.msgpack"
    p.write_bytes(msgpack.packb({"a": 1, "b": [1, 2, 3]}))
    assert flax_msgpack.sniff(Source(p)) is None
    code, _, err = run_cli("info", p)
    assert code == 2 and "not a model file" in err


@pytest.mark.parametrize("cut", [5, 40, -5])
def test_truncated(tmp_path, cut):
    raw = corpus_path("flax_msgpack/flax-0.12.8/mlp_params.msgpack").read_bytes()
    p = tmp_path / "cut.msgpack"
    p.write_bytes(raw[:cut])
    code, out, err = run_cli("info", p)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, (out, err)


def test_lying_sizes(tmp_path):
    # a leaf whose shape needs more bytes than it holds, and a map claiming 2^32-1 entries
    bad_leaf = msgpack.ExtType(1, msgpack.packb(([1000, 1000], "float32", b"\0" * 16)))
    p = tmp_path / "leaf.msgpack"
    p.write_bytes(msgpack.packb({"w": bad_leaf}))
    code, _, err = run_cli("info", p)
    assert code == 2 and "Traceback" not in err
    p2 = tmp_path / "map.msgpack"
    p2.write_bytes(b"\xdf\xff\xff\xff\xff\xa1w" + msgpack.packb(_ndarray(np.ones(2))))
    code, _, err = run_cli("info", p2)
    assert code == 2 and "Traceback" not in err


def test_cli_json():
    code, out, _ = run_cli(
        "info", corpus_path("flax_msgpack/flax-0.12.8/mlp_params.msgpack"), "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["format"] == "flax-msgpack" and data["n_parameters"] == 74


@pytest.mark.parametrize("head", [b"\xdf\x00\x00\x00", b"\xde\x00", b"\xdf\x00\x00\x00\x01"])
def test_short_map_headers_are_not_flax(tmp_path, head):
    from keishiki.core.source import Source
    from keishiki.formats import flax_msgpack

    p = tmp_path / "short.msgpack"
    p.write_bytes(head)
    assert flax_msgpack.sniff(Source(p)) is None
