"""Every format's magic followed by garbage (or nothing): one line, exit 2, quickly — for info,
tensors and info --json (the QA sweep's hostile set, kept as a regression test).  "Quickly" is
counted in function calls and bytes read, which a loaded machine does not stretch."""

from __future__ import annotations

import json
import random
import struct

import pytest

from tests.conftest import bytes_read, count_calls, run_cli

_R = random.Random(7)
_GARBAGE = bytes(_R.getrandbits(8) for _ in range(3000))
MAGICS = {
    "safetensors": struct.pack("<Q", 50) + b'{"a":',
    "safetensors_2e63": struct.pack("<Q", 2**63) + b"{",
    "gguf": b"GGUF\x03\x00\x00\x00",
    "gguf_2e40": b"GGUF\x03\x00\x00\x00" + struct.pack("<QQ", 2**40, 2**40),
    "zip": b"PK\x03\x04",
    "pickle2": b"\x80\x02",
    "pickle5": b"\x80\x05\x95",
    "hdf5": b"\x89HDF\r\n\x1a\n",
    "npy": b"\x93NUMPY\x01\x00",
    "torch7": struct.pack("<iii", 4, 1, 3) + b"V 1",
    "torch7_ascii": b"4\n1\n3\nV 1\n",
    "msgpack": b"\x82\xa5",
    "onnx": b"\x08\x07\x12\x07pytorch",
    "legacy_torch": b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",
    "empty": b"",
    "one_byte": b"\x00",
}


@pytest.mark.parametrize("tail", [b"", _GARBAGE], ids=["bare", "garbage"])
@pytest.mark.parametrize("magic", sorted(MAGICS))
def test_magic_then_garbage_is_one_line_exit_2(tmp_path, magic, tail):
    path = tmp_path / f"m.{magic}"
    path.write_bytes(MAGICS[magic] + tail)
    run_cli("info", path)  # the first look imports the reader's modules: not counted below
    for args in (["info"], ["tensors"], ["info", "--json"]):
        with count_calls() as work:
            code, out, err = run_cli(*args, path)
        assert work.calls < 200_000, args  # about 21 000, most of them the CLI's own
        assert code == 2, (args, out[:300], err)
        assert err.startswith("keishiki: error: ") and err.count("\n") == 1, err
        assert "internal error" not in err
        with pytest.raises(json.JSONDecodeError):
            json.loads(out or "x")  # nothing half-written on stdout


def test_sparse_10gb_safetensors_header_is_refused_fast(tmp_path):
    path = tmp_path / "big.safetensors"
    header = (
        json.dumps(
            {"w": {"dtype": "F32", "shape": [2684354560], "data_offsets": [0, 10 * 2**30 - 136]}}
        )
        .encode()
        .ljust(128)
    )
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 128) + header)
        fh.truncate(10 * 2**30)  # sparse: no disk used
    before = bytes_read()
    code, _, err = run_cli("info", path)
    assert code == 2 and "needs" in err
    # the header (and, in a fresh process, ~6 MB of .pyc imports), not the 10 GiB of data
    assert bytes_read() - before < 2**28
