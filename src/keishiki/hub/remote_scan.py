"""``keishiki scan hf://org/name[@rev]``: a safety verdict for a Hub repository without
downloading its weights.

Every file a loader might unpickle or run is copied into a *sparse local temporary copy*
(a temp file of the remote size with only the fetched ranges written) and judged by the
same :func:`keishiki._scan.scanner.scan_file` a local file gets:

- a zip (torch ``*.bin``/``*.pt``/``*.pth``/``*.ckpt``, TorchScript): the end record and
  the central directory (read from the end of the file), then of every member its local
  header, and its whole data unless it is a tensor storage (``data/N``), whose first bytes
  only are read (the scanner checks them for the NumPy magic and skips them otherwise).
  Every local header is checked to be where the directory says before the scan runs: a
  member that cannot be located by range makes the file an error, never "safe";
- a pickle that is not a zip, or a zip with something in front of it, is fetched whole up
  to :data:`WHOLE_LIMIT` bytes; a larger one is an error (pull it to scan it);
- ``config.json``, ``tokenizer_config.json`` and the other configs ``auto_map`` may sit
  in, ``chat_template.json``, ``*.index.json``, ``*.py``, ``*.jinja`` are fetched whole
  (other JSON, ``tokenizer.json`` included, carries no code and is not fetched);
- safetensors and GGUF: their headers through :mod:`.headers` (a GGUF chat template is
  judged as the local scan judges it); ``*.onnx`` up to :data:`WHOLE_LIMIT` whole;
- any other file (``README.md``, ``weights.data``, ``model.tar``): its first 512 bytes and
  its tail, then fetched as above when they show a zip, a pickle, a NumPy array, a tar or a
  joblib-compressed stream (the local scan judges every file by its bytes, whatever its name).

Paths in the report are ``hf://org/name@<commit12>/file``; ``report.remote`` holds what the
look cost (``requests``, ``bytes_read``, ``response_bytes``, ``weight_bytes``).
"""

from __future__ import annotations

import posixpath
import struct
import tempfile
from pathlib import Path

from .._scan.findings import FileReport, Finding, ScanReport
from ..errors import CorruptFile, HubError, KeishikiError
from . import _hf
from .ranged import MAX_JSON_BYTES, RangedRepo, Traffic

WHOLE_LIMIT = 16 * 1024 * 1024  # a non-zip pickle / ONNX graph read whole up to this size
MEMBER_LIMIT = 64 * 1024 * 1024  # a zip member (pickle, code) read whole up to this size
SMALL_TAIL = 1024  # first read from the end: the end record(s)
TAIL = 64 * 1024 + 22  # then, if none is there: the end record behind a comment
MERGE_GAP = 4096  # ranges this close are fetched as one request
FETCH_PIECE = 8 * 1024 * 1024  # the most one request asks for (and memory holds)
_PICKLE_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".joblib",
    ".dill",
    ".sav",
    ".p",
    ".mar",
    ".pt2",
    ".jit",
    ".zip",
    ".npy",
    ".npz",
    ".keras",
)
_TEXT_SUFFIXES = (".json", ".py", ".jinja")


class _Sparse:
    """A sparse local copy of one remote file: fetched ranges written, holes read as 0."""

    def __init__(self, repo: RangedRepo, name: str, path: Path):
        self.repo, self.name, self.path = repo, name, path
        self.size = repo.size(name)
        self.have: list[tuple[int, int]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(self.size)

    def fetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch ``[(start, end)]`` (merged when close, clipped to the file, minus what is
        already here) and write them into the copy."""
        want = sorted((max(0, a), min(self.size, b)) for a, b in ranges if b > a)
        merged: list[list[int]] = []
        for a, b in want:
            if merged and a <= merged[-1][1] + MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        with open(self.path, "r+b") as fh:
            for a, b in merged:
                if self.covered(a, b):
                    continue
                # in pieces: merged ranges (a zip's many members side by side) may add up
                # to any size, and each read is held in memory whole
                for start in range(a, b, FETCH_PIECE):
                    end = min(b, start + FETCH_PIECE)
                    fh.seek(start)
                    fh.write(self.repo.read(self.name, start, end - start))
                self.have.append((a, b))

    def covered(self, a: int, b: int) -> bool:
        pos = a
        for x, y in sorted(self.have):
            if x <= pos < y:
                pos = y
            if pos >= b:
                return True
        return pos >= b

    def read(self, a: int, n: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(a)
            return fh.read(n)


class _CannotJudge(Exception):
    """The file cannot be judged from ranges (an error for that file, never "safe")."""


def scan_remote(path: str) -> ScanReport:
    """Scan ``hf://org/name[@rev][/file]`` with range requests (nothing enters the cache).

    Returns:
        A :class:`~keishiki._scan.ScanReport` like a local scan's, with paths
        ``hf://org/name@<commit12>/file`` and ``report.remote`` (the cost of the look).

    Raises:
        HubError: repository, revision or file not found; gated; offline; unreachable.
    """
    spec = _hf.parse_hf_path(path)
    report = ScanReport()
    with (
        _hf.hub_errors(spec, remote=True),
        Traffic() as traffic,
        tempfile.TemporaryDirectory(prefix="keishiki-hfscan-") as tmp,
    ):
        repo = RangedRepo(spec)
        names = sorted(repo.sizes)
        if spec.path_in_repo:
            prefix = spec.path_in_repo
            names = [n for n in names if n == prefix or n.startswith(prefix + "/")]
            if not names:
                raise HubError(f"{repo.where(prefix)}: no such file in the repository")
        root = Path(tmp) / "repo"
        root.mkdir()
        for name in repo.sizes:  # every file, as holes: what a loader sees beside each file
            _placeholder(root, name, repo.sizes[name] or 0)
        label = f"hf://{spec.repo_id}@{repo.commit[:12]}"
        for name in names:
            fr = _scan_one(repo, name, root)
            if fr is not None:
                _relabel(fr, str(root / name), f"{label}/{name}")
                report.files.append(fr)
    weight_bytes = sum(n or 0 for f, n in repo.sizes.items() if _is_weights(f))
    report.remote = {  # type: ignore[attr-defined]
        "repo_id": spec.repo_id,
        "revision": spec.revision,
        "commit": repo.commit,
        "endpoint": _hf.endpoint(),
        "repo_bytes": sum(n or 0 for n in repo.sizes.values()),
        "weight_bytes": weight_bytes,
        "requests": traffic.requests,
        "bytes_read": repo.bytes_read,
        "response_bytes": traffic.response_bytes,
    }
    return report


def _placeholder(root: Path, name: str, size: int) -> None:
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise KeishikiError(f"{name!r}: a file name that leads out of the repository")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def _is_weights(name: str) -> bool:
    from .remote import _is_weights as weights

    return weights(name)


def _relabel(fr: FileReport, local: str, remote: str) -> None:
    fr.path = remote
    for f in fr.findings:
        f.file = f.file.replace(local, remote)
    fr.errors = [e.replace(local, remote) for e in fr.errors]
    fr.scanned = [s.replace(local, remote) for s in fr.scanned]


def _scan_one(repo: RangedRepo, name: str, root: Path) -> FileReport | None:
    """One file's report (None: a file no loader unpickles or runs, not listed)."""
    from .._scan import opt_in
    from .._scan.scanner import scan_file

    lower = name.lower()
    local = root / name
    size = repo.size(name)
    try:
        if lower.endswith(".safetensors"):
            from .headers import safetensors_header

            safetensors_header(repo, name)
            return FileReport(str(local), kind="safetensors")
        if lower.endswith(".gguf"):
            from .headers import gguf_header

            info = gguf_header(repo, name)
            fr = FileReport(str(local), kind="gguf")
            kv = (getattr(info, "gguf", None) or {}).get("kv") or {}
            for sev, subject, reason in opt_in.gguf_findings(kv):
                fr.add(Finding(str(local), "", None, "chat-template", subject, sev, reason))
            return fr
        if lower.endswith(_TEXT_SUFFIXES):
            if (
                lower.endswith(".json")
                and not lower.endswith(".index.json")
                and posixpath.basename(name) not in opt_in.AUTO_MAP_FILES | opt_in._TEMPLATE_FILES
            ):
                return None  # tokenizer.json, generation_config.json...: no code in them
            if size > MAX_JSON_BYTES:
                raise _CannotJudge(f"{size} bytes: larger than {MAX_JSON_BYTES} is not read")
            _Sparse(repo, name, local).fetch([(0, size)])
            fr = FileReport(str(local), kind=lower.rsplit(".", 1)[-1])
            fr.findings.extend(opt_in.file_findings(local))
            if lower.endswith(".index.json"):
                from .._scan.scanner import _check_shard_index

                _check_shard_index(local, fr)
            return fr if fr.findings or fr.errors else None
        if lower.endswith((".onnx", ".h5", ".hdf5")):
            if size > WHOLE_LIMIT:
                raise _CannotJudge(
                    f"a {lower.rsplit('.', 1)[-1]} file of {size:,} bytes is "
                    f"not read by range "
                    f"(limit {WHOLE_LIMIT:,}): pull it to scan it"
                )
            _Sparse(repo, name, local).fetch([(0, size)])
            return scan_file(local)
        # any other file: a local scan judges every file by its bytes (a pickle named
        # weights.data or model.tar is still what torch.load, pickle.load or joblib.load
        # runs), so its head and tail are read, and the file fetched when they look loadable
        if size == 0:
            return None
        named = lower.endswith(_PICKLE_SUFFIXES)
        if not _fetch_for_scan(_Sparse(repo, name, local), sniff=not named):
            return None
        fr = scan_file(local, explicit=named)
        return None if fr.skipped else fr
    except _CannotJudge as exc:
        return FileReport(str(local), errors=[f"{local}: {exc}"])
    except CorruptFile as exc:
        return FileReport(str(local), errors=[f"{local}: {exc}"])
    except HubError:
        raise
    except KeishikiError as exc:
        return FileReport(str(local), errors=[f"{local}: {exc}"])
    return None


# ---- what the scanner reads of a file -----------------------------------------------------------


def _fetch_for_scan(sp: _Sparse, sniff: bool = False) -> bool:
    """Fetch every byte :func:`scan_file` reads of ``sp``; raise :class:`_CannotJudge` when
    that cannot be bounded.  ``sniff``: a file whose name promises nothing; False when its
    bytes are nothing the scanner reads (:func:`_loadable`, no zip): not scanned, as a local
    scan of a folder skips it."""
    size = sp.size
    if size <= 4 * SMALL_TAIL:  # small: one request for all of it
        sp.fetch([(0, size)])
    sp.fetch([(0, min(size, 512)), (max(0, size - SMALL_TAIL), size)])
    cd = _central_directory(sp, SMALL_TAIL)
    if cd is None and size > SMALL_TAIL:  # an end record behind a comment, or no zip
        sp.fetch([(max(0, size - TAIL), size)])
        cd = _central_directory(sp, TAIL)
    head = sp.read(0, 512)
    if sniff and cd is None and not _loadable(head):
        return False
    if cd is None or head[:4] != b"PK\x03\x04":
        # not a zip, or something in front of one (torch.load reads that as a pickle)
        if size > WHOLE_LIMIT:
            what = "a zip with data in front of it" if cd else "a pickle that is not a zip"
            raise _CannotJudge(
                f"{what} ({size:,} bytes) is read whole only up to "
                f"{WHOLE_LIMIT:,} bytes: pull it to scan it"
            )
        sp.fetch([(0, size)])
        return True
    _fetch_zip(sp, cd)
    return True


def _loadable(head: bytes) -> bool:
    """Whether a file's first bytes are what the local scan reads whatever the name (its
    ``content`` sniff): a pickle, a NumPy array, a tar (torch's legacy format) or a
    joblib-compressed stream."""
    from .._scan import archives, compressed
    from .._scan.pickles import looks_like_pickle

    return (
        looks_like_pickle(head)
        or head[:6] == b"\x93NUMPY"
        or archives.looks_like_tar(head)
        or bool(compressed.joblib_compression(head))
    )


def _central_directory(sp: _Sparse, window: int) -> list[tuple[int, int]] | None:
    """The ranges that may hold the zip's central directory, as miniz (the offset the end
    record states) and ``zipfile`` (the directory right before the end record) find it;
    None when the last ``window`` bytes hold no end record."""
    tail_start = max(0, sp.size - window)
    tail = sp.read(tail_start, sp.size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    eocd = tail_start + at
    cd_size, cd_offset = struct.unpack("<II", tail[at + 12 : at + 20])
    sp.fetch([(max(0, eocd - 20 - 56), sp.size)])  # zip64 locator and record, if any
    loc = sp.read(eocd - 20, 20) if eocd >= 20 else b""
    z64_at = eocd - 20 - 56
    if loc[:4] == b"PK\x06\x07":
        (z64,) = struct.unpack("<Q", loc[8:16])
        if z64 + 56 <= sp.size:
            sp.fetch([(z64, z64 + 56)])
            z64_at = z64
    out = [(cd_offset, cd_offset + cd_size), (eocd - cd_size, eocd)]
    for rec_at in {z64_at, eocd - 20 - 56}:
        rec = sp.read(rec_at, 56) if rec_at >= 0 else b""
        if rec[:4] == b"PK\x06\x06":
            size64, offset64 = struct.unpack("<QQ", rec[40:56])
            out += [(offset64, offset64 + size64), (rec_at - size64, rec_at)]
    ranges = [(max(0, a), min(sp.size, b)) for a, b in out if b > a and a < sp.size]
    if sum(b - a for a, b in ranges) > 4 * MEMBER_LIMIT:
        raise _CannotJudge(
            f"a central directory larger than {MEMBER_LIMIT:,} bytes is not read by range"
        )
    return ranges


def _fetch_zip(sp: _Sparse, directory: list[tuple[int, int]]) -> None:
    from .._scan import archives, torch_archive

    sp.fetch(directory)
    with open(sp.path, "rb") as fh:
        try:
            listing = archives.list_zip(fh)
        except archives.ArchiveError as exc:
            raise _CannotJudge(f"zip directory unreadable by range: {exc}") from None
    lay = torch_archive.layout(listing)
    wanted: dict[int, int] = {}  # header offset -> data bytes the scanner reads
    for m in listing.members:
        if m.is_dir:
            continue
        storage = lay.is_storage(m)
        if storage and m.method == 0:
            n = min(m.compressed, 512)
        else:
            if m.compressed > MEMBER_LIMIT:
                raise _CannotJudge(
                    f"member {m.name!r} of {m.compressed:,} bytes is not read "
                    f"by range (limit {MEMBER_LIMIT:,})"
                )
            n = m.compressed
        wanted[m.header_offset] = max(wanted.get(m.header_offset, 0), n)
    guess = 30 + 256 + 128  # local header + name + extra (torch pads to 64 bytes)
    sp.fetch([(off, off + guess + n) for off, n in wanted.items()])
    more = []
    storages = {
        m.header_offset: m
        for m in listing.members
        if not m.is_dir and lay.is_storage(m) and m.method == 0
    }
    for off, n in wanted.items():
        head = sp.read(off, 30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise _CannotJudge(f"no local header at offset {off} where the directory points")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        data_at = off + 30 + name_len + extra_len
        m = storages.get(off)
        if (
            m is not None
            and sp.covered(data_at, data_at + 6)
            and sp.read(data_at, 6) == b"\x93NUMPY"
        ):
            if m.compressed > MEMBER_LIMIT:  # np.load would unpickle it: read it whole
                raise _CannotJudge(
                    f"member {m.name!r}: a NumPy array of {m.compressed:,} "
                    f"bytes is not read by range"
                )
            n = m.compressed
        end = data_at + n
        if end > sp.size:
            raise _CannotJudge(f"member at offset {off} runs past the end of the file")
        more.append((off, end))
    sp.fetch(more)
    for a, b in more:
        if not sp.covered(a, b):
            raise _CannotJudge(f"bytes {a}-{b} could not be fetched")
