"""A file that opens like a Torch7 object but is broken says what is wrong, not "not a model file"."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import corpus_path, run_cli


def _i(v):
    return struct.pack("<i", v)


def _q(v):
    return struct.pack("<q", v)


def _s(b):
    return _i(len(b)) + b


def _tensor(sizes, strides, storage):
    return (
        _i(4)
        + _i(1)
        + _s(b"V 1")
        + _s(b"torch.FloatTensor")
        + _i(len(sizes))
        + b"".join(map(_q, sizes))
        + b"".join(map(_q, strides))
        + _q(1)
        + storage
    )


STORAGE2 = _i(4) + _i(2) + _s(b"V 1") + _s(b"torch.FloatStorage") + _q(2) + struct.pack("<ff", 1, 2)


@pytest.mark.parametrize(
    "data,words",
    [
        (_tensor([3, 3], [3, 1], STORAGE2), "reach outside its storage"),
        (_tensor([-5], [1], STORAGE2), "negative size"),
    ],
    ids=["storage-too-small", "negative-dim"],
)
def test_malformed_torch_object_is_named(tmp_path, data, words):
    path = tmp_path / "bad.t7"
    path.write_bytes(data)
    code, _, err = run_cli("info", path)
    assert code == 2 and err.count("\n") == 1, err
    assert "corrupt or truncated" in err and words in err


@pytest.mark.parametrize("keep", [40, 100, 150])
def test_truncated_t7_says_truncated(tmp_path, keep):
    path = tmp_path / "t.t7"
    path.write_bytes(
        corpus_path("torch7_binary/python-torchfile/floattensor.t7").read_bytes()[:keep]
    )
    code, _, err = run_cli("tensors", path)
    assert code == 2 and "truncated Torch7 object stream" in err, err
