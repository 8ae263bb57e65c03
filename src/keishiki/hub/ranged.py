"""Ranged reads of one Hub repository at one commit, through huggingface_hub (its URL
builder, headers and shared HTTP session), with the HTTP requests and bytes they cost counted.

Reads are plain ranged GETs of ``resolve`` URLs pinned to the commit ``model_info`` gave:
``HfFileSystem`` file objects would add a revision check and a folder listing before the
first read (two round trips of the few a remote ``info`` takes).  :class:`Traffic` counts at
huggingface_hub's shared HTTP client (an event hook for the duration of a look), so every
call counts, redirects to the CDN included.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from ..errors import CorruptFile, HubError
from . import _hf

MAX_JSON_BYTES = 64 * 1024 * 1024  # the path gate's limit on a shard index, for every JSON
# no model file comes near 8 TiB (half ext4's largest file): a larger size in model_info is
# a lie, and the sparse copies of remote_scan could not be made that large
MAX_FILE_BYTES = 1 << 43
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Traffic:
    """Counts the HTTP requests huggingface_hub's shared client sends while active, and the
    response bytes they announce (``Content-Length``; a HEAD's is not a body)."""

    def __init__(self) -> None:
        self.requests = 0
        self.response_bytes = 0
        self._lock = threading.Lock()

    def _on_request(self, request) -> None:
        with self._lock:
            self.requests += 1

    def _on_response(self, response) -> None:
        if response.request.method != "HEAD":
            with self._lock:
                self.response_bytes += int(response.headers.get("Content-Length") or 0)

    def __enter__(self) -> "Traffic":
        from huggingface_hub.utils import get_session

        self._hooks = get_session().event_hooks
        self._hooks["request"].append(self._on_request)
        self._hooks["response"].append(self._on_response)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks["request"].remove(self._on_request)
        self._hooks["response"].remove(self._on_response)


class RangedRepo:
    """One repository at one commit: its files and sizes, and ranged reads of them."""

    def __init__(self, spec: _hf.RepoSpec):
        self.spec = spec
        info = _hf.model_info(spec, files_metadata=True, timeout=timeout())
        self.commit: str = info.sha
        self.sizes: dict[str, int | None] = {s.rfilename: s.size for s in info.siblings or []}
        _check_listing(spec, self.sizes)
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._json: dict[str, Any] = {}  # prefetched: the document, or the error reading it

    def url(self, name: str) -> str:
        """The ``resolve`` URL of ``name`` at this commit (huggingface_hub's own builder)."""
        return _hf.hf().hf_hub_url(self.spec.repo_id, name, revision=self.commit)

    def size(self, name: str) -> int:
        """The size of ``name`` (from ``model_info``; a HEAD request when that lacked it)."""
        if self.sizes[name] is None:  # a mirror that does not answer ?blobs=true in full
            size = _hf.hf().get_hf_file_metadata(self.url(name), timeout=timeout()).size
            if size is None:
                raise HubError(f"{self.where(name)}: the Hub gives no size for it: refused")
            _check_listing(self.spec, {name: size})
            self.sizes[name] = size
        return self.sizes[name]  # type: ignore[return-value]

    def read(self, name: str, offset: int, n: int) -> bytes:
        """``n`` bytes of ``name`` from ``offset``: one ranged GET through huggingface_hub's
        HTTP session and headers (token, user agent), following the Hub's redirect to its
        CDN; none for ``n == 0``.  A server that ignores the range is refused, not read."""
        hub = _hf.hf()
        n = min(n, self.size(name) - offset)
        if n <= 0:
            return b""
        headers = {**hub.utils.build_hf_headers(), "Range": f"bytes={offset}-{offset + n - 1}"}
        chunks, got = [], 0
        # a timeout: huggingface_hub's shared client has none, and a server that stops
        # sending would hold the look forever
        with hub.utils.get_session().stream(
            "GET", self.url(name), headers=headers, follow_redirects=True, timeout=timeout()
        ) as response:
            hub.utils.hf_raise_for_status(response)
            if response.status_code != 206 and not (offset == 0 and n == self.size(name)):
                raise CorruptFile(
                    self.where(name),
                    f"the server answered a range request "
                    f"with HTTP {response.status_code} (the whole file): not read",
                )
            if response.status_code == 206:
                self._check_range(name, response.headers.get("Content-Range"), offset)
            for chunk in response.iter_bytes():
                chunks.append(chunk[: n - got])
                got += len(chunks[-1])
                if got >= n:
                    break
        data = b"".join(chunks)
        if len(data) != n:  # the answer ended early: never pass a short prefix on as the file
            raise CorruptFile(
                self.where(name),
                f"the server sent {len(data)} of the {n} bytes asked for at offset {offset}",
            )
        with self._lock:
            self.bytes_read += len(data)
        return data

    def _check_range(self, name: str, header: str | None, offset: int) -> None:
        """A 206 answer must say it holds the bytes asked for, of a file of the size
        ``model_info`` gave: bytes from elsewhere would be written where they do not belong
        (the scanner would judge a file that is not the one a loader reads)."""
        m = _CONTENT_RANGE.fullmatch((header or "").strip())
        if not m or int(m[1]) != offset or m[3] not in ("*", str(self.size(name))):
            raise CorruptFile(
                self.where(name),
                f"the server answered bytes {offset}- with "
                f"Content-Range {str(header)[:80]!r} (the file is "
                f"{self.size(name)} bytes): not read",
            )

    def prefetch_json(self, names: list[str]) -> None:
        """Read these JSON files at once, in parallel (one round trip, not one each); later
        :meth:`read_json` calls answer from what came back, errors included."""
        from concurrent.futures import ThreadPoolExecutor

        def one(name: str) -> Any:
            try:
                return self._read_json(name)
            except Exception as exc:  # said when the caller reads it, as a direct read would
                return exc

        todo = [n for n in names if n in self.sizes and n not in self._json]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            self._json.update(zip(todo, pool.map(one, todo)))

    def read_json(self, name: str) -> Any:
        """A JSON file of the repository, read whole (one ranged GET)."""
        if name in self._json:
            value = self._json[name]
            if isinstance(value, Exception):
                raise value
            return value
        return self._read_json(name)

    def _read_json(self, name: str) -> Any:
        if self.size(name) > MAX_JSON_BYTES:
            raise CorruptFile(
                self.where(name),
                f"{self.size(name)} bytes: a config or index "
                f"larger than {MAX_JSON_BYTES} is not read",
            )
        try:
            return json.loads(self.read(name, 0, self.size(name)))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise CorruptFile(
                self.where(name), f"not JSON: {type(exc).__name__}: {str(exc)[:120]}"
            ) from None

    def where(self, name: str) -> str:
        return f"hf://{self.spec.repo_id}@{self.commit[:12]}/{name}"


def timeout() -> float:
    """Seconds a Hub request may wait for the next bytes (huggingface_hub's download timeout,
    ``HF_HUB_DOWNLOAD_TIMEOUT``)."""
    return float(_hf.hf().constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _check_listing(spec: _hf.RepoSpec, sizes: dict[str, int | None]) -> None:
    """Refuse a file list no git repository can hold: each name is joined to a temporary
    folder (the sparse copies) and a size makes a file that large.

    Raises:
        HubError: a name that is absolute, has an empty, ``.`` or ``..`` part, a backslash
            or a control character, or is also a folder of another name; a size that is not
            a whole number from 0 to 8 TiB.
    """
    folders = {
        "/".join(parts[:i])
        for n in sizes
        if isinstance(n, str)
        for parts in [n.split("/")]
        for i in range(1, len(parts))
    }
    for name, size in sizes.items():
        bad = (
            not isinstance(name, str)
            or any(p in ("", ".", "..") for p in name.split("/"))
            or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)
        )
        if bad or name in folders:
            raise HubError(
                f"hf://{spec.label} on {_hf.endpoint()}: the Hub lists a file named "
                f"{str(name)[:80]!r}: not a plain path inside a repository, refused"
            )
        if size is not None and (
            not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES
        ):
            raise HubError(
                f"hf://{spec.label} on {_hf.endpoint()}: the Hub lists "
                f"{name[:80]!r} with size {str(size)[:40]!r}: refused"
            )
