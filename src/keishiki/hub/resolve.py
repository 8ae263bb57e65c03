"""``hf://org/name[@rev][/path]`` as a local path, for the commands that need the bytes
(``run``, ``convert``, ``compare``, ``map``, ``bench``, and ``keishiki.LLM``).

The cache answers first, without a request: huggingface_hub's ``snapshot_download`` with
``local_files_only=True`` returns the snapshot folder only when its cached file list says
every file asked for is there.  Otherwise the files are pulled (:func:`keishiki.pull`: the
standard cache, huggingface_hub's progress bar, the scan) after one line that says so (the
CLI's on stderr, the library's a warning on the ``keishiki`` logger), where transformers'
``from_pretrained("org/name")`` would fetch them silently.  What is
pulled is what a loader reads: ``/path`` alone when one is named (a GGUF of a repository of
quantizations), and safetensors rather than the pickles beside them (``prefer_safetensors``).

Whatever comes back still goes through the path gate (a snapshot may link into its own
``blobs/`` only) and, before anything loads it, the load gate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..core.gate import inside
from ..errors import HubError, InvalidRequest
from . import _hf
from .pull import check_snapshot, pull
from .select import literal_pattern, skipped_for_safetensors


def local_path(ref: str, *, quiet: bool = False, say: Callable[[str], None] | None = None) -> Path:
    """The local file or folder for ``hf://org/name[@rev][/path]``: from the cache, or pulled.

    Args:
        ref: an ``hf://`` path (a repository, or a file or folder in it).
        quiet: no progress bar while pulling.
        say: where the one-line "pulling" notice goes (default: a warning on the
            ``keishiki`` logger).

    Returns:
        The snapshot folder, or the file/folder ``path`` in it.

    Raises:
        HubError: not cached and the Hub cannot give it (offline, not found, gated...).
        InvalidRequest: a malformed reference, or ``..`` in its path.

    >>> local_path("hf://org/model-GGUF/model-q4_0.gguf")
    PosixPath('/home/me/.cache/huggingface/hub/models--org--model-GGUF/snapshots/<sha>/model-q4_0.gguf')
    """
    spec = _hf.parse_hf_path(ref)
    inner = spec.path_in_repo
    if inner and (".." in inner.split("/") or inner.startswith("/")):
        raise InvalidRequest(f"{ref}: '..' or an absolute path inside an hf:// reference")
    patterns = [literal_pattern(inner), literal_pattern(inner) + "/*"] if inner else None
    with _hf.hub_errors(spec):
        folder = _cached(spec, patterns)
    if folder is None:
        if _hf.offline():
            raise HubError(
                f"{ref}: not in the cache ({_hf.hf().constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE=1 forbids downloading: pull it once online"
            )

        (say or _log)(
            f"{ref}: not in the cache ({_hf.hf().constants.HF_HUB_CACHE}); "
            f"pulling it from {_hf.endpoint()}"
        )
        try:
            folder = pull(
                spec.repo_id, spec.revision, include=patterns, prefer_safetensors=True, quiet=quiet
            ).folder
        except InvalidRequest:  # no file matched the path: say it as a missing path
            if not inner:
                raise
            raise HubError(f"{ref}: no file or folder {inner!r} in {spec.label}") from None
    check_snapshot(ref, spec, folder)
    if inner and not ((folder / inner).exists() or (folder / inner).is_symlink()):
        raise HubError(f"{ref}: no file or folder {inner!r} in {spec.label}")
    # the path gate for the file named: a command's own gate judges a named file's
    # neighbours, not the file, and here the user named a repository path, not that link
    return inside(folder, inner) if inner else folder


def _cached(spec: _hf.RepoSpec, patterns: list[str] | None) -> Path | None:
    """The snapshot folder when the cache holds every file a pull would fetch, else None."""
    hub = _hf.hf()
    try:
        tree = hub.get_cached_repo_tree(spec.repo_id, revision=spec.revision)
        files = [f.path for f in tree]
    except hub.errors.CachedRepoTreeNotFoundError:
        files = None
    ignore = None
    if files is not None:
        from huggingface_hub.utils import filter_repo_objects

        wanted = filter_repo_objects(files, allow_patterns=patterns)
        ignore = [literal_pattern(f) for f in skipped_for_safetensors(wanted)] or None
    try:
        folder = Path(
            hub.snapshot_download(
                spec.repo_id,
                revision=spec.revision,
                allow_patterns=patterns,
                ignore_patterns=ignore,
                local_files_only=True,
            )
        )
    except (hub.errors.LocalEntryNotFoundError, hub.errors.IncompleteSnapshotError):
        return None
    # without a cached file list huggingface_hub returns any snapshot folder as it is
    if spec.path_in_repo and not (folder / spec.path_in_repo).exists():
        return None
    return folder


def _log(line: str) -> None:
    # the library's voice (logging's last-resort handler prints a warning on stderr when the
    # caller configured none); the CLI passes its own one-line writer
    logging.getLogger("keishiki").warning(line)
