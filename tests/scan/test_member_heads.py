"""The scan's batched reader of member heads gives exactly what one read per member gives."""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from keishiki._scan import archives
from keishiki._scan.torch_archive import MemberHeads


def _zip(members: list[tuple[str, bytes, int]], extra: int = 0) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            info = zipfile.ZipInfo(name)
            if extra:  # a padding field (torch aligns storages with one): beyond the slack
                info.extra = b"\xfe\xca" + (extra - 4).to_bytes(2, "little") + bytes(extra - 4)
            zf.writestr(info, data, compress_type=method)
    return buf.getvalue()


def _cases() -> dict[str, bytes]:
    rng = random.Random(3)
    small = [(f"a/data/{i}", bytes(rng.randrange(256) for _ in range(40)), 0) for i in range(300)]
    mixed = [
        ("a/data.pkl", b"\x80\x02}q\x00.", 8),
        ("a/data/0", b"\x93NUMPY" + bytes(100), 0),
        ("a/data/1", b"", 0),
        ("a/data/2", b"x" * 200_000, 0),  # far apart: headers beyond one window
        ("a/data/3", b"\x93NUMPY", 8),
        ("a/data/4", b"abc", 0),
    ]
    whole = _zip(mixed)
    return {
        "small": _zip(small),
        "mixed": whole,
        "truncated": whole[: len(whole) // 2],  # the directory lists what is no longer there
        "short-extra": _zip([("a/data/0", b"\x93NUMPY!", 0), ("a/data/1", b"q", 0)], extra=60),
        "long-extra": _zip([("a/data/0", b"\x93NUMPY!", 0), ("a/data/1", b"q", 0)], extra=2000),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("n", [1, 6, 64])
def test_heads_equal_one_read_each(name, n):
    data = _cases()[name]
    full = _cases()["mixed"] if name == "truncated" else data
    members = archives.zip_members(io.BytesIO(full))
    fp = io.BytesIO(data)
    heads = MemberHeads(fp, members)
    order = members + members[::-1]  # forwards, then backwards (windows refilled)
    assert [heads.read(m, n) for m in order] == [
        archives.read_zip_head(io.BytesIO(data), m, n) for m in order
    ]


def test_a_local_header_that_is_not_one():
    data = bytearray(_zip([("a/data/0", b"\x93NUMPY", 0), ("a/data/1", b"zz", 0)]))
    members = archives.zip_members(io.BytesIO(bytes(data)))
    data[members[1].header_offset] = 0  # the second local header's signature broken
    heads = MemberHeads(io.BytesIO(bytes(data)), members)
    assert heads.read(members[0], 6) == b"\x93NUMPY"
    assert heads.read(members[1], 6) == b"" == archives.read_zip_head(io.BytesIO(data), members[1])
