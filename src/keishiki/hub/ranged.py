"""Ranged reads of one Hub repository at one commit, through huggingface_hub's
``HfFileSystem`` file objects, with the HTTP requests and bytes they cost counted.

:class:`Traffic` counts at huggingface_hub's shared HTTP client (an event hook for the
duration of a look), so the hidden calls count too: ``HfFileSystem`` checks the revision
once and lists a folder before its first read.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..errors import CorruptFile
from . import _hf

MAX_JSON_BYTES = 64 * 1024 * 1024  # the path gate's limit on a shard index, for every JSON


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
        hub = _hf.hf()
        self.spec = spec
        info = hub.HfApi().model_info(spec.repo_id, revision=spec.revision, files_metadata=True)
        self.commit: str = info.sha
        self.sizes: dict[str, int | None] = {s.rfilename: s.size for s in info.siblings or []}
        self.fs = hub.HfFileSystem(skip_instance_cache=True)
        self.fs.resolve_path(spec.repo_id, revision=self.commit)  # once, before any thread
        self.bytes_read = 0
        self._lock = threading.Lock()

    def size(self, name: str) -> int:
        """The size of ``name`` (from ``model_info``; asked of the Hub if that lacked it)."""
        if self.sizes[name] is None:  # a mirror that does not answer ?blobs=true in full
            self.sizes[name] = int(self.fs.info(f"{self.spec.repo_id}/{name}",
                                                revision=self.commit)["size"])
        return self.sizes[name]  # type: ignore[return-value]

    def read(self, name: str, offset: int, n: int) -> bytes:
        """``n`` bytes of ``name`` from ``offset``: one ranged GET (none for ``n == 0``)."""
        size = self.size(name)
        if n <= 0:
            return b""
        with self.fs.open(f"{self.spec.repo_id}/{name}", "rb", revision=self.commit,
                          size=size, cache_type="none", block_size=max(n, 1)) as fh:
            fh.seek(offset)
            data = fh.read(n)
        with self._lock:
            self.bytes_read += len(data)
        return data

    def read_json(self, name: str) -> Any:
        """A JSON file of the repository, read whole (one ranged GET)."""
        if self.size(name) > MAX_JSON_BYTES:
            raise CorruptFile(self.where(name), f"{self.size(name)} bytes: a config or index "
                              f"larger than {MAX_JSON_BYTES} is not read")
        try:
            return json.loads(self.read(name, 0, self.size(name)))
        except ValueError as exc:
            raise CorruptFile(self.where(name), f"not JSON: {exc}") from None

    def where(self, name: str) -> str:
        return f"hf://{self.spec.repo_id}@{self.commit[:12]}/{name}"
