"""``keishiki scan`` judges pickles as the real loaders read them (issue 8, part 1).

Every dangerous case is built on the spot and, where cheap, proven live: a subprocess
loads it with the real loader and the marker file appears.  The scan itself must name the
global the loader would import.  Benign look-alikes are made by the real libraries.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import keishiki
from tests.scan.samples import P4, STOP, Reduce, call, g0, s0, sg, u

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _cmd(marker: Path) -> str:
    return f"touch {marker}"


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


# ---- loaders, run for real in a subprocess -------------------------------------------------

LOADERS = {
    "pickle": "import pickle; pickle.load(open(P, 'rb'))",
    "pickle2": "import pickle; f = open(P, 'rb'); pickle.load(f); pickle.load(f)",
    "torch": "import torch; torch.load(P, weights_only=False)",
    "joblib": "import joblib; joblib.load(P)",
    "ext": (
        "import copyreg, pickle; copyreg.add_extension('os', 'system', 0x7a); "
        "pickle.load(open(P, 'rb'))"
    ),
}


def _runs(path: Path, loader: str, marker: Path) -> bool:
    """Load ``path`` with the real ``loader`` in a fresh process; did the payload run?"""
    marker.unlink(missing_ok=True)
    code = f"P = {str(path)!r}\ntry:\n    {LOADERS[loader]}\nexcept Exception:\n    pass"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


# ---- dangerous cases: name -> (bytes(marker), file name, named global, live loader) --------


def _getattr_chain(m: Path) -> bytes:
    # builtins.getattr(importlib.import_module('os'), 'system')(cmd)
    return (
        P4
        + sg("builtins", "getattr")
        + sg("importlib", "import_module")
        + u("os")
        + b"\x85R"
        + u("system")
        + b"\x86R"
        + u(_cmd(m))
        + b"\x85R"
        + STOP
    )


def _os_module() -> bytes:
    return sg("importlib", "import_module") + u("os") + b"\x85R"


def _legacy(sys_info: bytes, keys: bytes = b"") -> bytes:
    return (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + sys_info
        + pickle.dumps({}, protocol=2)
        + (keys or pickle.dumps([], protocol=2))
    )


def _torch_zip_bytes() -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def _joblib_with_opcode_array(m: Path) -> bytes:
    """A joblib dump (protocol 2: no frames) whose uint8 array data are pickle opcodes:
    joblib.load reads them as array data, pickle.load executes them."""
    import joblib
    import numpy as np

    evil = g0("os", "system") + b"(" + s0(_cmd(m)) + b"tR."
    buf = io.BytesIO()
    joblib.dump({"a": np.frombuffer(evil, dtype=np.uint8)}, buf, protocol=2)
    data = buf.getvalue()
    # joblib 1.x aligns array data behind a pad (0-16 bytes, no opcode among them); a dump
    # without the alignment entry (what older joblib wrote) has the data right after BUILD
    key = data.index(b"X\x1b\x00\x00\x00numpy_array_alignment_bytes")
    build = data.index(b"ub", key)
    pad = build + 2
    return data[:key] + data[build:pad] + data[pad + 1 + data[pad] :]


def _joblib_object_array(m: Path) -> bytes:
    import joblib
    import numpy as np

    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = 1, Reduce(os.system, (_cmd(m),))
    buf = io.BytesIO()
    joblib.dump({"o": arr}, buf)
    return buf.getvalue()


def _frame_first(m: Path) -> bytes:
    body = sg("os", "system") + u(_cmd(m)) + b"\x85R" + STOP
    return b"\x95" + struct.pack("<Q", len(body)) + body


CASES = {
    "p0_global_builtin_eval": (
        lambda m: call(g0("__builtin__", "eval"), s0(_code(m))) + STOP,
        "a.pkl",
        "builtins.eval",
        "pickle",
    ),
    "p0_global_builtins_exec": (
        lambda m: call(g0("builtins", "exec"), s0(_code(m))) + STOP,
        "a.pkl",
        "builtins.exec",
        "pickle",
    ),
    "stack_global_memo_binget": (
        lambda m: (
            P4
            + u("os")
            + b"q\x00"
            + b"0"
            + u("system")
            + b"q\x01"
            + b"0"
            + b"h\x00h\x01\x93"
            + u(_cmd(m))
            + b"\x85R"
            + STOP
        ),
        "a.pkl",
        "os.system",
        "pickle",
    ),
    "stack_global_memoize_dup": (
        lambda m: (
            P4
            + u("system")
            + b"\x94"
            + b"0"
            + u("os")
            + b"2"
            + b"0"
            + b"h\x00\x93"
            + u(_cmd(m))
            + b"\x85R"
            + STOP
        ),
        "a.pkl",
        "os.system",
        "pickle",
    ),
    "stack_global_computed_by_safe_call": (
        # builtins.str(b'os', 'ascii') is a safe call, yet its result names the module
        lambda m: (
            P4
            + sg("builtins", "str")
            + b"C\x02os"
            + u("ascii")
            + b"\x86R"
            + u("system")
            + b"\x93"
            + u(_cmd(m))
            + b"\x85R"
            + STOP
        ),
        "a.pkl",
        "<dynamic>",
        "pickle",
    ),
    "inst_os_system": (
        lambda m: b"(" + s0(_cmd(m)) + b"ios\nsystem\n" + STOP,
        "a.pkl",
        "os.system",
        "pickle",
    ),
    "obj_os_system": (
        lambda m: b"(" + g0("os", "system") + s0(_cmd(m)) + b"o" + STOP,
        "a.pkl",
        "os.system",
        "pickle",
    ),
    "ext1_registered_in_loader": (
        lambda m: b"\x80\x02\x82\x7a" + u(_cmd(m)) + b"\x85R" + STOP,
        "a.pkl",
        "copyreg.extension.122",
        "ext",
    ),
    "getattr_import_module_chain": (_getattr_chain, "a.pkl", "builtins.getattr", "pickle"),
    "operator_attrgetter": (
        lambda m: (
            P4
            + sg("operator", "attrgetter")
            + u("system")
            + b"\x85R"
            + _os_module()
            + b"\x85R"
            + u(_cmd(m))
            + b"\x85R"
            + STOP
        ),
        "a.pkl",
        "operator.attrgetter",
        "pickle",
    ),
    "operator_methodcaller": (
        lambda m: (
            P4
            + sg("operator", "methodcaller")
            + u("system")
            + u(_cmd(m))
            + b"\x86R"
            + _os_module()
            + b"\x85R"
            + STOP
        ),
        "a.pkl",
        "operator.methodcaller",
        "pickle",
    ),
    "functools_partial": (
        lambda m: (
            P4
            + sg("functools", "partial")
            + sg("os", "system")
            + u(_cmd(m))
            + b"\x86R"
            + b")R"
            + STOP
        ),
        "a.pkl",
        "functools.partial",
        "pickle",
    ),
    "torch_load_from_bytes_nested": (
        lambda m: (
            b"\x80\x02"
            + g0("torch.storage", "_load_from_bytes")
            + b"C"
            + bytes([len(p := pickle.dumps(Reduce(os.system, (_cmd(m),)), protocol=2))])
            + p
            + b"\x85R"
            + STOP
        ),
        "a.pt",
        "torch.storage._load_from_bytes",
        "torch",
    ),
    "py2_name_only_after_mapping": (
        lambda m: b"\x80\x02" + g0("commands", "getoutput") + u(_cmd(m)) + b"\x85R" + STOP,
        "a.pkl",
        "subprocess.getoutput",
        "pickle",
    ),
    "py2_stack_global_after_mapping": (
        lambda m: b"\x80\x02" + sg("commands", "getoutput") + u(_cmd(m)) + b"\x85R" + STOP,
        "a.pkl",
        "subprocess.getoutput",
        "pickle",
    ),
    "second_stream_after_benign_stop": (
        lambda m: (
            pickle.dumps({"w": [1.0]}, protocol=4)
            + pickle.dumps(Reduce(os.system, (_cmd(m),)), protocol=4)
        ),
        "a.pkl",
        "posix.system",
        "pickle2",
    ),
    "legacy_payload_in_sys_info": (
        lambda m: _legacy(pickle.dumps(Reduce(os.system, (_cmd(m),)), protocol=2)),
        "a.pt",
        "posix.system",
        "torch",
    ),
    "legacy_payload_in_storage_keys": (
        lambda m: _legacy(
            pickle.dumps({"little_endian": True}, protocol=2),
            pickle.dumps([Reduce(os.system, (_cmd(m),))], protocol=2),
        ),
        "a.pt",
        "posix.system",
        None,
    ),
    "no_proto_frame_first": (_frame_first, "weights", "os.system", "pickle"),
    "no_proto_short_binunicode_first": (
        lambda m: sg("os", "system") + u(_cmd(m)) + b"\x85R" + STOP,
        "weights.data",
        "os.system",
        "pickle",
    ),
    "no_proto_newtrue_first": (
        lambda m: b"\x88" + b"0" + sg("os", "system") + u(_cmd(m)) + b"\x85R" + STOP,
        "model",
        "os.system",
        "pickle",
    ),
    "no_proto_empty_dict_first": (
        lambda m: b"}" + b"0" + sg("os", "system") + u(_cmd(m)) + b"\x85R" + STOP,
        "training_args.bin",
        "os.system",
        "pickle",
    ),
    "polyglot_pickle_then_torch_zip": (
        lambda m: pickle.dumps(Reduce(os.system, (_cmd(m),)), protocol=2) + _torch_zip_bytes(),
        "a.pt",
        "posix.system",
        "torch",
    ),
    "polyglot_joblib_array_is_opcodes": (
        _joblib_with_opcode_array,
        "a.joblib",
        "os.system",
        "pickle",
    ),
    "joblib_object_array_payload": (_joblib_object_array, "a.joblib", "posix.system", "joblib"),
}

NAMES_ONLY = [  # globals that must be dangerous by name (module.name as the loader imports it)
    ("torch._C", "_load_for_lite_interpreter"),
    ("torch.hub", "load"),
    ("torch.serialization", "load"),
    ("torch", "load"),
    ("numpy", "load"),
    ("pip._internal.cli.main", "main"),
    ("runpy", "run_path"),
    ("runpy", "_run_code"),
    ("code", "InteractiveInterpreter"),
    ("pty", "spawn"),
    ("webbrowser", "open"),
    ("asyncio.subprocess", "create_subprocess_shell"),
    ("ctypes", "CDLL"),
    ("importlib", "import_module"),
    ("builtins", "__import__"),
    ("subprocess", "Popen"),
    ("ｏｓ", "system"),
    ("оs", "system"),
    ("os ", "system"),
    ("builtins", "ｅｖａｌ"),
    ("__builtin__", "execfile"),
    ("copy_reg", "add_extension"),
]


def _scan(path: Path):
    report = keishiki.scan(path)
    return report, {f.global_ for f in report.findings if f.severity == "dangerous"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dangerous_case_is_named_and_live(name, tmp_path):
    build, filename, expected, loader = CASES[name]
    marker = tmp_path / "PWNED"
    path = tmp_path / filename
    path.write_bytes(build(marker))
    report, dangerous = _scan(path)
    assert report.verdict == "dangerous", report.to_dict()
    assert expected in dangerous, sorted(dangerous)
    folder_report = keishiki.scan(tmp_path)  # a folder scan never skips it either
    assert folder_report.verdict == "dangerous"
    if loader:
        assert _runs(path, loader, marker), f"{name}: payload is not live under {loader}"


@pytest.mark.parametrize("module,name", NAMES_ONLY)
@pytest.mark.parametrize("proto", [0, 4])
def test_gadget_names_are_dangerous(module, name, proto, tmp_path):
    head = g0(module, name) if proto == 0 else P4 + sg(module, name)
    path = tmp_path / "g.pkl"
    path.write_bytes(head + u("x") + b"\x85R" + STOP)
    report, dangerous = _scan(path)
    assert report.verdict == "dangerous", report.to_dict()
    assert any(name in g or g == "<dynamic>" for g in dangerous), sorted(dangerous)


def test_ext_registered_in_the_scanning_process_names_the_target(tmp_path):
    """With a code registered here, the unpickler resolves it through find_class (so the
    target is named) and copyreg's cache keeps no stand-in afterwards."""
    path = tmp_path / "e.pkl"
    path.write_bytes(b"\x80\x02\x82\x7b" + u("x") + b"\x85R" + STOP)
    copyreg.add_extension("os", "system", 0x7B)
    try:
        report, dangerous = _scan(path)
    finally:
        copyreg.remove_extension("os", "system", 0x7B)
    assert {"os.system", "copyreg.extension.123"} <= dangerous
    assert not copyreg._extension_cache


# ---- benign look-alikes, made by the real libraries ----------------------------------------


def _benign_files(root: Path) -> dict[str, Path]:
    import argparse
    import collections
    import datetime
    import pathlib
    import random

    import joblib
    import numpy as np

    torch = pytest.importorskip("torch")

    out: dict[str, Path] = {}

    def save(name, obj, **kw):
        out[name] = root / name
        torch.save(obj, out[name], **kw)

    save("namespace.pt", {"args": argparse.Namespace(lr=0.1), "w": torch.zeros(2)})
    save(
        "paths.pt",
        {
            "p": pathlib.Path("/a/b"),
            "pp": pathlib.PurePosixPath("a"),
            "pw": pathlib.PureWindowsPath("c:/x"),
        },
    )
    save(
        "rng.pt",
        {
            "gen": np.random.default_rng(0),
            "rs": np.random.RandomState(0),
            "bits": [
                np.random.PCG64(1),
                np.random.MT19937(1),
                np.random.Philox(1),
                np.random.SFC64(1),
                np.random.PCG64DXSM(1),
            ],
            "ss": np.random.SeedSequence(3),
            "state": np.random.get_state(),
        },
    )
    save("rng_legacy.pt", {"gen": np.random.default_rng(0)}, _use_new_zipfile_serialization=False)
    save(
        "rng_state.pth",
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.random.get_rng_state(),
        },
    )
    save(
        "collections.pt",
        {
            "od": collections.OrderedDict(a=1),
            "dd": collections.defaultdict(list, a=[1]),
            "dt": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
            "d": datetime.date(2020, 1, 1),
            "t": datetime.time(1, 2),
            "td": datetime.timedelta(1),
        },
    )
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    save("optimizer.pt", opt.state_dict())
    save("scheduler.pt", torch.optim.lr_scheduler.StepLR(opt, 1).state_dict())
    try:
        from transformers import TrainingArguments

        save("training_args.bin", TrainingArguments(output_dir=str(root / "o"), report_to=[]))
    except ImportError:
        pass
    for proto in (2, 3, 4, 5):
        out[f"arrays_p{proto}.joblib"] = root / f"arrays_p{proto}.joblib"
        joblib.dump(
            {
                "a": np.arange(10.0),
                "b": np.ones((3, 3), dtype=np.int32),
                "f": np.asfortranarray(np.ones((2, 3))),
                "o": np.array([1, "x"], dtype=object),
            },
            out[f"arrays_p{proto}.joblib"],
            protocol=proto,
        )
    for proto in range(6):
        out[f"mixed_p{proto}.pkl"] = root / f"mixed_p{proto}.pkl"
        out[f"mixed_p{proto}.pkl"].write_bytes(
            pickle.dumps(
                {
                    "gen": np.random.default_rng(1),
                    "ns": argparse.Namespace(a=1),
                    "p": pathlib.PurePosixPath("x"),
                    "od": collections.OrderedDict(b=2),
                    "a": np.zeros(3),
                },
                protocol=proto,
            )
        )
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.zeros(3)}, checkpoint_id=str(root / "dcp"))
    out["dcp"] = root / "dcp"
    return out


@pytest.fixture(scope="module")
def benign_files(tmp_path_factory):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _benign_files(tmp_path_factory.mktemp("benign_parity"))


BENIGN = (
    [
        "namespace.pt",
        "paths.pt",
        "rng.pt",
        "rng_legacy.pt",
        "rng_state.pth",
        "collections.pt",
        "optimizer.pt",
        "scheduler.pt",
        "training_args.bin",
        "dcp",
    ]
    + [f"arrays_p{p}.joblib" for p in (2, 3, 4, 5)]
    + [f"mixed_p{p}.pkl" for p in range(6)]
)


@pytest.mark.parametrize("name", BENIGN)
def test_benign_lookalike_is_safe(name, benign_files):
    if name not in benign_files:
        pytest.skip("transformers not installed")
    report = keishiki.scan(benign_files[name])
    assert report.verdict == "safe", [
        f.to_dict() for f in report.findings if f.severity != "safe"
    ] + report.files[0].errors
    assert report.files and all(fr.scanned for fr in report.files if fr.kind != "zip")


class _Spy(pickle._Unpickler):
    """The real (pure-Python) loader, recording the names it imports (benign files only),
    after the py2 renaming its own find_class applies below protocol 3."""

    seen: set

    def find_class(self, module, name):
        import _compat_pickle

        resolved = (module, name)
        if self.proto < 3:
            resolved = _compat_pickle.NAME_MAPPING.get(
                resolved, (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
            )
        self.seen.add(".".join(resolved))
        return super().find_class(module, name)


@pytest.mark.parametrize("proto", range(6))
def test_named_globals_equal_what_pickle_load_imports(proto, benign_files):
    path = benign_files[f"mixed_p{proto}.pkl"]
    with open(path, "rb") as fh:
        spy = _Spy(fh)
        spy.seen = set()
        spy.load()
    report = keishiki.scan(path)
    named = {f.global_ for f in report.findings if f.opcode in ("GLOBAL", "STACK_GLOBAL", "INST")}
    assert named == spy.seen


def test_joblib_dump_is_read_to_its_end_as_joblib_reads_it(benign_files):
    report = keishiki.scan(benign_files["arrays_p4.joblib"])
    fr = report.files[0]
    assert report.verdict == "safe" and not fr.errors
    assert any("joblib.load reads this joblib dump to its end" in f.reason for f in fr.findings)


@pytest.mark.parametrize("method", ["zlib", "gzip", "bz2", "lzma", "xz"])
def test_compressed_joblib_is_decompressed_and_judged(method, tmp_path):
    """joblib.load picks a decompressor by the first bytes, whatever the name."""
    import joblib
    import numpy as np

    benign = tmp_path / "ok.joblib"
    joblib.dump(
        {"a": np.arange(100.0), "o": np.array([1, "x"], dtype=object)}, benign, compress=(method, 3)
    )
    assert keishiki.scan(benign).verdict == "safe"
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model.bin"  # no joblib extension: the bytes decide
    joblib.dump(
        {"a": np.arange(3.0), "x": Reduce(os.system, (_cmd(marker),))}, evil, compress=(method, 3)
    )
    report, dangerous = _scan(evil)
    assert report.verdict == "dangerous" and "posix.system" in dangerous
    assert _runs(evil, "joblib", marker)


# ---- bounds: the C unpickler never gets bytes it would allocate absurdly for ---------------


@pytest.mark.parametrize(
    "data,words",
    [
        (b"\x80\x02}r\xff\xff\xff\x7f.", "memo index"),  # 16 GiB memo array
        (b"\x80\x02}p99999999999\n.", "memo index"),  # same, text PUT
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc", ""),  # BINBYTES8 2^60
        (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"x" * 64, ""),  # BINUNICODE8 1 TiB
    ],
)
def test_absurd_sizes_are_errors_not_allocations(data, words, tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    report = keishiki.scan(path)
    assert report.verdict == "error"
    assert words in " ".join(report.files[0].errors)


def test_findings_before_a_break_count(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(P4 + sg("os", "system") + u("x") + b"\x85R" + b"\xff garbage")
    report, dangerous = _scan(path)
    assert "os.system" in dangerous and report.files[0].errors


def test_frame_crossing_opcode_is_not_called_safe(tmp_path):
    """An opcode that runs past its FRAME: the C unpickler drops the frame's rest, the
    Python one raises; the scan refuses to pick one reading."""
    frame = b"\x8c\x05ab"  # SHORT_BINUNICODE of 5 bytes, cut by the frame's end
    path = tmp_path / "f.pkl"
    path.write_bytes(b"\x80\x04\x95" + struct.pack("<Q", len(frame)) + frame + b"cde.")
    report = keishiki.scan(path)
    assert report.verdict == "error" and "FRAME" in report.files[0].errors[0]


def test_scan_time_on_a_1000_tensor_data_pkl_is_reported(tmp_path):
    """Measured, not asserted (see the report): the C unpickler reads it whole."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pt"
    torch.save({f"layers.{i}.weight": torch.zeros(2, 2) for i in range(1000)}, path)
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        (tmp_path / "data.pkl").write_bytes(zf.read(name))
    report = keishiki.scan(tmp_path / "data.pkl")
    assert report.verdict == "safe"
    assert sum(f.global_ == "torch._utils._rebuild_tensor_v2" for f in report.findings) == 1
    assert os.path.getsize(tmp_path / "data.pkl") > 50_000


class _CSpy(pickle.Unpickler):
    """The C unpickler (pickle.load, torch.load), recording the names it imports."""

    seen: set

    def find_class(self, module, name):
        self.seen.add(f"{module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("name", ["mixed_p3.pkl", "mixed_p4.pkl", "mixed_p5.pkl"])
def test_named_globals_equal_what_the_c_unpickler_imports(name, benign_files):
    path = benign_files[name]
    with open(path, "rb") as fh:
        spy = _CSpy(fh)
        spy.seen = set()
        spy.load()
    named = {
        f.global_
        for f in keishiki.scan(path).findings
        if f.opcode in ("GLOBAL", "STACK_GLOBAL", "INST")
    }
    assert named == spy.seen


def test_scanning_never_imports_the_named_module(tmp_path):
    path = tmp_path / "t.pkl"
    path.write_bytes(g0("this", "d") + b")R" + P4 + sg("antigravity", "geohash") + b")R.")
    assert "this" not in sys.modules and "antigravity" not in sys.modules
    report = keishiki.scan(path)
    assert {"this.d", "antigravity.geohash"} <= {f.global_ for f in report.findings}
    assert report.verdict == "unknown"
    assert "this" not in sys.modules and "antigravity" not in sys.modules


def test_opcode_soup_never_escapes_and_leaves_copyreg_clean():
    """Random streams drawn from opcode bytes (so parses go deep): a report, never an
    exception, and no stand-in left in copyreg's extension cache."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from keishiki._scan.findings import FileReport
    from keishiki._scan.oplex import OPCODE_BYTES
    from keishiki._scan.pickles import Where, scan_blob

    alphabet = sorted(OPCODE_BYTES) + [0, 1, 2, 10, 255]
    copyreg.add_extension("collections", "OrderedDict", 0x7C)

    @settings(
        max_examples=300,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(st.sampled_from(alphabet), max_size=300))
    def run(ops):
        report = FileReport("soup")
        scan_blob(memoryview(b"\x80\x04" + bytes(ops)), Where("soup"), report, time.monotonic() + 5)
        assert report.verdict in ("safe", "unknown", "dangerous", "error")
        assert not copyreg._extension_cache

    try:
        run()
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 0x7C)
