"""huggingface_hub at keishiki's boundary: the lazy import, ``REPO@REV`` / ``hf://`` parsing,
and huggingface_hub's exceptions turned into one-line :class:`~keishiki.errors.HubError`.

huggingface_hub's messages run to several lines (the URL, a request id, advice); the CLI
prints one line per error, so each failure a user can meet is said here in one sentence
that names the repository, the revision and what to do.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

from .._optional import require
from ..errors import HubError, InvalidRequest


def hf() -> ModuleType:
    """``huggingface_hub``, or MissingDependency naming the ``hf`` extra; HubError when it
    is older than the API keishiki uses (cached tree listings, ``hf://`` URIs: 2.x)."""
    hub = require("huggingface_hub", extra="hf", purpose="talk to the Hugging Face Hub")
    if not hasattr(hub, "get_cached_repo_tree") or not hasattr(hub.utils, "parse_hf_uri"):
        raise HubError(f"huggingface_hub {hub.__version__} is too old for keishiki's Hub "
                       f"commands (tested with 2.4): pip install -U 'huggingface_hub>=2.4'")
    return hub


def endpoint() -> str:
    """The Hub endpoint huggingface_hub uses (``HF_ENDPOINT``, read when it was imported)."""
    return hf().constants.ENDPOINT


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set for huggingface_hub."""
    return bool(hf().constants.is_offline_mode())


@dataclass(frozen=True)
class RepoSpec:
    """A model repository, the revision asked for (None: the default branch) and, for an
    ``hf://`` path, the file or folder inside it ("" for the repository itself)."""

    repo_id: str
    revision: str | None = None
    path_in_repo: str = ""

    @property
    def label(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo(text: str) -> RepoSpec:
    """``org/name`` or ``org/name@rev`` (a branch, tag, commit or ``refs/pr/N``), with or
    without ``hf://`` in front (as every other command writes a Hub model).

    Raises:
        InvalidRequest: not ``org/name[@rev]``.
    """
    repo_id, _, revision = text.removeprefix("hf://").partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (text.count("@") and not revision):
        raise InvalidRequest(f"{text!r} is not a Hub repository: write ORG/NAME or ORG/NAME@REV")
    _check_revision(text, revision)
    return RepoSpec(repo_id, revision or None)


def _check_revision(text: str, revision: str | None) -> None:
    """A revision names a ref, and huggingface_hub joins it to cache paths (``refs/<rev>``):
    no ``..`` part, no absolute path, no backslash (git refuses them in ref names too)."""
    if revision and (revision.startswith("/") or "\\" in revision
                     or ".." in revision.split("/")):
        raise InvalidRequest(f"{text}: {revision!r} is not a revision (a branch, tag, commit "
                             f"or refs/pr/N)")


def parse_hf_path(path: str) -> RepoSpec:
    """``hf://org/name[@rev][/path]`` as huggingface_hub's own URI parser reads it (model
    repositories only: datasets and spaces hold no model to inspect).

    Raises:
        InvalidRequest: malformed, or not a model repository.
    """
    try:
        uri = hf().utils.parse_hf_uri(path)
    except ValueError as exc:
        raise InvalidRequest(f"{path}: not an hf:// path ({str(exc).splitlines()[0]}); write "
                             f"hf://ORG/NAME[@REV][/FILE]") from None
    if uri.type != "model":
        raise InvalidRequest(f"{path}: a {uri.type} repository; keishiki reads model "
                             f"repositories (hf://ORG/NAME)")
    _check_revision(path, uri.revision)
    return RepoSpec(uri.id, uri.revision, uri.path_in_repo.strip("/"))


def _message(exc: BaseException, spec: RepoSpec, remote: bool) -> str | None:
    """The one line for a huggingface_hub (or httpx) failure; None for other exceptions.
    ``remote``: the failure was reading ``hf://`` by range (which no cache answers)."""
    errors = hf().errors
    if remote and offline() and isinstance(exc, errors.OfflineModeIsEnabled):
        return (f"hf://{spec.label}: HF_HUB_OFFLINE=1 forbids reading the Hub; inspect the "
                f"snapshot folder `keishiki pull` left in the cache instead")
    where = f"{spec.label} on {endpoint()}"
    if isinstance(exc, errors.GatedRepoError):
        return (f"{where}: gated repository: accept its terms at {endpoint()}/{spec.repo_id} "
                f"and log in (`hf auth login` or HF_TOKEN)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (f"{where}: repository not found (or private: log in with `hf auth login` or "
                f"HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{where}: revision {spec.revision!r} not found (a branch, tag or commit)"
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return f"{where}: no file {spec.path_in_repo or '(unknown)'!r} in the repository"
    if isinstance(exc, errors.IncompleteSnapshotError):
        return (f"{spec.label}: the cached snapshot is incomplete and the Hub cannot be reached "
                f"(HF_HUB_OFFLINE?): pull it again online")
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if offline():
            return (f"{spec.label}: not in the cache ({hf().constants.HF_HUB_CACHE}) and "
                    f"HF_HUB_OFFLINE=1 forbids downloading: pull it once online")
        return f"{spec.label}: not in the cache and {endpoint()} cannot be reached"
    if isinstance(exc, errors.HFValidationError):
        return f"{spec.label}: not a valid repository id or revision ({str(exc).splitlines()[0]})"
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return f"{where}: the Hub answered HTTP {status}"
    httpx = _httpx()
    if httpx is not None and isinstance(exc, (httpx.ConnectError, httpx.TimeoutException)):
        return f"{spec.label}: cannot reach {endpoint()} ({type(exc).__name__})"
    if httpx is not None and isinstance(exc, httpx.TransportError):
        # huggingface_hub resumed by itself a few times, gave up and deleted its partial
        # file: no snapshot link points at half a file
        return (f"{spec.label}: the download from {endpoint()} broke off "
                f"({type(exc).__name__}); run it again")
    return None


def _httpx() -> ModuleType | None:
    """The HTTP client huggingface_hub uses (httpx2 in 2.x)."""
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            return __import__(name)
    return None


@contextlib.contextmanager
def hub_errors(spec: RepoSpec, remote: bool = False) -> Iterator[None]:
    """Turn huggingface_hub's failures inside the block into :class:`HubError` (exit 2);
    ``remote`` for range reads of ``hf://`` paths (offline has no cache to fall back on)."""
    try:
        yield
    except HubError:
        raise
    except Exception as exc:
        message = _message(exc, spec, remote)
        if message is None:
            raise
        raise HubError(message) from exc
