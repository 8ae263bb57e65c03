"""Remote files described by keishiki's own local readers, over a sparse local copy.

``info hf://org/name/model.onnx`` (or a torch ``.bin``/``.pt`` zip) does not download the
file: a temporary *sparse* copy of its remote size is made (:class:`.remote_scan._Sparse`),
the bytes the reader needs are fetched into it by range, and the same
:func:`keishiki.inspect` a local file gets reads it.  What is fetched:

- a torch zip: what the scanner reads (the end record, the central directory, every local
  header, ``data.pkl`` and the other small members, the first bytes of each storage): the
  pickle gives every tensor's dtype, shape and storage, and the verdict is the one
  ``scan hf://`` gives.  A pickle that is not a zip is fetched whole up to 16 MiB.
- an ONNX file: the protobuf walk of :mod:`keishiki.formats.onnx_proto` runs once over a
  reader whose reads fetch 64 KiB blocks by range, so tensor payloads (``raw_data``) are
  skipped as they are locally; external data files are holes of their remote size (their
  sizes are what the reader checks).

The copy lives in a temporary folder that is deleted before the answer returns; the
:class:`~keishiki.core.model.ModelInfo` keeps no loader (reading data means pulling).
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

from ..core.model import ModelInfo
from ..errors import CorruptFile, InvalidRequest
from ..formats import onnx_proto as pb
from .ranged import RangedRepo
from .remote_scan import _CannotJudge, _fetch_for_scan, _placeholder, _Sparse

BLOCK = 64 * 1024  # an ONNX read fetches the aligned blocks around it

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def readable(name: str) -> bool:
    """Whether :func:`inspect_file` reads ``name`` (an ONNX file or a pickled checkpoint)."""
    return name.lower().endswith((".onnx", *PICKLE_SUFFIXES))


def inspect_file(repo: RangedRepo, name: str) -> ModelInfo:
    """Describe the repository file ``name`` with keishiki's local reader over a sparse copy.

    Raises:
        InvalidRequest: a file kind this does not read by range.
        CorruptFile: the bytes break the format, or cannot be read by range (a legacy
            pickle over 16 MiB: pull it).
    """
    from ..inspecting import inspect

    if not readable(name):
        raise InvalidRequest(
            f"{repo.where(name)}: keishiki reads .safetensors, .gguf, .onnx "
            f"and torch checkpoint headers remotely; `keishiki pull` the "
            f"repository to inspect other files"
        )
    with tempfile.TemporaryDirectory(prefix="keishiki-hfinfo-") as tmp:
        root = Path(tmp)
        folder = posixpath.dirname(name)
        for other, size in repo.sizes.items():  # the neighbours a reader checks, as holes
            if posixpath.dirname(other) == folder:
                _placeholder(root, other, size or 0)
        sparse = _Sparse(repo, name, root / name)
        try:
            if name.lower().endswith(".onnx"):
                _fetch_onnx(sparse)
            else:
                _fetch_for_scan(sparse)
        except _CannotJudge as exc:
            raise CorruptFile(repo.where(name), str(exc)) from None
        info = inspect(root / name)
    info.tensor_loader = None
    info.path = repo.where(name)
    return _relabel(info, str(root / name), repo.where(name))


def _fetch_onnx(sparse: _Sparse) -> None:
    """Fetch what the ONNX sniffer and reader read: the head, then every byte the protobuf
    walk touches (a parse error is the local reader's to report)."""
    sparse.fetch([(0, min(sparse.size, BLOCK))])
    try:
        pb.parse_model(_RangedProto(sparse))
    except pb.ProtoError:
        pass


class _RangedProto(pb.FileReader):
    """The ONNX reader's protobuf walk with reads from the Hub: a 64 KiB-aligned block at a
    time, written into the sparse copy as it arrives."""

    def __init__(self, sparse: _Sparse):
        super().__init__(-1, sparse.size)
        self.sparse = sparse

    def _pread(self, start: int, end: int) -> bytes:
        if end > self.size:
            raise pb.ProtoError(
                f"file ends inside a field ({self.size - start} of {end - start} bytes)", start
            )
        first, last = start // BLOCK * BLOCK, min(self.size, -(-end // BLOCK) * BLOCK)
        self.sparse.fetch([(first, last)])
        return self.sparse.read(start, end - start)


def _relabel(info: ModelInfo, local: str, remote: str) -> ModelInfo:
    """Remote names for the temporary paths the local reader and scanner recorded."""
    if info.safety:
        info.safety = _replace(info.safety, local, remote)
    info.warnings = [w.replace(local, remote) for w in info.warnings]
    return info


def _replace(value, local: str, remote: str):
    if isinstance(value, str):
        return value.replace(local, remote)
    if isinstance(value, list):
        return [_replace(v, local, remote) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, local, remote) for k, v in value.items()}
    return value
