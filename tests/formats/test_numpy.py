"""numpy: .npy/.npz against facts.json and numpy itself; object arrays never loaded; bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from keishiki import inspect
from keishiki.core.source import Source
from keishiki.errors import CorruptFile
from keishiki.formats import numpy as numpy_format
from tests.conftest import FACTS, corpus_path, facts_where, run_cli

CASES = facts_where(lambda f: f.get("format") in ("numpy npz", "npz (aux)"))


@pytest.mark.parametrize("rel", CASES)
def test_corpus_npz_matches_facts_and_numpy(rel):
    path = corpus_path(rel)
    info = inspect(path)
    assert (info.format, info.variant) == ("numpy", "npz")
    assert info.details["numpy"]["arrays"] == FACTS[rel]["arrays"]
    with np.load(path) as ref:  # no pickles in these: allow_pickle stays False
        for lazy in info.lazy_tensors():
            np.testing.assert_array_equal(lazy.load(), ref[lazy.name])


def test_candle_values():
    info = inspect(corpus_path("other/npz/candle/test.npz"))
    x = info.tensor_loader(info.tensor("x"))
    np.testing.assert_array_equal(info.tensor_loader(info.tensor("x_plus_one")), x + 1)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_versions_fortran_and_big_endian(tmp_path, version):
    arr = np.asfortranarray(np.arange(24, dtype=">f8").reshape(2, 3, 4))
    p = tmp_path / "a.npy"
    with open(p, "wb") as fh:
        np.lib.format.write_array(fh, arr, version=version)
    info = inspect(p)
    assert (info.variant, info.format_version) == ("npy", f"{version[0]}.{version[1]}")
    t = info.tensors[0]
    assert (t.name, t.dtype, t.shape, t.nbytes) == ("array", "float64", (2, 3, 4), 192)
    assert t.extra == {"fortran_order": True, "byteorder": "big"}
    loaded = info.tensor_loader(t)
    np.testing.assert_array_equal(loaded, arr)
    assert loaded.flags.c_contiguous and loaded.dtype == np.float64
    # data_offset points at the raw bytes (Fortran order, as written)
    raw = p.read_bytes()[t.data_offset :]
    assert raw == arr.tobytes(order="F")


def test_npz_stored_offsets_and_deflated_members(tmp_path):
    arrays = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, -1], np.int8),
        "e": np.zeros((0, 3), np.float16),
    }
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    np.savez(plain, **arrays)
    np.savez_compressed(packed, **arrays)
    for path in (plain, packed):
        info = inspect(path)
        assert [t.name for t in info.tensors] == ["w", "b", "e"]
        for lazy in info.lazy_tensors():
            np.testing.assert_array_equal(lazy.load(), arrays[lazy.name])
    stored = inspect(plain).tensor("w")
    assert plain.read_bytes()[stored.data_offset : stored.data_offset + 24] == arrays["w"].tobytes()
    assert inspect(packed).tensor("w").data_offset is None


def test_object_arrays_are_reported_never_loaded(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, ok=np.ones(3), obj=np.array([{"a": 1}, None], dtype=object))
    info = inspect(p)
    assert [t.name for t in info.tensors] == ["ok"]
    assert info.details["numpy"]["object_arrays"] == ["obj"]
    assert any("allow_pickle" in w for w in info.warnings)
    single = tmp_path / "obj.npy"
    np.save(single, np.array([1, "x"], dtype=object), allow_pickle=True)
    info = inspect(single)
    assert info.n_tensors == 0 and info.details["numpy"]["object_arrays"] == ["array"]


def test_header_is_not_evaluated(tmp_path):
    # a header that would run code under eval(): literal_eval refuses it
    header = (
        b"{'descr': __import__('os').system('echo pwned'), 'fortran_order': False, 'shape': (1,)}"
    )
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    p = tmp_path / "evil.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8)
    with pytest.raises(CorruptFile, match="malformed header"):
        inspect(p)


@pytest.mark.parametrize("cut", [7, 9, 40, -3])
def test_truncated_npy(tmp_path, cut):
    full = tmp_path / "full.npy"
    np.save(full, np.arange(10, dtype=np.int64))
    p = tmp_path / "cut.npy"
    p.write_bytes(full.read_bytes()[:cut])
    code, out, err = run_cli("info", p)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, (out, err)


def test_npz_member_size_mismatch(tmp_path):
    p = tmp_path / "bad.npz"
    good = tmp_path / "g.npy"
    np.save(good, np.arange(10, dtype=np.int64))
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", good.read_bytes()[:-8])
    with pytest.raises(CorruptFile, match="needs 80 bytes"):
        inspect(p)
    code, _, err = run_cli("info", p)
    assert code == 2 and "corrupt" in err


def test_npz_stored_member_past_the_end_of_the_file(tmp_path):
    """A STORED member whose zip sizes claim a gigabyte in a 252-byte file: its header
    matched the claim, so the reader listed 250M parameters that np.load cannot read."""
    import struct
    import zipfile

    path = tmp_path / "liar.npz"
    h = b"{'descr': '<f4', 'fortran_order': False, 'shape': (250000000,), }"
    h += b" " * (-(len(h) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.npy", npy + b"\0" * 16)
    data = bytearray(path.read_bytes())
    fake = len(npy) + 10**9
    struct.pack_into("<II", data, 18, fake, fake)  # the local header's sizes
    struct.pack_into("<II", data, data.rfind(b"PK\x01\x02") + 20, fake, fake)  # and the directory's
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="stored bytes run past the end of the file"):
        inspect(path)


def test_zip_of_other_things_is_not_npz(tmp_path):
    p = tmp_path / "x.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY")
        zf.writestr("readme.txt", b"hi")
    with Source(p) as src:
        assert numpy_format.sniff(src) is None


def test_cli_json(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, a=np.ones((2, 2), np.float32))
    code, out, _ = run_cli("info", p, "--json")
    data = json.loads(out)
    assert code == 0 and data["format"] == "numpy" and data["variant"] == "npz"
    assert data["n_parameters"] == 4 and data["numpy"]["arrays"] == {"a": "float32[2, 2]"}


def test_inspect_does_not_import_torch():
    path = corpus_path("other/npz/candle/test.npz")
    script = f"import sys, keishiki; keishiki.inspect({str(path)!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_npz_zip_bomb_is_refused_before_it_expands(tmp_path):
    """A 64 KiB npz whose member deflates into 64 MiB: refused from its directory entry by
    info, convert and compare alike (it took 2.2-3.2 GB in convert and compare)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (16 << 20,)}
    )
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("w.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            for _ in range(64):
                fh.write(b"\0" * (1 << 20))
    assert bomb.stat().st_size < 100_000
    for args in (
        ["info", bomb],
        ["convert", bomb, tmp_path / "o.safetensors", "--to", "safetensors"],
        ["compare", bomb, bomb],
    ):
        code, _out, err = run_cli(*args)
        assert code == 2 and "(over 1000:1): a zip bomb" in err and err.count("\n") == 1, args
    assert not (tmp_path / "o.safetensors").exists()
