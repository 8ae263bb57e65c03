"""The ONNX Model Hub's replacement: onnx.hub's ``list_models``, ``get_model_info``, ``load``
and ``download_model_with_test_data``, reading the zoo from the Hugging Face Hub.

``onnx.hub`` read ``ONNX_HUB_MANIFEST.json`` and the models from github.com/onnx/models with
its own ``urlopen`` client and cache (``~/.cache/onnx/hub``).  The zoo has been deprecated
and mirrored to the Hugging Face Hub, and onnx removed ``onnx.hub`` in 2026-02 (PR 7678,
"non-functional for an extended period and never adapted for Hugging Face").  Here every
file comes through ``huggingface_hub.hf_hub_download``, into the standard cache, with the
Hub's endpoint, token and offline settings; the manifest format and onnx.hub's matching
rules are kept (:mod:`.zoo_manifest`).

The default repository, :data:`DEFAULT_REPO`, is ``onnxmodelzoo/legacy_models``: the
Hugging Face repository the ONNX Model Zoo maintainers mirrored github.com/onnx/models into
when they deprecated it (2025-08; see iree-org/iree-test-suites#101, which moved its zoo
tests there, e.g. ``validated/vision`` at the same paths), so the manifest's
``model_path``s resolve there as they did on GitHub.  Any repository holding an
``ONNX_HUB_MANIFEST.json`` at its root works as ``repo=``.

What onnx.hub did not do, and this does: every file's sha256 is checked against the
manifest before it is returned or loaded, a file that fails is removed from the cache, a
manifest path that leads outside the repository is refused, the test-data archive is
extracted member by member under checks (:mod:`.zoo_archive`), and ``load`` passes the model
through keishiki's load gate (the scanner) first.  onnx.hub's interactive "this repository
is not trusted, continue? [y/n]" prompt is gone: the checksums and the scan stand in for it,
and ``silent`` only silences the progress bars.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import HubError, InvalidRequest
from . import _hf, zoo_archive, zoo_manifest
from .pull import ScannedReport
from .zoo_manifest import MANIFEST, ModelInfo

if TYPE_CHECKING:
    from .._scan.findings import ScanReport

DEFAULT_REPO = "onnxmodelzoo/legacy_models"
ZOO_PREFIX = "onnx-zoo:"
_MAX_MANIFEST_BYTES = 64 << 20  # the zoo's own is ~0.3 MB


def parse_repo(repo: str) -> _hf.RepoSpec:
    """``org/name[@rev]``, or onnx.hub's ``owner/name:ref`` spelling.

    Hub repository ids and git refs cannot hold ``:``, so ``owner/name:ref`` is read as
    ``owner/name@ref`` when it has no ``@``; with both it is ambiguous and refused.

    Raises:
        InvalidRequest: neither spelling.
    """
    if ":" in repo:
        name, _, ref = repo.partition(":")
        if "@" in repo or ":" in ref or not ref:
            raise InvalidRequest(
                f"{repo!r} is not a zoo repository: write ORG/NAME[@REV] "
                f"(or onnx.hub's OWNER/NAME:REF)"
            )
        repo = f"{name}@{ref}"
    return _hf.parse_repo(repo)


@dataclass(frozen=True)
class Manifest:
    """A zoo manifest as fetched: the repository, the commit it was read at (every model is
    then fetched at that same commit), its entries."""

    spec: _hf.RepoSpec
    commit: str
    entries: list[ModelInfo]

    @property
    def where(self) -> str:
        return self.spec.label


def manifest(repo: str = DEFAULT_REPO, force_reload: bool = False, silent: bool = True) -> Manifest:
    """Fetch (or find in the cache) and parse the ``ONNX_HUB_MANIFEST.json`` of ``repo``.

    Raises:
        HubError: repository or revision not found, no manifest, offline and not cached,
            unreachable, or a malformed manifest.
    """
    spec = parse_repo(repo)
    hub = _hf.hf()
    with (
        _hf.hub_errors(replace(spec, path_in_repo=MANIFEST)),
        _bars(silent),
        _hf.cache_headers_checked(),
    ):
        path = Path(
            hub.hf_hub_download(
                spec.repo_id, MANIFEST, revision=spec.revision, force_download=force_reload
            )
        )
    _check_cached(path, MANIFEST, spec.label)
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise HubError(f"{spec.label}: {MANIFEST} is larger than 64 MiB: not a zoo manifest")
    # hf_hub_download answers snapshots/<commit>/ONNX_HUB_MANIFEST.json
    return Manifest(spec, path.parent.name, zoo_manifest.parse(path.read_bytes(), spec.label))


def list_models(
    repo: str = DEFAULT_REPO, model: str | None = None, tags: Iterable[str] | None = None
) -> list[ModelInfo]:
    """The zoo's models named ``model`` (case-insensitive) and/or sharing a tag with ``tags``
    (case-insensitive), as onnx.hub's ``list_models``; nothing but the manifest is fetched.

    >>> [m.opset for m in keishiki.hub.list_models(model="mnist")]
    """
    return zoo_manifest.matching(manifest(repo).entries, model, tags)


def get_model_info(model: str, repo: str = DEFAULT_REPO, opset: int | None = None) -> ModelInfo:
    """The manifest entry for ``model`` (case-insensitive): the highest opset, or exactly
    ``opset`` (as onnx.hub: no nearest-lower fallback).

    Raises:
        HubError: no such model, or no version with that opset (the opsets are listed).
    """
    found = manifest(repo)
    return zoo_manifest.choose(found.entries, model, opset, found.where)


@dataclass
class ZooPull(ScannedReport):
    """A zoo model fetched and checked: where it is and what the scanner says of it.

    Attributes:
        repo_id, revision, commit: the zoo repository, the revision asked for, the commit
            the manifest and the model were read at.
        info: the manifest entry (:class:`~keishiki.hub.zoo_manifest.ModelInfo`).
        path: the ``.onnx`` file in the Hugging Face cache (``snapshots/<commit>/...``).
        sha256, nbytes: the file's checksum (equal to the manifest's) and size.
        offline: answered from the cache (``HF_HUB_OFFLINE``).
        scan: the :class:`~keishiki._scan.ScanReport` of ``path`` (None when not scanned).
    """

    repo_id: str
    revision: str | None
    commit: str
    info: ModelInfo
    path: Path
    sha256: str
    nbytes: int
    offline: bool = False
    scan: "ScanReport | None" = None

    def to_dict(self) -> dict[str, Any]:
        """The ``pull onnx-zoo:NAME --json`` object."""
        return {
            "source": "onnx-zoo",
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "model": self.info.model,
            "opset": self.info.opset,
            "model_path": self.info.model_path,
            "path": str(self.path),
            "sha256": self.sha256,
            "sha256_verified": True,
            "nbytes": self.nbytes,
            "tags": sorted(self.info.tags),
            "offline": self.offline,
            **self._scan_fields(),
        }


def pull_model(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    scan: bool = True,
) -> ZooPull:
    """Download one zoo model into the Hugging Face cache, check its sha256 against the
    manifest, and scan it (``keishiki pull onnx-zoo:NAME``).

    Raises:
        HubError: as :func:`get_model_info`; a manifest path outside the repository; no
            sha256 in the manifest; a file whose sha256 differs (it is removed from the
            cache first); download failures.
    """
    found = manifest(repo, force_reload, silent=silent)
    info = zoo_manifest.choose(found.entries, model, opset, found.where)
    path, sha = _fetch_checked(found, info, "model_path", "model_sha", force_reload, silent)
    report = None
    if scan:
        from .._scan import scan as run_scan

        report = run_scan(path)
    return ZooPull(
        found.spec.repo_id,
        found.spec.revision,
        found.commit,
        info,
        path,
        sha,
        path.stat().st_size,
        _hf.offline(),
        report,
    )


def load(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    trust_remote_code: bool = False,
) -> Any:
    """Download a zoo model (sha256-checked, cached) and load it, as onnx.hub's ``load``.

    Returns:
        an ``onnx.ModelProto`` when onnx is installed (after keishiki's load gate: the
        scanner must find nothing dangerous or unknown, unless ``trust_remote_code``);
        without onnx, the :class:`~pathlib.Path` of the checked file in the cache.

    Raises:
        HubError: as :func:`pull_model`.
        UnsafeFile: the scanner refuses the model (exit 1).

    >>> proto = keishiki.hub.load("mnist", opset=8)
    """
    pulled = pull_model(model, repo, opset, force_reload, silent, scan=False)
    try:
        import onnx
    except ImportError:
        return pulled.path
    from ..core.gate import admit

    admit(pulled.path, trust=trust_remote_code, purpose="load it with onnx.load")
    return onnx.load(str(pulled.path))


def download_model_with_test_data(
    model: str,
    repo: str = DEFAULT_REPO,
    opset: int | None = None,
    force_reload: bool = False,
    silent: bool = False,
    *,
    max_bytes: int = zoo_archive.MAX_BYTES,
) -> Path:
    """Download a zoo model's ``.tar.gz`` (the model and its ``test_data_set_*`` folders),
    check its sha256, extract it safely, and return the folder (a :class:`~pathlib.Path`;
    onnx.hub returned a ``str``), as onnx.hub did.

    The archive stays in the Hugging Face cache; it is extracted once into
    ``$KEISHIKI_CACHE/onnx-zoo/<sha256[:16]>_<name>/`` (default ``~/.cache/keishiki``),
    named by the archive's checksum, and found there by later calls (``force_reload``
    downloads and extracts again).  The folder returned is the archive's single top folder
    when it has one (``.../mnist/``), else the extraction folder.

    Args:
        max_bytes: refuse an archive whose members declare more bytes than this.

    Raises:
        HubError: as :func:`pull_model` (``model_with_data_path``/``model_with_data_sha``),
            or a member that would land outside the folder, a device, too many bytes.
    """
    found = manifest(repo, force_reload, silent=silent)
    info = zoo_manifest.choose(found.entries, model, opset, found.where)
    archive, sha = _fetch_checked(
        found, info, "model_with_data_path", "model_with_data_sha", force_reload, silent
    )
    stem = (
        Path(info.metadata["model_with_data_path"])
        .name.removesuffix(".gz")
        .removesuffix(".tar")
        .removesuffix(".tgz")
    )
    target = _extract_root() / f"{sha[:16]}_{stem}"
    if force_reload and target.exists():
        import shutil

        shutil.rmtree(target)
    if not target.exists():
        where = f"{found.where}: {info.metadata['model_with_data_path']}"
        try:
            zoo_archive.extract(archive, target, where, max_bytes)
        except InvalidRequest:
            if not target.exists():  # not another process finishing the same extraction
                raise
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _extract_root() -> Path:
    return Path(os.environ.get("KEISHIKI_CACHE", Path.home() / ".cache" / "keishiki")) / "onnx-zoo"


def _fetch_checked(
    found: Manifest, info: ModelInfo, path_key: str, sha_key: str, force: bool, silent: bool
) -> tuple[Path, str]:
    """(the cached file, its sha256) for the entry's ``path_key``, at the manifest's commit,
    once its sha256 equals the manifest's ``sha_key``."""
    raw = info.model_path if path_key == "model_path" else info.metadata.get(path_key)
    filename = zoo_manifest.repo_path(raw, info, path_key, found.where)
    want = zoo_manifest.sha256_of(info, sha_key, found.where)
    hub = _hf.hf()
    spec = _hf.RepoSpec(found.spec.repo_id, found.commit, filename)
    with _hf.hub_errors(spec), _bars(silent), _hf.cache_headers_checked():
        path = Path(
            hub.hf_hub_download(spec.repo_id, filename, revision=found.commit, force_download=force)
        )
    _check_cached(path, filename, found.where)
    with open(path, "rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != want:
        _discard(path)
        raise HubError(
            f"{found.where}: {filename} has sha256 {got[:16]}..., the manifest says "
            f"{want[:16]}...: removed from the cache, not used"
        )
    return path, got


def _check_cached(path: Path, filename: str, where: str) -> None:
    """The path gate for a file ``hf_hub_download`` answered from the cache, before a byte of
    it is read: its snapshot link must lead into the repository's own ``blobs/``, to a
    regular file.  A crafted cache linking it to ``/dev/zero`` or a FIFO would otherwise
    have the checksum read forever (and the manifest be read into memory without end).

    Raises:
        UnsafeFile: the link leads outside the repository (exit 1).
        HubError: it leads to something that is not a regular file.
    """
    from ..core.gate import inside

    inside(path.parents[filename.count("/")], filename)
    if not path.resolve().is_file():
        raise HubError(f"{where}: {filename} in the cache ({path}) is not a regular file: refused")


def _discard(path: Path) -> None:
    """Remove a file that failed its checksum from the cache: the snapshot link, and the
    blob it points at unless another snapshot of the repository still links to it."""
    blob = path.resolve()
    storage = next((p.parent for p in path.parents if p.name == "snapshots"), None)
    path.unlink(missing_ok=True)
    if storage is None or blob.parent != storage / "blobs":
        return
    for other in (storage / "snapshots").rglob("*"):
        if other.is_symlink() and other.resolve() == blob:
            return
    blob.unlink(missing_ok=True)


@contextlib.contextmanager
def _bars(silent: bool):
    """huggingface_hub's progress bars, or none."""
    from .pull import _progress

    with _progress(silent):
        yield
