"""``keishiki pull``: download a Hub repository with ``huggingface_hub.snapshot_download``
into the standard cache (where transformers and vLLM look), then scan what arrived.

Pull only reports: a dangerous file stays where it landed (deleting it from a shared cache
would be a surprise; loading it is what keishiki's load gate refuses).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..errors import InvalidRequest
from . import _hf
from .select import literal_pattern, skipped_for_safetensors

if TYPE_CHECKING:
    from ..scan.findings import ScanReport


@dataclass
class PullReport:
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
        scan: the :class:`~keishiki.scan.ScanReport` of ``folder``.
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

    @property
    def verdict(self) -> str:
        """The scan verdict of the pulled files (``safe``/``unknown``/``dangerous``/``error``)."""
        return self.scan.verdict if self.scan is not None else "safe"

    def exit_code(self, allow_unknown: bool = False) -> int:
        """As ``keishiki scan``: 0 nothing unsafe, 1 dangerous or unknown, 2 not scanned."""
        return self.scan.exit_code(allow_unknown) if self.scan is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """The ``pull --json`` object."""
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "folder": str(self.folder), "files": self.files, "n_files": len(self.files),
                "nbytes": self.nbytes, "skipped": self.skipped, "offline": self.offline,
                "warnings": self.warnings, "verdict": self.verdict,
                "exit_code": self.exit_code(),
                "scan": self.scan.to_dict(include_safe=False) if self.scan is not None else None}


def pull(repo_id: str, revision: str | None = None, include: Sequence[str] | None = None,
         exclude: Sequence[str] | None = None, local_dir: str | os.PathLike | None = None,
         prefer_safetensors: bool = False, quiet: bool = False) -> PullReport:
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
    with _hf.hub_errors(spec):
        skipped, commit, warnings = [], None, []
        if prefer_safetensors:
            files, commit = _repo_files(spec, local_dir)
            if files is None:
                warnings.append("--prefer-safetensors: the file list is not known offline and "
                                "not cached; nothing was skipped")
            else:
                skipped = skipped_for_safetensors(_filtered(files, include, exclude))
        ignore = [*(exclude or []), *map(literal_pattern, skipped)] or None
        if local_dir is None and (cleared := _clear_killed_partials(spec)):
            warnings.append(f"removed {cleared} partial download(s) a killed pull left in "
                            f"the cache")
        with _progress(quiet), _no_match_said_once():
            folder = Path(hub.snapshot_download(
                spec.repo_id, revision=spec.revision, allow_patterns=list(include or []) or None,
                ignore_patterns=ignore, local_dir=local_dir))
    snapshot_commit = folder.name if folder.parent.name == "snapshots" else None
    if commit and snapshot_commit and commit != snapshot_commit:
        warnings.append(f"the branch moved from {commit[:12]} to {snapshot_commit[:12]} while "
                        f"pulling: --prefer-safetensors decided on the older file list")
    commit = snapshot_commit or commit or _commit_from_refs(spec)
    files, nbytes = _pulled(spec, commit, folder, local_dir, include, ignore)
    if not files:
        raise InvalidRequest(f"{spec.label}: no file of the repository matches "
                             f"{_patterns(include, exclude)}: nothing was pulled")
    from ..scan import scan

    return PullReport(spec.repo_id, spec.revision, commit, folder, files, nbytes, skipped,
                      offline=_hf.offline(), warnings=warnings, scan=scan(folder))


def _spec(repo_id: str, revision: str | None) -> _hf.RepoSpec:
    spec = _hf.parse_repo(repo_id)
    if revision is not None and spec.revision is not None and revision != spec.revision:
        raise InvalidRequest(f"{repo_id}: two revisions given ({spec.revision!r} in the name, "
                             f"{revision!r} as revision)")
    return _hf.RepoSpec(spec.repo_id, spec.revision or revision)


def _repo_files(spec: _hf.RepoSpec, local_dir) -> tuple[list[str] | None, str | None]:
    """(every file of the repository at the revision, its commit): one ``model_info`` call
    online; offline, the tree listing an earlier pull cached (None when there is none)."""
    hub = _hf.hf()
    if _hf.offline():
        try:
            cached = hub.get_cached_repo_tree(spec.repo_id, revision=spec.revision,
                                              local_dir=local_dir)
        except hub.errors.CachedRepoTreeNotFoundError:
            return None, None
        return [f.path for f in cached], None
    info = hub.HfApi().model_info(spec.repo_id, revision=spec.revision)
    return [s.rfilename for s in info.siblings or []], info.sha


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
    ref = (Path(_hf.hf().constants.HF_HUB_CACHE)
           / repo_folder_name(repo_id=spec.repo_id, repo_type="model") / "refs" / revision)
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def _filtered(files: list[str], include, exclude) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(files, allow_patterns=list(include or []) or None,
                                    ignore_patterns=list(exclude or []) or None))


def _pulled(spec: _hf.RepoSpec, commit: str | None, folder: Path, local_dir, include,
            ignore) -> tuple[list[str], int]:
    """The repository files this pull covers and their bytes, from the tree listing
    huggingface_hub cached beside the snapshot (the folder's files when there is none)."""
    hub = _hf.hf()
    try:
        tree = hub.get_cached_repo_tree(spec.repo_id, revision=commit or spec.revision,
                                        local_dir=local_dir)
        sizes = {f.path: f.size for f in tree}
    except hub.errors.CachedRepoTreeNotFoundError:
        sizes = {p.relative_to(folder).as_posix(): p.stat().st_size
                 for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}
    files = sorted(_filtered(list(sizes), include, ignore))
    return files, sum(sizes[f] or 0 for f in files)


def _patterns(include, exclude) -> str:
    parts = [f"--include {p!r}" for p in include or []]
    parts += [f"--exclude {p!r}" for p in exclude or []]
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
