"""``keishiki pull``: download a Hub repository with ``huggingface_hub.snapshot_download``
into the standard cache (where transformers and vLLM look), then scan what arrived.

Pull only reports: a dangerous file stays where it landed (deleting it from a shared cache
would be a surprise; loading it is what keishiki's load gate refuses).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..errors import HubError, InvalidRequest, UnsafeFile
from . import _hf
from .select import literal_pattern, skipped_for_safetensors

if TYPE_CHECKING:
    from huggingface_hub import ResolvedRevision

    from .._scan.findings import ScanReport

LocalDir = str | os.PathLike[str] | None
Patterns = Sequence[str] | None


class ScannedReport:
    """What a report of downloaded files says of their scan (``scan``: a ScanReport or None)."""

    scan: "ScanReport | None"

    @property
    def verdict(self) -> str:
        """The scan verdict of the pulled files (``safe``/``unknown``/``dangerous``/``error``)."""
        return self.scan.verdict if self.scan is not None else "safe"

    def exit_code(self, allow_unknown: bool = False) -> int:
        """As ``keishiki scan``: 0 nothing unsafe, 1 dangerous or unknown, 2 not scanned."""
        return self.scan.exit_code(allow_unknown) if self.scan is not None else 0

    def _scan_fields(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code(),
            "scan": self.scan.to_dict(include_safe=False) if self.scan is not None else None,
        }


@dataclass
class PullReport(ScannedReport):
    """What :func:`pull` fetched and what keishiki's scanner says of it.

    Attributes:
        repo_id, revision: as asked (revision None: the default branch).
        commit: the commit the snapshot holds (None for a ``local_dir`` pull whose commit
            huggingface_hub did not record).
        folder: the snapshot folder (``.../models--org--name/snapshots/<commit>``) or
            ``local_dir``: pass it to transformers, vLLM or any keishiki command.
        files: the repository files this pull covers (after ``include``/``exclude`` and
            ``prefer_safetensors``), with ``nbytes`` their total size.
        skipped: pickled weights left on the Hub by ``prefer_safetensors``.
        offline: answered from the cache (``HF_HUB_OFFLINE``), nothing downloaded.
        scan: the :class:`~keishiki._scan.ScanReport` of ``folder``.
    """

    repo_id: str
    revision: str | None
    commit: str | None
    folder: Path
    files: list[str]
    nbytes: int
    skipped: list[str] = field(default_factory=list)
    offline: bool = False
    warnings: list[str] = field(default_factory=list)
    scan: "ScanReport | None" = None

    def to_dict(self) -> dict[str, Any]:
        """The ``pull --json`` object."""
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "folder": str(self.folder),
            "files": self.files,
            "n_files": len(self.files),
            "nbytes": self.nbytes,
            "skipped": self.skipped,
            "offline": self.offline,
            "warnings": self.warnings,
            **self._scan_fields(),
        }


def pull(
    repo_id: str,
    revision: str | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    local_dir: LocalDir = None,
    prefer_safetensors: bool = False,
    quiet: bool = False,
) -> PullReport:
    """Download a model repository through huggingface_hub and scan every file of it.

    The files land in huggingface_hub's cache (``HF_HUB_CACHE``, default
    ``~/.cache/huggingface/hub``) unless ``local_dir`` is given; ``HF_HUB_OFFLINE=1``
    answers from the cache; a commit hash as ``revision`` pins the snapshot.

    Args:
        repo_id: ``org/name``, or ``org/name@rev``.
        revision: a branch, tag or commit (default: the repository's default branch).
        include, exclude: globs on repository paths (``*.json``, ``onnx/*``).
        local_dir: copy the files into this folder instead of the cache.
        prefer_safetensors: skip ``*.bin``/``*.pt``/``*.pth``/``*.ckpt`` in folders that
            also hold ``*.safetensors`` (decided from the file list, before downloading).
        quiet: no progress bars.

    Returns:
        A :class:`PullReport`; ``report.exit_code()`` is 1 when the scan finds dangerous or
        unknown code (the files stay: pull only reports).

    Raises:
        HubError: repository or revision not found, gated, offline and not cached,
            unreachable.
        MissingDependency: huggingface_hub is not installed (``pip install 'keishiki[hf]'``).

    >>> report = keishiki.pull("org/model", prefer_safetensors=True)
    >>> report.folder, report.verdict
    """
    spec = _spec(repo_id, revision)
    hub = _hf.hf()
    with _hf.hub_errors(spec), _hf.cache_headers_checked():
        skipped: list[str] = []
        warnings: list[str] = []
        files: list[str] | None = None
        commit: str | None = None
        # what snapshot_download gets: as asked, or the commit model_info resolved it to
        download: str | ResolvedRevision | None = spec.revision
        api_error: Exception | None = None  # the Hub failed: the cache alone answers
        if prefer_safetensors or not (_hf.offline() or _hf.COMMIT.fullmatch(spec.revision or "")):
            try:
                files, commit = _repo_files(spec, local_dir)
            except Exception as exc:
                if not _cache_may_answer(exc):
                    raise
                api_error = exc
            else:
                if commit is not None and not _hf.offline():  # (offline: no commit named)
                    download = _pinned(spec, commit, local_dir)
        if prefer_safetensors:
            if files is None:
                warnings.append(
                    "prefer_safetensors=True: the file list is not known offline and "
                    "not cached; nothing was skipped"
                )
            else:
                skipped = skipped_for_safetensors(_filtered(files, include, exclude))
        if files is not None:
            _refuse_reserved(spec, files)
        # and never downloaded, whatever snapshot_download's own listing says
        ignore = [*(exclude or []), *map(literal_pattern, skipped), *_RESERVED_PATTERNS]
        if local_dir is None and (cleared := _clear_killed_partials(spec)):
            warnings.append(
                f"removed {cleared} partial download(s) a killed pull left in the cache"
            )
        try:
            with _progress(quiet), _no_match_said_once():
                folder = Path(
                    hub.snapshot_download(
                        spec.repo_id,
                        revision=download,
                        allow_patterns=list(include or []) or None,
                        ignore_patterns=ignore,
                        local_dir=local_dir,
                        local_files_only=api_error is not None,
                    )
                )
        except hub.errors.LocalEntryNotFoundError:
            # not cached either: say why the Hub could not answer (gated, not found...)
            if api_error is None or not isinstance(api_error, hub.errors.HfHubHTTPError):
                raise
            raise api_error from None
    if local_dir is None:
        check_snapshot(spec.label, spec, folder)
    # online, the commit was resolved once (_pinned): --prefer-safetensors decided on the file
    # list of the very commit that was downloaded
    snapshot_commit = folder.name if folder.parent.name == "snapshots" else None
    commit = snapshot_commit or commit or _commit_from_refs(spec)
    files, nbytes = _pulled(spec, commit, folder, local_dir, include, ignore)
    if not files:
        raise InvalidRequest(
            f"{spec.label}: no file of the repository matches "
            f"{_patterns(include, exclude)}: nothing was pulled"
        )
    from .._scan import scan

    return PullReport(
        spec.repo_id,
        spec.revision,
        commit,
        folder,
        files,
        nbytes,
        skipped,
        offline=_hf.offline(),
        warnings=warnings,
        scan=scan(folder),
    )


# names no Hub repository holds (git refuses to commit them) that tools act on when they
# land in a folder: .git/config runs commands (core.fsmonitor) at the next `git status` in
# a --local-dir checkout; huggingface_hub keeps a --local-dir's bookkeeping in
# .cache/huggingface.  Case-folded: case-insensitive file systems fold them.
_RESERVED = re.compile(
    r"(?:^|/)(?:\.git|\.hg|\.svn)(?:/|$)|^\.cache/huggingface(?:/|$)", re.IGNORECASE
)
_RESERVED_PATTERNS = [
    f"{where}{''.join(f'[{c.lower()}{c.upper()}]' if c.isalpha() else f'[{c}]' for c in name)}{tail}"
    for name in (".git", ".hg", ".svn")
    for where in ("", "*/")
    # the folder's files, and the name itself: a ".git" *file* ("gitdir: elsewhere") points
    # git at a folder of the download, whose config runs commands just the same
    for tail in ("/*", "")
] + [".cache/huggingface/*"]


def _refuse_reserved(spec: _hf.RepoSpec, files: list[str]) -> None:
    """Refuse a file list that names a version-control folder or huggingface_hub's own."""
    bad = next((f for f in files if _RESERVED.search(str(f))), None)
    if bad is not None:
        raise HubError(
            f"hf://{spec.label} on {_hf.endpoint()}: the Hub lists {str(bad)[:80]!r}, a name "
            "no repository holds (a version-control or cache folder): refused"
        )


def _spec(repo_id: str, revision: str | None) -> _hf.RepoSpec:
    spec = _hf.parse_repo(repo_id)
    if revision is not None and spec.revision is not None and revision != spec.revision:
        raise InvalidRequest(
            f"{repo_id}: two revisions given ({spec.revision!r} in the name, "
            f"{revision!r} as revision)"
        )
    return _hf.RepoSpec(spec.repo_id, spec.revision or revision)


def _repo_files(spec: _hf.RepoSpec, local_dir: LocalDir) -> tuple[list[str] | None, str | None]:
    """(every file of the repository at the revision, its commit): one ``model_info`` call
    online; offline, the tree listing an earlier pull cached (None when there is none)."""
    hub = _hf.hf()
    if _hf.offline():
        try:
            cached = hub.get_cached_repo_tree(
                spec.repo_id, revision=spec.revision, local_dir=local_dir
            )
        except hub.errors.CachedRepoTreeNotFoundError:
            return None, None
        return [f.path for f in cached], None
    info = _hf.model_info(spec)  # its commit checked: see _pinned
    return [s.rfilename for s in info.siblings or []], info.sha


def check_snapshot(ref: str, spec: _hf.RepoSpec, folder: Path) -> None:
    """The folder huggingface_hub answered must be a real folder of the repository's own
    ``snapshots/``: it joins the commit read from ``refs/<rev>`` to that path unchecked, so a
    crafted cache (a ref holding ``../../x`` or an absolute path, a snapshot that is a
    symlink) would hand a command (or pull's report) any folder on the disk as
    ``hf://org/name``.  ``ref`` names what was asked for, in the message.

    Raises:
        UnsafeFile: it is not (exit 1: a finding, as every escape is).
    """
    from huggingface_hub.file_download import repo_folder_name

    snapshots = (
        Path(_hf.hf().constants.HF_HUB_CACHE).expanduser()
        / repo_folder_name(repo_id=spec.repo_id, repo_type="model")
        / "snapshots"
    )
    real = Path(os.path.abspath(folder))
    if (
        real.parent != Path(os.path.abspath(snapshots))
        or not _hf.plain_name(real.name)
        or folder.is_symlink()
    ):
        raise UnsafeFile(
            folder,
            f"refuses {ref}: the cache answers a folder that is not a "
            f"snapshot of {spec.repo_id} ({snapshots}/<commit>)",
        )


def _cache_may_answer(exc: Exception) -> bool:
    """Whether ``snapshot_download`` would answer from the cache after ``model_info`` failed
    so (the Hub unreachable, down, or refusing a token): its own fallback, mirrored here,
    with ``local_files_only`` so that no second answer of the Hub is trusted instead."""
    errors = _hf.hf().errors
    httpx = _hf._httpx()
    unreachable = (
        errors.OfflineModeIsEnabled,
        *((httpx.ConnectError, httpx.TimeoutException) if httpx else ()),
    )
    return isinstance(exc, unreachable) or (
        isinstance(exc, errors.HfHubHTTPError) and not isinstance(exc, errors.RevisionNotFoundError)
    )


def _pinned(spec: _hf.RepoSpec, commit: str, local_dir: LocalDir) -> ResolvedRevision:
    """The revision ``snapshot_download`` gets once ``model_info`` said its commit: that
    commit as huggingface_hub's ``ResolvedRevision`` (so it does not ask again).

    huggingface_hub joins the commit the Hub names to cache paths (``snapshots/<commit>``,
    ``trees/<commit>.json``) unchecked: a hostile endpoint answering ``"../../x"`` would have
    it write outside the cache.  Resolved here, the commit is checked first
    (:func:`._hf.model_info`), and the ref (``refs/<branch>``, which ``snapshot_download``
    skips for a resolved revision) is written only with a commit that passed.
    """
    from huggingface_hub import ResolvedRevision
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        repo_folder_name,
    )

    if spec.revision != commit:
        storage = Path(_hf.hf().constants.HF_HUB_CACHE) / repo_folder_name(
            repo_id=spec.repo_id, repo_type="model"
        )
        with contextlib.suppress(OSError):  # best effort, as huggingface_hub's own
            _cache_commit_hash_for_specific_revision(str(storage), spec.revision or "main", commit)
    return ResolvedRevision(commit, initial=spec.revision, repo_id=spec.repo_id)


def _clear_killed_partials(spec: _hf.RepoSpec) -> int:
    """Remove the ``blobs/<etag>.<id>.incomplete`` files that killed downloads left; returns
    how many.

    huggingface_hub 2.x downloads each blob into a file unique to the process and deletes it
    when the download fails, so an interrupted pull resumes by its own retries; a process
    killed outright leaves its file behind forever (no later download reuses it).  One is
    stale when nobody holds its blob's lock (``.locks/<repo>/<etag>.lock``, the lock
    huggingface_hub downloads under): a download in progress holds it.
    """
    from filelock import FileLock, Timeout
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(_hf.hf().constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=spec.repo_id, repo_type="model")
    blobs, locks = cache / folder / "blobs", cache / ".locks" / folder
    removed = 0
    for part in sorted(blobs.glob("*.incomplete")) if blobs.is_dir() else []:
        etag = part.name.split(".", 1)[0]
        if part.is_symlink() or not part.is_file() or not locks.is_dir():
            continue
        try:
            with FileLock(locks / f"{etag}.lock", timeout=0):
                part.unlink(missing_ok=True)
                removed += 1
        except Timeout:  # being downloaded right now
            continue
    return removed


def _commit_from_refs(spec: _hf.RepoSpec) -> str | None:
    """The commit a ``local_dir`` pull got: a commit asked for, or the ref huggingface_hub
    records in the cache for a branch or tag (``refs/<rev>``), even for ``local_dir``."""
    import re

    from huggingface_hub.file_download import repo_folder_name

    revision = spec.revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = (
        Path(_hf.hf().constants.HF_HUB_CACHE)
        / repo_folder_name(repo_id=spec.repo_id, repo_type="model")
        / "refs"
        / revision
    )
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def _filtered(files: list[str], include: Patterns, exclude: Patterns) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    return list(
        filter_repo_objects(
            files,
            allow_patterns=list(include or []) or None,
            ignore_patterns=list(exclude or []) or None,
        )
    )


def _pulled(
    spec: _hf.RepoSpec,
    commit: str | None,
    folder: Path,
    local_dir: LocalDir,
    include: Patterns,
    ignore: Patterns,
) -> tuple[list[str], int]:
    """The repository files this pull covers and their bytes, from the tree listing
    huggingface_hub cached beside the snapshot (the folder's files when there is none)."""
    hub = _hf.hf()
    try:
        tree = hub.get_cached_repo_tree(
            spec.repo_id, revision=commit or spec.revision, local_dir=local_dir
        )
        sizes = {f.path: f.size for f in tree}
    except hub.errors.CachedRepoTreeNotFoundError:
        sizes = {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts
        }
    files = sorted(_filtered(list(sizes), include, ignore))
    return files, sum(sizes[f] or 0 for f in files)


def _patterns(include: Patterns, exclude: Patterns) -> str:
    parts = [f"include={p!r}" for p in include or []]
    parts += [f"exclude={p!r}" for p in exclude or []]
    return " ".join(parts) or "the filters"


class _DropNoMatch(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No files matched")


@contextlib.contextmanager
def _no_match_said_once() -> Iterator[None]:
    """Silence huggingface_hub's "No files matched ..." warning: pull says it itself, as its
    one-line error (every other warning of snapshot_download still shows)."""
    log = logging.getLogger("huggingface_hub._snapshot_download")
    drop = _DropNoMatch()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars, or none (``--quiet``)."""
    if not quiet:
        yield
        return
    from huggingface_hub.utils import disable_progress_bars

    with disable_progress_bars():
        yield
