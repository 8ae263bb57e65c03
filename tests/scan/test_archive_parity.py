"""Archives are read as torch reads them: keishiki's miniz reader and torch's layout rules give
torch's answer on crafted zips and legacy tars, torch's own reader is cross-checked, and
every payload torch would unpickle is found.

Zips are built by hand (sizes, offsets, directories) because the interesting files are the
ones no zip writer makes.  Payloads only ``touch`` a marker file; one subprocess proves which
ones torch really runs.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import keishiki
from keishiki._scan import archives, miniz, torch_archive

torch = pytest.importorskip("torch")


# ---- a zip writer that can lie --------------------------------------------------------------


@dataclass
class Z:
    """A zip under construction: local entries first, then any directories and end records."""

    prefix: bytes = b""
    body: bytearray = field(default_factory=bytearray)

    def local(
        self, name: str, data: bytes, crc: int | None = None, flag: int = 0, base: int = 0
    ) -> tuple:
        """Append a local entry; returns its central-directory tuple."""
        off = len(self.body) + base
        c = zlib.crc32(data) if crc is None else crc
        n = name.encode()
        self.body += (
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, flag, 0, 0, 0, c, len(data), len(data), len(n), 0
            )
            + n
            + data
        )
        return (n, len(data), c, off, flag)

    @staticmethod
    def central(entries) -> bytes:
        out = b""
        for n, size, c, off, flag in entries:
            out += (
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    20,
                    20,
                    flag,
                    0,
                    0,
                    0,
                    c,
                    size,
                    size,
                    len(n),
                    0,
                    0,
                    0,
                    0,
                    0,
                    off,
                )
                + n
            )
        return out

    def directory(self, entries, count: int | None = None, base: int = 0) -> tuple[int, int]:
        """Append a central directory; returns (its offset, its size)."""
        off, cd = len(self.body) + base, self.central(entries)
        self.body += cd
        return off, len(cd)

    def eocd(self, count: int, cd: tuple[int, int], comment: bytes = b"") -> bytes:
        self.body += (
            struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd[1], cd[0], len(comment))
            + comment
        )
        return self.bytes()

    def eocd64(self, count: int, cd: tuple[int, int]) -> int:
        off = len(self.body)
        self.body += struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd[1], cd[0]
        )
        return off

    def locator(self, eocd64_offset: int, disks: int = 1) -> None:
        self.body += struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, disks)

    def bytes(self) -> bytes:
        return self.prefix + bytes(self.body)


def evil(marker: Path) -> bytes:
    return pickle.dumps(_Touch(str(marker)), protocol=2)


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


BENIGN = pickle.dumps({"w": 1}, protocol=2)


def _plain(
    payload: bytes, folder: str = "archive", names=("data.pkl", "version"), **local
) -> bytes:
    z = Z()
    data = {"data.pkl": payload, "version": b"3\n", "DATA.PKL": payload, "VERSION": b"3\n"}
    entries = [z.local(f"{folder}/{n}", data[n], **local) for n in names]
    return z.eocd(len(entries), z.directory(entries))


def _patched(payload: bytes, **local) -> bytes:
    z = Z()
    entries = [z.local("archive/data.pkl", payload, **local), z.local("archive/version", b"3\n")]
    return z.eocd(2, z.directory(entries))


def _extra_entry_beyond_count(payload: bytes) -> bytes:
    """The end record counts 2 entries, the directory holds 3: zipfile reads 3, miniz 2."""
    z = Z()
    entries = [
        z.local("archive/data.pkl", BENIGN),
        z.local("archive/version", b"3\n"),
        z.local("archive/extra.pkl", payload),
    ]
    return z.eocd(2, z.directory(entries))


def _zip64(payload: bytes, disks: int = 1) -> bytes:
    z = Z()
    entries = [z.local("archive/data.pkl", payload), z.local("archive/version", b"3\n")]
    cd = z.directory(entries)
    z.locator(z.eocd64(2, cd), disks)
    return z.eocd(0xFFFF, (0xFFFFFFFF, 0xFFFFFFFF))


def _zip64_two_directories(payload: bytes) -> bytes:
    """zipfile reads the zip64 record just before the locator, miniz the one it points to."""
    z = Z()
    good = [z.local("archive/data.pkl", BENIGN), z.local("archive/version", b"3\n")]
    bad = [z.local("archive/data.pkl", payload), z.local("archive/version", b"3\n")]
    miniz_record = z.eocd64(2, z.directory(bad))
    z.eocd64(2, z.directory(good))
    z.locator(miniz_record)
    return z.eocd(0xFFFF, (0xFFFFFFFF, 0xFFFFFFFF))


def _signature_in_tail(payload: bytes) -> bytes:
    """A stray end signature in the last 21 bytes: zipfile gives up, miniz looks further back."""
    return _plain(payload) + b"PK\x05\x06" + b"\0" * 10


def _prepended(payload: bytes) -> bytes:
    """Junk before the zip, offsets absolute (counting the junk): miniz reads it."""
    z = Z(prefix=b"JUNK" * 16)
    entries = [
        z.local(n, d, base=64)
        for n, d in (("archive/data.pkl", payload), ("archive/version", b"3\n"))
    ]
    return z.eocd(2, z.directory(entries, base=64))


def _mixed_case_folder(payload: bytes) -> bytes:
    z = Z()
    entries = [z.local("archive/version", b"3\n"), z.local("ARCHIVE/data.pkl", payload)]
    return z.eocd(2, z.directory(entries))


def _case_duplicates(payload: bytes) -> bytes:
    z = Z()
    entries = [
        z.local("archive/data.pkl", BENIGN),
        z.local("archive/version", b"3\n"),
        z.local("archive/DATA.PKL", payload),
    ]
    return z.eocd(3, z.directory(entries))


def _storage_named_payload(payload: bytes) -> bytes:
    """A pickle at archive/data/0: torch reads it as raw storage bytes, never unpickles it."""
    z = Z()
    entries = [
        z.local("archive/data.pkl", BENIGN),
        z.local("archive/version", b"3\n"),
        z.local("archive/data/0", payload),
    ]
    return z.eocd(3, z.directory(entries))


def _storage_name_outside_folder(payload: bytes) -> bytes:
    z = Z()
    entries = [
        z.local("archive/data.pkl", BENIGN),
        z.local("archive/version", b"3\n"),
        z.local("other/data/0", payload),
    ]
    return z.eocd(3, z.directory(entries))


# name -> (builder, torch.load runs data.pkl's payload, scan verdict)
CASES = {
    "plain": (lambda p: _plain(p), True, "dangerous"),
    "upper_case_everything": (
        lambda p: _plain(p, "ARCHIVE", ("DATA.PKL", "VERSION")),
        True,
        "dangerous",
    ),
    "upper_case_record": (
        lambda p: _plain(p, "archive", ("DATA.PKL", "version")),
        True,
        "dangerous",
    ),
    "folder_with_spaces": (lambda p: _plain(p, "a b c"), True, "dangerous"),
    "dot_data_folder": (lambda p: _plain(p, ".data"), True, "dangerous"),
    "folder_named_data": (lambda p: _plain(p, "data"), True, "dangerous"),
    "bad_crc": (lambda p: _patched(p, crc=0xDEADBEEF), True, "dangerous"),
    "encrypted_flag": (lambda p: _patched(p, flag=1), False, "dangerous"),
    "end_signature_in_tail": (_signature_in_tail, True, "dangerous"),
    "prepended_junk": (_prepended, False, "dangerous"),
    "entry_beyond_count": (_extra_entry_beyond_count, False, "dangerous"),
    "zip64": (_zip64, True, "dangerous"),
    "zip64_zero_disks": (lambda p: _zip64(p, disks=0), False, "dangerous"),
    "zip64_two_directories": (_zip64_two_directories, True, "dangerous"),
    "mixed_case_folder": (_mixed_case_folder, False, "dangerous"),
    "case_duplicates": (_case_duplicates, None, "dangerous"),
    "storage_named_payload": (_storage_named_payload, False, "safe"),
    "storage_name_outside_folder": (_storage_name_outside_folder, False, "dangerous"),
}


def _torch_reader(data: bytes):
    try:
        return torch._C.PyTorchFileReader(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - torch refuses the archive
        return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for name, (build, _runs, _verdict) in CASES.items():
        marker = root / f"ran_{name}"
        path = root / f"{name}.pt"
        path.write_bytes(build(evil(marker)))
        out[name] = (path, marker)
    return out


@pytest.mark.parametrize("name", CASES)
def test_miniz_listing_matches_torch(name, built):
    """Where torch opens the archive, keishiki's miniz reader lists the same records; where
    keishiki's reader refuses the directory, so does torch."""
    data = built[name][0].read_bytes()
    reader = _torch_reader(data)
    fp = io.BytesIO(data)
    try:
        entries = miniz.entries(fp, len(data))
    except miniz.MinizError:
        assert reader is None, "torch opens what keishiki's miniz reader refuses"
        return
    if reader is None:
        return  # torch refuses for reasons beyond the directory (no version record...)
    try:
        records = reader.get_all_records()
    except Exception:  # noqa: BLE001 - a member outside the folder: torch.load fails too
        assert len({e.raw_name.split(b"/")[0] for e in entries}) > 1
        return
    assert sorted(records) == sorted(e.name.split("/", 1)[1] for e in entries)


@pytest.mark.parametrize("name", CASES)
def test_data_pkl_resolves_as_torch_resolves_it(name, built):
    data = built[name][0].read_bytes()
    reader = _torch_reader(data)
    if reader is None or not reader.has_record("data.pkl"):
        return
    listing = archives.list_zip(io.BytesIO(data))
    lay = torch_archive.layout(listing)
    candidates = [archives.read_zip_member(io.BytesIO(data), m) for m in lay.lookup("data.pkl")]
    try:
        theirs = reader.get_record("data.pkl")
    except Exception:  # noqa: BLE001 - the encrypted flag: torch finds it but cannot read it
        assert candidates
        return
    assert theirs in candidates


SPLIT = {"zip64_two_directories", "entry_beyond_count"}  # miniz and zipfile disagree by design


@pytest.mark.parametrize("name", CASES)
def test_scan_verdict(name, built):
    """The verdict, and no parser differential except where the file is built to split the
    readers (keishiki's reading of the rest agrees with torch's own reader)."""
    path, marker = built[name]
    report = keishiki.scan(path)
    assert report.verdict == CASES[name][2], [f.to_dict() for f in report.findings]
    differential = any(f.opcode == "zip-differential" for f in report.findings)
    assert differential == (name in SPLIT), [f.to_dict() for f in report.findings]
    assert not marker.exists()


def test_payloads_really_run_under_torch_load(built, tmp_path):
    """The cases marked live do run their payload in ``torch.load(weights_only=False)`` (one
    subprocess for all); the others do not."""
    script = (
        "import sys, torch\nfor p in sys.argv[1:]:\n    try:\n"
        "        torch.load(p, weights_only=False)\n    except Exception:\n        pass\n"
    )
    paths = [str(built[n][0]) for n in CASES]
    subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, timeout=300, cwd=tmp_path
    )
    ran = {n for n in CASES if built[n][1].exists()}
    expected = {n for n, (_b, runs, _v) in CASES.items() if runs}
    undecided = {n for n, (_b, runs, _v) in CASES.items() if runs is None}
    assert ran - undecided == expected
    for name in ran:
        built[name][1].unlink()


def test_directory_split_is_named(built):
    for name in ("zip64_two_directories", "entry_beyond_count"):
        report = keishiki.scan(built[name][0])
        kinds = {f.opcode for f in report.findings if f.severity == "dangerous"}
        assert "zip-differential" in kinds, (name, [f.to_dict() for f in report.findings])


def test_plain_checkpoints_have_no_differential(tmp_path):
    sd = {"w": torch.ones(3), "b": torch.zeros(2)}
    for name in ("model.pt", ".data.pt", "x.y.pt"):
        path = tmp_path / name
        torch.save(sd, path)
        report = keishiki.scan(path)
        assert report.verdict == "safe", [f.to_dict() for f in report.findings]
        assert not any(f.opcode == "zip-differential" for f in report.findings)


def test_dot_data_checkpoint_payload_is_found(tmp_path):
    """torch.save to ``.data.pt`` names the folder ``.data``: its data.pkl is read, not
    mistaken for the ``.data/`` metadata of other archives."""
    path = tmp_path / ".data.pt"
    torch.save({"x": _Touch(str(tmp_path / "never"))}, path)
    assert zipfile.ZipFile(path).namelist()[0] == ".data/data.pkl"
    assert keishiki.scan(path).verdict == "dangerous"


class _Disagreeing:
    """Make keishiki's reader miss a member torch sees (a stand-in for any emulation gap)."""

    def __init__(self, monkeypatch, drop: str | None = None, refuse: bool = False):
        real = archives._miniz_members

        def fake(fp):
            if refuse:
                raise miniz.MinizError("pretend keishiki cannot read it")
            return [m for m in real(fp) if m.name != drop]

        monkeypatch.setattr(archives, "_miniz_members", fake)
        monkeypatch.setattr(
            archives,
            "_zipfile_members",
            lambda fp: (_ for _ in ()).throw(archives.zipfile.BadZipFile("no")),
        )


def test_torch_sees_what_keishiki_does_not(built, monkeypatch):
    _Disagreeing(monkeypatch, drop="archive/data.pkl")
    report = keishiki.scan(built["plain"][0])
    diffs = [f for f in report.findings if f.opcode == "zip-differential"]
    assert diffs and all(f.severity == "dangerous" for f in diffs)
    assert any("system" in f.global_ for f in report.findings), "torch's bytes were not scanned"


def test_judged_through_torch_when_only_torch_reads_it(built, monkeypatch):
    _Disagreeing(monkeypatch, refuse=True)
    report = keishiki.scan(built["plain"][0])
    assert report.verdict == "dangerous"
    assert any(f.member == "archive/data.pkl" and "system" in f.global_ for f in report.findings)


def test_without_torch_the_miniz_reader_still_decides(built, monkeypatch):
    monkeypatch.setattr(torch_archive, "torch_installed", lambda: False)
    for name in ("end_signature_in_tail", "upper_case_everything", "dot_data_folder"):
        report = keishiki.scan(built[name][0])
        assert report.verdict == "dangerous", name


@pytest.mark.parametrize("kind", ["pickle", "npz", "keras"])
def test_scan_imports_torch_only_for_archives_torch_opens(kind, tmp_path):
    """A pickle, an .npz or a .keras zip (no folder, no version record: torch's reader
    refuses them) is scanned without importing torch."""
    import numpy as np

    path = tmp_path / {"pickle": "w.pkl", "npz": "w.npz", "keras": "m.keras"}[kind]
    if kind == "pickle":
        path.write_bytes(BENIGN)
    elif kind == "npz":
        np.savez(path, w=np.zeros(2))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", '{"class_name": "Sequential", "config": {}}')
            zf.writestr("metadata.json", "{}")
    code = (
        "import sys, keishiki; r = keishiki.scan(sys.argv[1]); "
        "print(r.verdict, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["safe", "False"], out.stderr


# ---- legacy torch tars (torch <= 0.1.10: tarfile, sys_info/pickle/storages/tensors) ---------


def _v7_tar(members: dict[str, bytes]) -> bytes:
    """A tar without the ustar magic (v7), as Python's tarfile still reads it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    pos = 0
    while pos + 512 <= len(raw) and raw[pos : pos + 1] != b"\0":
        size = int(raw[pos + 124 : pos + 136].rstrip(b"\0 ") or b"0", 8)
        raw[pos + 257 : pos + 265] = b"\0" * 8
        raw[pos + 148 : pos + 156] = b" " * 8
        raw[pos + 148 : pos + 156] = b"%06o\0 " % sum(raw[pos : pos + 512])
        pos += 512 + (size + 511) // 512 * 512
    return bytes(raw)


@pytest.mark.parametrize("member", ["pickle", "sys_info", "storages", "tensors"])
def test_legacy_v7_tar_members_are_scanned(member, tmp_path):
    parts = {n: pickle.dumps([], protocol=2) for n in ("sys_info", "pickle", "storages", "tensors")}
    parts[member] = evil(tmp_path / "never")
    data = _v7_tar(parts)
    assert data[257:262] != b"ustar"
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(data))] == list(parts)
    path = tmp_path / "old.pt"
    path.write_bytes(data)
    report = keishiki.scan(path)
    assert report.verdict == "dangerous"
    assert any(f.member == member and f.severity == "dangerous" for f in report.findings)


def test_torch_still_reads_v7_tars(tmp_path):
    """The v7 layout is live: torch.load (weights_only=False) unpickles ``storages`` first."""
    marker = tmp_path / "ran"
    parts = {n: pickle.dumps([], protocol=2) for n in ("sys_info", "pickle", "tensors")}
    parts["storages"] = evil(marker)
    path = tmp_path / "old.pt"
    path.write_bytes(_v7_tar(parts))
    assert keishiki.scan(path).verdict == "dangerous"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
            str(path),
        ],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert marker.exists()


def _mutants(n: int, seed: int = 7):
    """Byte flips, 32-bit field overwrites and deletions, biased toward the directory and
    end records (the part miniz and zipfile parse differently)."""
    import random

    rnd = random.Random(seed)
    seeds = [build(BENIGN) for build, _r, _v in CASES.values()]
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    seeds.append(buf.getvalue())
    for _ in range(n):
        d = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randint(max(0, len(d) - rnd.choice([22, 80, 200, len(d)])), len(d) - 1)
            op = rnd.random()
            if op < 0.6:
                d[i] = rnd.randrange(256)
            elif op < 0.8:
                d[i : i + 4] = struct.pack(
                    "<I", rnd.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rnd.randrange(len(d) + 1)])
                )
            else:
                del d[i : i + rnd.randint(1, 8)]
        yield bytes(d)


def test_miniz_listing_parity_on_mutants():
    """Derandomized differential fuzz: on 1500 damaged archives keishiki's miniz reader and
    torch's list the same records, and keishiki refuses only what torch refuses."""
    checked = 0
    for data in _mutants(1500):
        try:
            ours = sorted(
                e.name.split("/", 1)[-1].split("\0")[0]  # torch lists C strings
                for e in miniz.entries(io.BytesIO(data), len(data))
            )
        except miniz.MinizError:
            ours = None
        reader = _torch_reader(data)
        if ours is None:
            assert reader is None, data
            continue
        lay = torch_archive.layout(archives.list_zip(io.BytesIO(data)))
        if not lay.torch_opens:  # keishiki skips torch's reader (and its import) then
            assert reader is None, data
        if reader is None:
            continue
        try:
            theirs = sorted(reader.get_all_records())
        except Exception:  # noqa: BLE001 - a member outside the folder
            continue
        assert theirs == ours, data
        checked += 1
    assert checked > 100  # the fuzz reached torch-readable archives, not only refusals


def test_storage_holding_an_object_npy_is_read(tmp_path):
    """A storage name does not hide a NumPy object array: np.load of the same zip reads any
    member with the NumPy magic (and unpickles an object dtype)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array([_Touch(str(tmp_path / "never"))], dtype=object), allow_pickle=True)
    z = Z()
    entries = [
        z.local("archive/data.pkl", BENIGN),
        z.local("archive/version", b"3\n"),
        z.local("archive/data/0", buf.getvalue()),
    ]
    path = tmp_path / "x.pt"
    path.write_bytes(z.eocd(3, z.directory(entries)))
    assert keishiki.scan(path).verdict == "dangerous"


def test_two_sizes_for_one_stored_member_is_a_differential(tmp_path):
    """miniz checks 'stored means equal sizes' on the method and time fields read as one
    32-bit value, so with a file time set a stored member may declare two sizes: torch reads
    the expanded size, zipfile the compressed one.  keishiki reads both, and torch's own
    reader shows the bytes differ."""
    data = bytearray(_plain(BENIGN))
    cd = data.find(b"PK\x01\x02")
    data[cd + 12 : cd + 14] = b"\x01\x00"  # file time
    (compressed,) = struct.unpack("<I", data[cd + 20 : cd + 24])
    data[cd + 20 : cd + 24] = struct.pack("<I", compressed + 8)  # 8 bytes more
    path = tmp_path / "two_sizes.pt"
    path.write_bytes(bytes(data))
    reader = torch._C.PyTorchFileReader(str(path))
    assert reader.get_record("data.pkl") == BENIGN  # torch: the expanded size
    report = keishiki.scan(path)
    assert report.verdict == "dangerous"
    assert any(
        f.opcode == "zip-differential" and "other bytes" in f.reason for f in report.findings
    )
