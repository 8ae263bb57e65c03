"""huggingface_hub at keishiki's boundary: the lazy import, ``REPO@REV`` / ``hf://`` parsing,
and huggingface_hub's exceptions turned into one-line :class:`~keishiki.errors.HubError`.

huggingface_hub's messages run to several lines (the URL, a request id, advice); the CLI
prints one line per error, so each failure a user can meet is said here in one sentence
that names the repository, the revision and what to do.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator
from urllib.parse import urlsplit

from .._optional import require
from ..errors import HubError, InvalidRequest


def hf() -> ModuleType:
    """``huggingface_hub``, or MissingDependency naming the ``hf`` extra; HubError when it
    is older than the API keishiki uses (cached tree listings, ``hf://`` URIs: 2.x)."""
    hub = require("huggingface_hub", extra="hf", purpose="talk to the Hugging Face Hub")
    if not hasattr(hub, "get_cached_repo_tree") or not hasattr(hub.utils, "parse_hf_uri"):
        raise HubError(
            f"huggingface_hub {hub.__version__} is too old for keishiki's Hub "
            f"commands (tested with 2.4): pip install -U 'huggingface_hub>=2.4'"
        )
    return hub


def endpoint() -> str:
    """The Hub endpoint huggingface_hub uses (``HF_ENDPOINT``, read when it was imported)."""
    return hf().constants.ENDPOINT


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set for huggingface_hub."""
    return bool(hf().constants.is_offline_mode())


# What a Hub answer may name for huggingface_hub to join to a cache path: a commit becomes
# ``snapshots/<commit>/`` and ``trees/<commit>.json``, an ETag ``blobs/<etag>`` and
# ``.locks/.../<etag>.lock``.  huggingface_hub 2.4 joins the server's ETag as it comes (a
# ``"../../x"`` ETag writes the download outside the cache), so keishiki refuses any answer
# whose ETag or commit is not one plain name: the Hub's are hex digests.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
COMMIT = re.compile(r"[0-9a-f]{40}")


def plain_name(value: str) -> bool:
    """Whether ``value`` is usable as one file name in the cache (no separator, no ``..``)."""
    return bool(_PLAIN_NAME.fullmatch(value)) and ".." not in value


def _check_cache_headers(response) -> None:
    """An httpx response hook: refuse an answer of the Hub whose ETag or commit header would
    lead huggingface_hub's cache writes outside the cache, and a tree listing whose object ids
    would (:func:`check_tree_entries`).

    Every answer from the endpoint's host is checked, not only ``resolve``'s: huggingface_hub
    follows a ``resolve``'s same-host redirects and takes the ETag and commit of the last
    answer (other hosts' answers, a CDN's, it never takes them from).  The API's own JSON
    answers (``<endpoint>/api/...``) carry web-server ETags, base64 with ``/``: those are
    refused only for what climbs (``..``, a leading separator)."""
    url = response.request.url
    root = urlsplit(endpoint())
    if url.host != root.hostname:
        return
    api = url.path.startswith(root.path.rstrip("/") + "/api/")
    if api and "/tree/" in url.path and response.status_code == 200:
        response.read()  # (a small JSON page; huggingface_hub reads it next anyway)
        try:
            entries = response.json()
        except ValueError:
            entries = None  # not JSON: huggingface_hub refuses it itself
        check_tree_entries(entries, f"{endpoint()} answered {url.path}")
    for key in ("ETag", "X-Linked-Etag", "X-Repo-Commit"):
        value = response.headers.get(key)
        if value is None:
            continue
        name = value.strip().removeprefix("W/").strip('"')
        climbs = ".." in name or name[:1] in ("/", "\\")
        if climbs or not (api or plain_name(name)):
            raise HubError(
                f"{endpoint()} answered {url.path} with {key} "
                f"{value[:80]!r}: not a plain hash, refused (it would name a file "
                f"outside the cache)"
            )


def check_tree_entries(entries, where: str) -> None:
    """Refuse a tree listing an entry of which has an object id that is not a plain name:
    huggingface_hub names blobs and locks after ``oid``, ``lfs.oid`` and ``xetHash`` (with
    a commit pinned and hf_xet installed it downloads without asking ``resolve``), so
    ``"../../x"`` there would write outside the cache.

    Raises:
        HubError: naming the entry and the id.
    """
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else {}
        for key, value in (
            ("oid", entry.get("oid")),
            ("lfs.oid", lfs.get("oid")),
            ("xetHash", entry.get("xetHash")),
        ):
            if value is not None and not (isinstance(value, str) and plain_name(value)):
                raise HubError(
                    f"{where}: {str(entry.get('path'))[:80]!r} has {key} {str(value)[:80]!r}: "
                    f"not a plain hash, refused (it would name a file outside the cache)"
                )


@contextlib.contextmanager
def cache_headers_checked() -> Iterator[None]:
    """Refuse, while active, any Hub answer whose ETag or commit is not a plain name
    (:func:`_check_cache_headers`), on huggingface_hub's shared HTTP client."""
    from huggingface_hub.utils import get_session

    hooks = get_session().event_hooks["response"]
    hooks.append(_check_cache_headers)
    try:
        yield
    finally:
        hooks.remove(_check_cache_headers)


def model_info(spec: "RepoSpec", **kwargs):
    """``HfApi().model_info`` of ``spec``, its answer checked: one HubError for JSON
    huggingface_hub cannot parse (a proxy's page, a mirror's other shape) and for a commit
    that is not a 40-digit hash (huggingface_hub joins it to cache paths unchecked).

    Raises:
        HubError: as above (and huggingface_hub's own errors, for :func:`hub_errors`).
    """
    hub = hf()
    try:
        info = hub.HfApi().model_info(spec.repo_id, revision=spec.revision, **kwargs)
    except hub.errors.HFValidationError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise HubError(
            f"{spec.label} on {endpoint()}: the Hub's repository information is "
            f"malformed ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None
    if not (isinstance(info.sha, str) and COMMIT.fullmatch(info.sha)):
        raise HubError(
            f"{spec.label} on {endpoint()}: the Hub names commit "
            f"{str(info.sha)[:80]!r}, not a 40-digit hash: refused"
        )
    return info


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
    if revision and (revision.startswith("/") or "\\" in revision or ".." in revision.split("/")):
        raise InvalidRequest(
            f"{text}: {revision!r} is not a revision (a branch, tag, commit or refs/pr/N)"
        )


def parse_hf_path(path: str) -> RepoSpec:
    """``hf://org/name[@rev][/path]`` as huggingface_hub's own URI parser reads it (model
    repositories only: datasets and spaces hold no model to inspect).

    Raises:
        InvalidRequest: malformed, or not a model repository.
    """
    try:
        uri = hf().utils.parse_hf_uri(path)
    except ValueError as exc:
        raise InvalidRequest(
            f"{path}: not an hf:// path ({str(exc).splitlines()[0]}); write "
            f"hf://ORG/NAME[@REV][/FILE]"
        ) from None
    if uri.type != "model":
        raise InvalidRequest(
            f"{path}: a {uri.type} repository; keishiki reads model repositories (hf://ORG/NAME)"
        )
    _check_revision(path, uri.revision)
    return RepoSpec(uri.id, uri.revision, uri.path_in_repo.strip("/"))


def _message(exc: BaseException, spec: RepoSpec, remote: bool) -> str | None:
    """The one line for a huggingface_hub (or httpx) failure; None for other exceptions.
    ``remote``: the failure was reading ``hf://`` by range (which no cache answers)."""
    errors = hf().errors
    if remote and offline() and isinstance(exc, errors.OfflineModeIsEnabled):
        return (
            f"hf://{spec.label}: HF_HUB_OFFLINE=1 forbids reading the Hub; inspect the "
            f"snapshot folder `keishiki pull` left in the cache instead"
        )
    where = f"{spec.label} on {endpoint()}"
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"{where}: gated repository: accept its terms at {endpoint()}/{spec.repo_id} "
            f"and log in (`hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"{where}: repository not found (or private: log in with `hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{where}: revision {spec.revision!r} not found (a branch, tag or commit)"
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return f"{where}: no file {spec.path_in_repo or '(unknown)'!r} in the repository"
    if isinstance(exc, errors.IncompleteSnapshotError):
        return (
            f"{spec.label}: the cached snapshot is incomplete and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE?): pull it again online"
        )
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if offline():
            return (
                f"{spec.label}: not in the cache ({hf().constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE=1 forbids downloading: pull it once online"
            )
        return f"{spec.label}: not in the cache and {endpoint()} cannot be reached"
    if isinstance(exc, ValueError) and str(exc).startswith(
        ("Invalid filename", "Invalid pointer path")
    ):
        # huggingface_hub's own refusal of a file name that would leave the cache or
        # local_dir ("../x", "/abs"): a hostile listing, said in one line, not as a crash
        return f"{where}: the Hub lists a file name it refuses ({str(exc).split(':')[0][:120]})"
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
        return (
            f"{spec.label}: the download from {endpoint()} broke off "
            f"({type(exc).__name__}); run it again"
        )
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
