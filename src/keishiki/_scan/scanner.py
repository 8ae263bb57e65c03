"""Walk files, folders and archives and send each piece of content to the right check.

Content decides, never the extension: a file is scanned as a zip when it has a zip
directory, as pickles when its bytes parse as one, whatever the first opcode (a zip with a
pickle in front is both: ``torch.load`` reads the pickle), as a NumPy file when it has the NumPy magic, and so
on, at any depth of nesting.  Nothing is imported from the file and nothing is loaded.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import mmap
import os
import re
import stat
import time
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..core.source import NONBLOCK
from ..errors import KeishikiError, PathNotFound
from . import archives, compressed, keras, npy, onnx_refs, opt_in, torch_archive, torchscript
from .findings import FileReport, Finding, ScanReport
from .oplex import BREAKS_AT_START
from .pickles import LEGACY_TAR_RECORDS, Where, looks_like_pickle, scan_blob, scan_legacy_tar_member

# a folder's file that is not the one the walk found (swapped since): not read
CHANGED = "changed while its folder was scanned (not read: it is another file than the one the folder held)"
FILE_SECONDS = 8.0  # time budget per file (the issue allows 10 s)
MAX_DEPTH = 4  # archives inside archives
_PICKLE_NAMES = (
    ".pkl",
    ".pickle",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
    ".joblib",
    ".dill",
    ".sav",
    ".p",
    ".mar",
    ".pt2",
    ".debug_pkl",
)
_MODEL_EXTS = _PICKLE_NAMES + (
    ".npy",
    ".npz",
    ".onnx",
    ".keras",
    ".h5",
    ".hdf5",
    ".safetensors",
    ".gguf",
    ".jit",
    ".msgpack",
    ".zip",
    ".tar",
    ".tflite",
    ".t7",
    ".pb",
    ".mlmodel",
    ".ggml",
    ".model",
)
_HDF5 = b"\x89HDF\r\n\x1a\n"
_NPY = b"\x93NUMPY"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class _Ctx:
    """State of one file's scan: its report and its time budget."""

    def __init__(self, report: FileReport):
        self.report = report
        self.deadline = time.monotonic() + FILE_SECONDS

    def finding(
        self, member: str, offset: int | None, opcode: str, subject: str, severity: str, reason: str
    ) -> None:
        self.report.add(
            Finding(self.report.path, member, offset, opcode, subject, severity, reason)
        )

    def error(self, member: str, message: str) -> None:
        where = self.report.path + (f"!{member}" if member else "")
        self.report.errors.append(f"{where}: {message}")


def _pickle(
    ctx: _Ctx,
    data,
    member: str,
    strict: bool,
    torchscript_ctx: bool = False,
    torch_file: bool = False,
) -> bool:
    """Scan ``data`` as pickle streams.  When not ``strict`` (the bytes only might be a
    pickle) and the first stream breaks without naming any global, the attempt is undone."""
    # (torch's text records "1", "little", "big" and digit serial numbers open that way)
    if not strict and len(data) and data[0] in BREAKS_AT_START:
        return False  # what the attempt below would undo, without reading it twice
    rep = ctx.report
    n_f, n_e, n_s = len(rep.findings), len(rep.errors), len(rep.scanned)
    where = Where(rep.path, member, torchscript_ctx, torch_file)
    capped = scan_blob(memoryview(data), where, rep, ctx.deadline)
    new = rep.findings[n_f:]
    # undone only when the loader imported nothing by name before failing (a msgpack map
    # opens with 0x82-0x84, an EXT opcode whose code no process registers).  Never when the
    # scan's own limit stopped the reading (the loader reads on), nor when a name was judged
    # dangerous: what the loader runs before it fails has run
    if (
        not strict
        and not capped
        and len(rep.errors) > n_e
        and not any(_names_a_global(f.global_) or _dangerous_name(f) for f in new)
        and len(rep.scanned) - n_s <= 1
    ):
        del rep.findings[n_f:]
        del rep.errors[n_e:]
        del rep.scanned[n_s:]
        return False
    return True


def _dangerous_name(finding: Finding) -> bool:
    """A global named by GLOBAL, STACK_GLOBAL or INST and judged dangerous (not an EXT code:
    a msgpack map opens with one, and no process registers it)."""
    return finding.severity == "dangerous" and finding.opcode in ("GLOBAL", "STACK_GLOBAL", "INST")


def _names_a_global(name: str) -> bool:
    """``module.name`` shaped like an importable name, also when the unpickler shortened it
    for the report (``"..."`` where more than ``MAX_NAME`` characters were cut)."""
    return bool(_IDENT.match(name) or _IDENT.match(name.replace("...", "").rstrip(".")))


def _npy(ctx: _Ctx, data, member: str) -> None:
    """A .npy whose dtype holds objects (numpy's own header parser decides, see
    :mod:`.npy`) holds a pickle after its header; a header numpy refuses is an error."""
    head = npy.read_header(data)
    if head.error:
        ctx.error(member, head.error)
        return
    if head.hasobject:
        ctx.finding(
            member,
            None,
            "npy",
            "numpy.object_",
            "safe",
            f"object array (dtype {head.descr}): its elements are a pickle "
            "(np.load needs allow_pickle=True)",
        )
        _pickle(ctx, memoryview(data)[head.data_offset :], member, strict=True)


def content(
    ctx: _Ctx,
    data,
    fp: BinaryIO,
    member: str,
    depth: int,
    name: str,
    torch_member: bool = False,
    ts: bool = False,
) -> str:
    """Scan one piece of content (a file or an archive member); return what it was."""
    head = bytes(data[:512])
    kinds = []
    if head[:2] == b"PK" or (len(data) > 22 and archives.is_zip(fp)):
        if depth >= MAX_DEPTH:
            ctx.error(member, f"archives nested deeper than {MAX_DEPTH}")
            return "zip"
        _zip(ctx, fp, member, depth)
        kinds.append("zip")
    if (
        not kinds
        and compressed.joblib_compression(head)
        and _joblib_compressed(ctx, data, member, name)
    ):
        kinds.append("joblib-compressed")  # pickle.load may still read the raw bytes: below
    if head[:6] == _NPY:
        _npy(ctx, data, member)
        kinds.append("npy")
    elif (
        name.lower().endswith((".npy", ".npz"))
        and "joblib-compressed" not in kinds
        and head[:4] not in (b"PK\x03\x04", b"PK\x05\x06")
    ):
        # np.load(allow_pickle=True) unpickles a file that does not start with the NumPy or
        # a zip magic, whatever its first byte (even with a zip appended behind the pickle)
        _pickle(ctx, data, member, True, ts, torch_member)
        kinds.append("pickle")
    elif looks_like_pickle(head) and head[:4] != b"PK\x03\x04":
        # torch.load treats a file starting with a zip local header as a zip, never a pickle
        # a member's raw tensor bytes may start with 0x80 by chance: there only the name
        # makes a failed parse an error (a stream naming no global cannot run anything)
        # a safetensors file whose header is 128, 384, ... 1408 bytes long starts with
        # 80 0N too (its little-endian length): a valid header makes that the reading
        strict = (
            name.lower().endswith(_PICKLE_NAMES)
            or (head[0] == 0x80 and not member and not _safetensors_header(data))
        ) and "joblib-compressed" not in kinds
        if _pickle(ctx, data, member, strict, ts, torch_member):
            kinds.append("pickle")
    if archives.looks_like_tar(head) and "zip" not in kinds:
        _tar(ctx, data, member, depth)
        kinds.append("tar")
    return "+".join(kinds)


def _joblib_compressed(ctx: _Ctx, data, member: str, name: str) -> bool:
    """joblib.load picks a decompressor by the first bytes and unpickles what comes out:
    so does the scan (False when the bytes do not decompress to something pickle-like)."""
    kind = compressed.joblib_compression(bytes(data[:8]))
    label = f"{member}<{kind}>" if member else f"<{kind}>"
    try:
        probe = compressed.decompress(data, kind, compressed.PROBE, partial=True)
        if not looks_like_pickle(probe[:2]):
            return False
        out = compressed.decompress(data, kind)
    except compressed.Undecodable as exc:
        if kind in ("lz4", "compat"):
            ctx.error(member, f"joblib {kind} compression is not read by the scan ({exc})")
            return True
        return False
    except OverflowError as exc:
        ctx.error(label, str(exc))
        return True
    strict = name.lower().endswith(_PICKLE_NAMES + (".joblib", ".z", ".gz", ".bz2", ".lzma", ".xz"))
    return _pickle(ctx, out, label, strict)


def _safetensors_header(data) -> bool:
    """True when ``data`` opens with a safetensors header: an 8-byte little-endian length
    that fits the file (and the reader's limit), then a JSON object of that length."""
    from ..formats.safetensors import MAX_HEADER_BYTES  # noqa: PLC0415 - scan loads alone

    if len(data) < 10:
        return False
    n = int.from_bytes(bytes(data[:8]), "little")
    if not 2 <= n <= min(len(data) - 8, MAX_HEADER_BYTES) or bytes(data[8:9]) != b"{":
        return False
    try:
        return isinstance(json.loads(bytes(data[8 : 8 + n])), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _zip(ctx: _Ctx, fp: BinaryIO, prefix: str, depth: int) -> None:
    try:  # both directories (miniz's for torch, zipfile's for numpy/Keras), torch's own view
        listing, lay, diff = torch_archive.views(fp)
    except archives.ArchiveError as exc:
        ctx.error(prefix, str(exc))
        return
    ctx.deadline += diff.import_seconds  # the first zip imports torch: not the file's time
    members = listing.members
    names = [m.name for m in members]
    ts = torchscript.is_torchscript(names)
    torch_zip = ts or lay.is_torch  # a data.pkl torch finds: case-insensitive, in its folder
    # Keras builds the model from config.json before it reads any weight (or metadata)
    keras_zip = any(n.lower() == "config.json" for n in names)
    join = (lambda n: f"{prefix}!{n}") if prefix else (lambda n: n)
    code: list[tuple[str, str]] = []  # (path, text) of the TorchScript code members read
    # lay.is_storage(m), with the archive-wide half of the test taken once, not per member
    storage_name, record_of = torch_archive._STORAGE.match, lay.record_of  # noqa: SLF001
    is_storage = (
        (lambda m: (r := record_of(m)) is not None and storage_name(r) is not None)
        if lay.is_torch
        else (lambda _m: False)
    )
    heads = torch_archive.MemberHeads(fp, members)  # storages' first bytes, many per read
    for m in members:
        path = join(m.name)
        bad = archives.unsafe_name(m.name)
        if bad:
            ctx.finding(path, m.header_offset, "zip-member", m.name, "dangerous", bad)
        # torch never unpickles storages (raw tensor bytes); np.load of the same zip would
        # unpickle a member with the NumPy magic and an object dtype, so those are read
        if m.is_dir or (is_storage(m) and heads.read(m, 6) != _NPY):
            continue
        if time.monotonic() > ctx.deadline:
            ctx.error(prefix, "scan stopped at the time limit")
            break
        head = archives.read_zip_head(fp, m, 512)
        lower = m.name.lower()
        is_code = ts and torchscript.is_code_member(m.name)
        is_config = keras_zip and m.name.lower() == "config.json"
        # torch.export graphs name their ops in JSON: custom namespaces need native code
        is_export_graph = lower.endswith(".json") and (
            "/models/" in f"/{m.name}" or "serialized_exported_program" in lower
        )
        interesting = (
            is_code
            or is_config
            or is_export_graph
            or lower.endswith(_PICKLE_NAMES)
            or looks_like_pickle(head)
            or head[:2] == b"PK"
            or head[:6] == _NPY
            or archives.looks_like_tar(head)
        )
        if not interesting:
            continue
        try:
            blob = archives.read_zip_member(fp, m)
        except archives.ArchiveError as exc:
            ctx.error(path, str(exc))
            continue
        if is_code or is_config or is_export_graph:
            ctx.report.scanned.append(path)
        if is_code:
            code.append((path, blob.decode("utf-8", "replace")))
        elif is_export_graph:
            text = blob.decode("utf-8", "replace")
            for sev, subject, reason in torchscript.code_findings(m.name, text):
                ctx.finding(path, None, "torchscript-code", subject, sev, reason)
        elif is_config:
            _keras_config(ctx, keras.parse_config(blob), path)
        else:
            content(ctx, blob, io.BytesIO(blob), path, depth + 1, m.name, torch_zip, ts)
    _zip_differential(ctx, diff, join, depth, torch_zip, ts, code)
    if ts:
        _torchscript_code(ctx, prefix, names, code)


def _zip_differential(
    ctx: _Ctx, diff, join, depth: int, torch_zip: bool, ts: bool, code: list[tuple[str, str]]
) -> None:
    """torch's own reader disagrees with keishiki's: dangerous, and what torch reads is
    scanned as well (see :mod:`.torch_archive`)."""
    for member, reason in diff.findings:
        ctx.finding(
            join(member),
            None,
            "zip-differential",
            member,
            "dangerous",
            f"archive parser differential: {reason}",
        )
    for member, blob in diff.extra:
        if blob is None:
            continue
        if torchscript.is_code_member(member):
            code.append((join(member), blob.decode("utf-8", "replace")))
        else:
            content(ctx, blob, io.BytesIO(blob), join(member), depth + 1, member, torch_zip, ts)


def _torchscript_code(
    ctx: _Ctx, prefix: str, names: list[str], code: list[tuple[str, str]]
) -> None:
    """Judge an archive's code files together: every call allowlisted makes the code safe;
    otherwise each call off the list is a finding.  Code not read (damaged member, time
    limit) or mobile bytecode (the lite interpreter runs its own operator list) is unknown."""
    total = sum(1 for n in names if torchscript.is_code_member(n))
    found = torchscript.archive_findings(code, ctx.deadline)
    for path, sev, subject, reason in found:
        ctx.finding(path, None, "torchscript-code", subject, sev, reason)
    mobile = [n for n in names if n.lower().endswith("bytecode.pkl")]
    if len(code) < total:
        ctx.finding(
            prefix,
            None,
            "torchscript",
            "torchscript-code",
            "unknown",
            f"TorchScript archive: {total - len(code)} of {total} code files could not "
            "be read, and torch.jit.load would compile them unjudged",
        )
    elif mobile:
        where = f"{prefix}!{mobile[0]}" if prefix else mobile[0]
        ctx.finding(
            where,
            None,
            "torchscript",
            "mobile-bytecode",
            "unknown",
            "TorchScript mobile bytecode: the lite interpreter runs its "
            "operator list, which keishiki does not judge",
        )
    elif not found:
        listed = ", ".join(p for p, _ in code[:8]) + (" …" if len(code) > 8 else "")
        ctx.finding(
            prefix,
            None,
            "torchscript",
            "torchscript-code",
            "safe",
            f"TorchScript code: {total} files, every call allowlisted: {listed}",
        )


def _tar(ctx: _Ctx, data, prefix: str, depth: int) -> None:
    try:
        entries = archives.tar_members(bytes(data))
    except archives.ArchiveError as exc:
        ctx.error(prefix, str(exc))
        return
    join = (lambda n: f"{prefix}!{n}") if prefix else (lambda n: n)
    # a pre-0.4 torch checkpoint: torch.load reads these members in its own layout
    legacy = {"pickle", "storages"} <= {name for name, _blob, _kind in entries}
    for name, blob, kind in entries:
        path = join(name)
        bad = archives.unsafe_name(name)
        if bad:
            ctx.finding(path, None, "tar-member", name, "dangerous", bad)
        if kind == "link" and blob is not None and archives.link_escapes(name, blob.decode()):
            ctx.finding(
                path,
                None,
                "tar-member",
                name,
                "dangerous",
                f"link to {blob.decode()!r} outside the archive",
            )
        elif kind == "file" and blob is not None and legacy and name in LEGACY_TAR_RECORDS:
            scan_legacy_tar_member(
                name, memoryview(blob), Where(ctx.report.path, path), ctx.report, ctx.deadline
            )
        elif kind == "file" and blob is not None and depth + 1 < MAX_DEPTH:
            content(ctx, blob, io.BytesIO(blob), path, depth + 1, name)


def _keras_config(ctx: _Ctx, config, member: str) -> None:
    if config is None:
        ctx.error(member, "Keras config is not valid JSON")
        return
    for sev, subject, reason in keras.config_findings(config):
        ctx.finding(member, None, "keras-config", subject, sev, reason)


def _onnx(ctx: _Ctx, path: Path, data, named_onnx: bool = False) -> bool:
    try:
        # indexing bytes is about twice as fast as a view; a model with embedded weights
        # (large) stays a view of the map
        refs = onnx_refs.external_locations(
            bytes(data) if len(data) <= 64 << 20 else memoryview(data)
        )
    except onnx_refs.NotOnnx as exc:
        if named_onnx:  # an .onnx file whose external-data paths cannot be checked
            ctx.error("", f"ONNX protobuf unreadable ({exc}): external-data paths not checked")
            return True
        return False
    judged: dict[str, tuple[str, str]] = {}  # most tensors share one data file: resolve once
    for tensor, location in refs:
        if location not in judged:
            judged[location] = onnx_refs.judge_location(path, location)
        sev, reason = judged[location]
        ctx.finding("", None, "onnx-external-data", location, sev, f"tensor {tensor!r}: {reason}")
    return True


def _identify(path: Path) -> str | None:
    """The format id keishiki's sniffers give ``path`` (labels only; the verdict never
    rests on it), None when unknown."""
    try:
        from ..formats import identify  # noqa: PLC0415 - keeps scan importable alone

        return identify(path).format
    except KeishikiError:
        return None
    except Exception:  # a sniffer bug must not take the scan down
        return None


def _read_container(ctx: _Ctx, path: Path) -> None:
    """Read a data-only format with keishiki's reader (header-only: cheap).  A container it
    cannot parse is an error ("could not scan", exit 2), never a clean bill of health; a
    Torch7 file's Lua functions are findings (Lua's torch.load loads their bytecode with
    ``loadstring``, and crafted LuaJIT bytecode escapes the VM: code, not data)."""
    from ..core.source import Source  # noqa: PLC0415
    from ..formats import identify, read  # noqa: PLC0415

    try:
        with Source(path) as src:
            info = read(src, identify(src))
    except KeishikiError as exc:
        ctx.report.errors.append(str(exc))
        return
    except Exception as exc:  # a reader bug is still not a verdict of "safe"
        ctx.report.errors.append(f"{path}: could not be parsed ({type(exc).__name__})")
        return
    # a GGUF's chat template is rendered by llama.cpp and friends: judged like HF's
    kv = (getattr(info, "gguf", None) or {}).get("kv") or {} if info.format == "gguf" else {}
    for sev, subject, reason in opt_in.gguf_findings(kv):
        ctx.finding("", None, "chat-template", subject, sev, reason)
    t7 = info.details.get("torch7", {}) if info.format == "torch7" else {}
    for fn in t7.get("functions", []):
        ctx.finding(
            "",
            None,
            "lua-function",
            fn["path"],
            "unknown",
            f"Lua bytecode ({fn['bytecode_bytes']} bytes): Lua torch.load loads it "
            "as code; keishiki cannot judge what it does",
        )
    if t7.get("n_functions", 0) > len(t7.get("functions", [])):
        ctx.finding(
            "",
            None,
            "lua-function",
            "...",
            "unknown",
            f"{t7['n_functions'] - len(t7['functions'])} more Lua functions",
        )


def scan_file(path: Path, explicit: bool = True, seen: tuple[int, int] | None = None) -> FileReport:
    """Scan one file.  ``explicit``: named by the user (an unrecognised file is an error)
    rather than found in a folder (an unrecognised file is skipped).  ``seen``: the (device,
    inode) a folder's walk found at ``path``; another file there now (swapped, or a folder on
    the way swapped for a link, after the walk) is an error, and not read."""
    report = FileReport(str(path))
    ctx = _Ctx(report)
    try:
        if seen is None:
            fh = open(path, "rb")
        else:  # (never waits on a FIFO put there meanwhile)
            fh = os.fdopen(os.open(path, os.O_RDONLY | NONBLOCK), "rb")
        with fh:
            st = os.fstat(fh.fileno())
            if seen is not None and (
                (st.st_dev, st.st_ino) != seen or not stat.S_ISREG(st.st_mode)  # (ino reused)
            ):
                report.errors.append(f"{path}: {CHANGED}")
                return report
            if st.st_size == 0:
                if explicit:
                    report.errors.append(f"{path}: empty file")
                else:
                    report.skipped = "empty file"
                return report
            try:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # emptied since the fstat above
                report.errors.append(f"{path}: {CHANGED}")
                return report
            view = memoryview(mm)
            try:
                report.kind = _scan_top(ctx, path, view, fh, explicit)
            except BaseException:
                # the exception's traceback may still hold slices of the view (Ctrl-C in
                # the middle of a reading): closing now would raise BufferError instead of
                # it; the map closes when the last slice goes
                with contextlib.suppress(BufferError):
                    view.release()
                    mm.close()
                raise
            view.release()
            mm.close()
    except OSError as exc:
        report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
    except (MemoryError, RecursionError) as exc:
        report.errors.append(f"{path}: {type(exc).__name__} while scanning (absurd sizes?)")
    return report


def _scan_top(ctx: _Ctx, path: Path, view, fh: BinaryIO, explicit: bool) -> str:
    report = ctx.report
    head = bytes(view[:512])
    kind = ""
    if head[:8] == _HDF5:
        _h5(ctx, path, view)
        kind = "hdf5"
    elif (
        path.suffix.lower() == ".onnx"
        and not looks_like_pickle(head[:2])
        and head[:2] != b"PK"
        and _onnx(ctx, path, view, named_onnx=True)
    ):
        kind = "onnx"
    else:
        kind = content(ctx, view, fh, "", 0, path.name)
        if not kind and head[:1] == b"\x08" and _onnx(ctx, path, view):
            kind = "onnx"
    if kind:
        if (
            kind.startswith("zip")
            and not kind.startswith("zip+")
            and not report.scanned
            and not report.findings
            and not report.errors
        ):
            report.findings.append(
                Finding(
                    str(path), "", None, "zip", "", "safe", "zip archive without pickles or code"
                )
            )
        return kind
    fmt = _identify(path)
    if fmt in ("pickle", "pytorch"):
        # keishiki's own reader takes it for a pickle the attempt above gave up on: judged
        # as one, whatever the undone reading said
        _pickle(ctx, view, "", strict=True)
        return fmt
    if fmt:
        _read_container(ctx, path)
        return fmt
    if explicit:
        report.errors.append(
            f"{path}: not a pickle, archive or model file keishiki recognises (nothing to scan)"
        )
    else:
        report.skipped = (
            "not a pickle, archive or model file"
            if path.suffix.lower() in _MODEL_EXTS
            else "not a model file"
        )
    return ""


def _h5(ctx: _Ctx, path: Path, view) -> None:
    from ..core.gate import escape_reason

    refs, ref_error = keras.h5_references(str(path))
    for name, target in refs:  # judged by the path gate's rule, as ONNX external data
        reason = escape_reason(path.parent, target)
        ctx.finding(
            name,
            None,
            "hdf5-reference",
            target,
            "dangerous" if reason else "safe",
            f"h5py reads this object from {target!r} (Keras load_model/load_weights "
            f"follows it)" + (f": {reason}" if reason else ", inside the folder"),
        )
    if ref_error:
        ctx.error("", ref_error)
    config, error = keras.h5_config(str(path))
    if error:
        ctx.error("", error)
        return
    if config is not None:
        _keras_config(ctx, config, "model_config")
    elif keras.raw_lambda_hint(bytes(view[: 1 << 22])):
        ctx.finding(
            "",
            None,
            "keras-config",
            "Lambda",
            "dangerous",
            "the HDF5 attributes mention a Lambda layer (serialized Python)",
        )


def scan_folder(root: Path, advance=None) -> list[FileReport]:
    """Scan every file under ``root`` (links are not followed; a link that leads outside the
    folder is a finding, by the path gate's rule: :func:`keishiki.core.gate.escape_reason`,
    which lets a Hugging Face cache snapshot link into its own repository's ``blobs/``).
    ``advance(1)``, when given, is called after each file (the CLI's progress bar)."""
    return run_jobs(folder_jobs(root), advance)


# A job of a scan: a file to scan (its path; whether the user named it or it was found in a
# folder; the (device, inode) the walk found there, so that a file swapped after the walk is
# not read), a report already made while walking (a link), or None (a name that is neither:
# counted by the progress bar, nothing to report)
Job = tuple[str, bool, tuple[int, int] | None] | FileReport | None


def folder_jobs(root: Path) -> Iterator[Job]:
    """The jobs of :func:`scan_folder`, in its order (names sorted, folder by folder): the
    whole walk can come before any file is read (:mod:`.parallel`), so each file's identity
    is kept for :func:`scan_file` to check."""
    from ..core.gate import escape_reason

    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            try:  # one lstat for both what it is and, when a file, which file
                own = path.lstat()
            except OSError:  # gone since the listing
                yield None
                continue
            is_link = stat.S_ISLNK(own.st_mode)
            if is_link:
                reason = escape_reason(root, path.relative_to(root).as_posix())
                if reason:
                    rep = FileReport(str(path), kind="symlink")
                    rep.add(
                        Finding(
                            str(path),
                            "",
                            None,
                            "symlink",
                            os.readlink(path),
                            "dangerous",
                            f"symlink {reason}: a loader would read that file",
                        )
                    )
                    yield rep
                    continue
                if path.resolve().is_relative_to(real_root) or not path.is_file():
                    rep = FileReport(str(path), kind="symlink")
                    _opt_in_code(path, rep)  # (its target is scanned on its own)
                    yield rep if rep.findings else None
                    continue
                # a cache snapshot's link into blobs/: scanned through the link, by its name
            try:  # a cache snapshot's link into blobs/: its target's (else not followed)
                st = path.stat() if is_link else own
            except OSError:
                st = None
            regular = st is not None and stat.S_ISREG(st.st_mode)
            yield (str(path), False, (st.st_dev, st.st_ino)) if regular else None


def scan_job(job: tuple[str, bool, tuple[int, int] | None]) -> FileReport:
    """Scan the file of one job: named by the user, or found in a folder (then a shard
    index's names and code a loader runs by opt-in are judged too)."""
    path_name, explicit, seen = job
    path = Path(path_name)
    rep = scan_file(path, explicit=explicit, seen=seen)
    if not explicit and not any(e.endswith(CHANGED) for e in rep.errors):
        if path.name.endswith(".index.json"):
            _check_shard_index(path, rep)
        _opt_in_code(path, rep)
    return rep


def run_jobs(jobs: Iterable[Job], advance=None) -> list[FileReport]:
    """Each job's report, in order, in this process (``advance(1)`` after each job)."""
    out: list[FileReport] = []
    for job in jobs:
        if isinstance(job, tuple):
            out.append(scan_job(job))
        elif job is not None:
            out.append(job)
        if advance is not None:
            advance(1)
    return out


def _opt_in_code(path: Path, rep: FileReport) -> None:
    """Code a loader runs by opt-in (``auto_map``, ``*.py``, chat templates that leave the
    jinja2 sandbox): named as ``unknown`` findings on the file that carries it."""
    found = opt_in.file_findings(path)
    if found:
        rep.findings.extend(found)
        rep.skipped = ""


def _check_shard_index(path: Path, rep: FileReport) -> None:
    """A sharded checkpoint's index names the shard files a loader opens: absolute names,
    ``..`` and links leading out of the folder make it read files elsewhere (the cousin of
    ONNX's external-data traversal, CVE-2024-27318).  The path gate's own check."""
    from ..core.gate import index_escapes

    for shard, reason in index_escapes(path.parent, path):
        if not shard:
            rep.errors.append(f"{path}: {reason}")
        else:
            rep.add(
                Finding(
                    str(path),
                    "",
                    None,
                    "shard-index",
                    shard,
                    "dangerous",
                    f"{reason}: a loader would open a file outside the model's folder",
                )
            )
    rep.skipped = "" if rep.findings or rep.errors else rep.skipped


def scan_paths(paths, advance=None, workers: int = 1) -> ScanReport:
    """Scan files and folders; see :func:`keishiki._scan.scan` (``advance``: see
    :func:`scan_folder`).  ``workers`` > 1 scans the files in that many processes forked
    from this one (:mod:`.parallel`: only where forking is safe, else here)."""
    jobs: list[Iterable[Job]] = []
    for p in paths:
        if isinstance(p, str) and not p:  # Path("") is ".": the working folder, never asked for
            raise PathNotFound(p, "an empty path ('') names no file or folder")
        path = Path(p)
        if not path.exists():
            if path.is_symlink():
                broken = FileReport(str(path), kind="symlink", errors=[f"{path}: broken symlink"])
                jobs.append([broken])
                continue
            raise PathNotFound(path)
        jobs.append(folder_jobs(path) if path.is_dir() else [(str(path), True, None)])
    every = itertools.chain.from_iterable(jobs)
    if workers > 1 and advance is None:
        from .parallel import run_forked

        return ScanReport(files=run_forked(list(every), workers))
    return ScanReport(files=run_jobs(every, advance))
