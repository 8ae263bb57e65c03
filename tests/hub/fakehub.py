"""A loopback stand-in for the Hugging Face Hub: just the calls huggingface_hub 2.4 makes to
pull a repository and to read it with ranged requests.

The routes, each checked against huggingface_hub's source:

- ``GET /api/models/{repo}/revision/{rev}`` (``?blobs=true``): ``HfApi.model_info`` /
  ``repo_info``, called by ``snapshot_download`` to resolve a branch to its commit and by
  ``HfFileSystem.resolve_path`` to check the repo and revision exist;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=``): ``list_repo_tree``
  (``snapshot_download``'s file list, ``list_repo_files``, ``HfFileSystem.ls``);
- ``POST /api/models/{repo}/paths-info/{rev}``: ``get_paths_info`` (``HfFileSystem.info``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``hf_hub_download``'s metadata call needs
  ``X-Repo-Commit`` and an ``ETag`` (``X-Linked-Etag``/``X-Linked-Size`` for LFS files, as
  the Hub sends them), and its GET and ``HfFileSystemFile`` honour ``Range``.

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo``), which ``hf_raise_for_status`` turns into
huggingface_hub's exception classes.  Every request is recorded (method, path, range, bytes
sent) so tests can say what was and was not fetched.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# files the Hub stores in LFS (a sha256 ETag and X-Linked-* headers, as huggingface.co does)
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".pkl",
    ".gz",
)


@dataclass
class Repo:
    """One model repository: its files at one commit, the branches that point at it."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = ""
    branches: tuple[str, ...] = ("main",)
    gated: bool = False
    # private: without ``Authorization: Bearer <token>`` the Hub answers 401 (as for a
    # repository that does not exist: it never says which)
    private: bool = False
    token: str = "hf_keishiki_test_token"

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for name in sorted(self.files):
                digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
            self.commit = digest.hexdigest()

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, **kw) -> "Repo":
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return cls(repo_id, files, **kw)

    def resolves(self, rev: str) -> bool:
        return rev in self.branches or rev == self.commit


@functools.lru_cache(maxsize=None)  # the real Hub does not hash a file per request
def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` (an LFS file's ETag and oid)."""
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=None)
def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (the ETag the Hub sends for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


@dataclass
class Request:
    method: str
    path: str  # URL path, unquoted, without the query
    range: str | None  # the Range header, if any
    sent: int  # body bytes sent
    host: str = ""  # the Host header (the CDN's is another origin)
    auth: bool = False  # whether an Authorization header came with it


@dataclass
class FakeHub:
    """The server's state: repositories by id, and the log of every request."""

    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    sizes_in_info: bool = True  # False: model_info's siblings without sizes (a lean mirror)
    # True: LFS files answer /resolve with a 302 to another host (http://localhost:PORT/cdn/),
    # as huggingface.co sends them to its CDN; the metadata rides on the redirect itself
    cdn: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    connections: set = field(default_factory=set)  # open keep-alive sockets, closed by stop()
    # {file name: n}: the next whole-file GET of that name sends its headers and n bytes of
    # the body, then drops the connection (a download killed mid-way); once per entry
    cut: dict[str, int] = field(default_factory=dict)
    cut_always: bool = False  # True: every GET of a file in ``cut`` fails (ranged ones at once)
    # {file name: n}: the next whole-file GET sends n bytes, then waits for ``release`` (the
    # client is killed meanwhile), then drops the connection
    stall: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    # a hostile Hub (tests/hub/test_redteam_hub.py): fields merged into model_info's answer,
    # headers that replace /resolve's own, and how a ranged GET is answered: "honest",
    # "whole" (200 and the whole file), "shift" (the bytes one further on, as its
    # Content-Range says), "short" (half the bytes asked for), "stall" (headers, then nothing
    # until ``release``)
    info_patch: dict = field(default_factory=dict)
    resolve_headers: dict = field(default_factory=dict)
    range_mode: str = "honest"
    # True: LFS files answer /resolve with a bare 302 to /cdn/ on the same host, the
    # metadata (commit, ETag) on the CDN's answer, with ``cdn_headers`` over it
    cdn_same_host: bool = False
    cdn_headers: dict = field(default_factory=dict)
    tree_patch: dict = field(default_factory=dict)  # fields merged into each tree file entry

    def add(self, repo: Repo) -> Repo:
        self.repos[repo.repo_id] = repo
        return repo

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # a short poll: shutdown() waits for it (0.5 s by default, at every test's teardown)
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, kwargs={"poll_interval": 0.02}
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection: huggingface_hub's client keeps
        connections alive, and a handler thread would go on answering on one."""
        self.release.set()  # a stalled answer ends now
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=10)
        with self.lock:
            open_now, self.connections = list(self.connections), set()
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    # ---- what tests ask of the log ------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.log.clear()

    def requests_for(self, suffix: str) -> list[Request]:
        """Requests whose path ends with ``suffix`` (a file name or an API route tail)."""
        with self.lock:
            return [r for r in self.log if r.path.endswith(suffix)]

    @property
    def bytes_sent(self) -> int:
        with self.lock:
            return sum(r.sent for r in self.log)


_REV_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>.+))?$")
_TREE_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rest>.+)$")
_PATHS_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>.+)$")
_RESOLVE_ROUTE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rest>.+)$")
_CDN_ROUTE = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds
    # the body for the client's delayed ACK (40 ms a small answer, which no real Hub costs)
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def handle(self) -> None:
        # a client that hangs up mid-answer (a range answered whole, refused) is no server error
        with contextlib.suppress(ConnectionError):
            super().handle()

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # ---- plumbing ---------------------------------------------------------------------------

    def _record(self, sent: int) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.state.lock:
            self.state.log.append(
                Request(
                    self.command,
                    path,
                    self.headers.get("Range"),
                    sent,
                    self.headers.get("Host", ""),
                    "Authorization" in self.headers,
                )
            )

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        head_only = self.command == "HEAD"
        # logged before a byte goes out: the client cannot see an answer the log lacks
        self._record(0 if head_only else len(body))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        self._json(
            {"error": code},
            status,
            {"X-Error-Code": code, "X-Error-Message": code, **(headers or {})},
        )

    def _repo(self, repo_id: str) -> Repo | None:
        """The repo, or None after answering with the Hub's error for a missing or gated one."""
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        if repo.gated:
            self._error(403, "GatedRepo")
            return None
        if repo.private and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "RepoNotFound")
            return None
        return repo

    def _split_rev(self, repo: Repo, rest: str) -> tuple[str, str] | None:
        """(revision, path) from ``rev/path``; a revision may hold slashes (refs/pr/1)."""
        for rev in sorted((*repo.branches, repo.commit), key=len, reverse=True):
            if rest == rev or rest.startswith(rev + "/"):
                return rev, rest[len(rev) + 1 :]
        return None

    # ---- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        for route, handler in (
            (_TREE_ROUTE, self._tree),
            (_REV_ROUTE, self._info),
            (_RESOLVE_ROUTE, self._resolve),
            (_CDN_ROUTE, self._cdn),
        ):
            m = route.match(path)
            if m:
                return handler(m, query)
        self._error(404, "NotFound")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        m = _PATHS_ROUTE.match(unquote(url.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        if not m:
            return self._error(404, "NotFound")
        repo = self._repo(m["repo"])
        if repo is None:
            return
        if not repo.resolves(m["rev"]):
            return self._error(404, "RevisionNotFound")
        form = parse_qs(body)
        wanted = form.get("paths", [])
        self._json([self._entry(repo, p) for p in wanted if p in repo.files])

    def _info(self, m: re.Match, query: dict) -> None:
        repo = self._repo(m["repo"])
        if repo is None:
            return
        rev = m["rev"] or "main"
        if not repo.resolves(rev):
            return self._error(404, "RevisionNotFound")
        blobs = query.get("blobs") == ["True"] or query.get("blobs") == ["true"]
        siblings = []
        for name, data in sorted(repo.files.items()):
            entry = {"rfilename": name}
            if blobs and self.state.sizes_in_info:
                entry.update(size=len(data), blobId=git_oid(data))
                if is_lfs(name):
                    entry["lfs"] = {
                        "sha256": sha256_hex(data),
                        "size": len(data),
                        "pointerSize": 134,
                    }
            siblings.append(entry)
        self._json(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "siblings": siblings,
                "tags": [],
                **self.state.info_patch,
            }
        )

    def _entry(self, repo: Repo, name: str) -> dict:
        data = repo.files[name]
        entry = {"type": "file", "oid": git_oid(data), "size": len(data), "path": name}
        if is_lfs(name):
            entry["lfs"] = {"oid": sha256_hex(data), "size": len(data), "pointerSize": 134}
        return {**entry, **self.state.tree_patch}

    def _tree(self, m: re.Match, query: dict) -> None:
        repo = self._repo(m["repo"])
        if repo is None:
            return
        split = self._split_rev(repo, m["rest"])
        if split is None:
            return self._error(404, "RevisionNotFound")
        _rev, folder = split
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        out, folders = [], set()
        for name in sorted(repo.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and sub not in folders:
                    folders.add(sub)
                    out.append({"type": "directory", "oid": git_oid(sub.encode()), "path": sub})
            if recursive or len(parts) == 1:
                out.append(self._entry(repo, name))
        if prefix and not out:
            return self._error(404, "EntryNotFound")
        self._json(out)

    def _resolve(self, m: re.Match, query: dict) -> None:
        repo = self._repo(m["repo"])
        if repo is None:
            return
        split = self._split_rev(repo, m["rest"])
        if split is None:
            return self._error(404, "RevisionNotFound")
        _rev, name = split
        commit = {"X-Repo-Commit": repo.commit}
        if name not in repo.files:
            return self._error(404, "EntryNotFound", commit)
        data = repo.files[name]
        headers = {**commit, "Accept-Ranges": "bytes", "ETag": f'"{git_oid(data)}"'}
        if is_lfs(name):
            sha = sha256_hex(data)
            headers.update(
                {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            )
            headers.update(self.state.resolve_headers)
            if self.state.cdn_same_host:
                return self._send(302, b"", {"Location": f"/cdn/{sha}"})
            if self.state.cdn:
                port = self.server.server_address[1]
                return self._send(
                    302, b"", {**headers, "Location": f"http://localhost:{port}/cdn/{sha}"}
                )
        self._bytes(data, {**headers, **self.state.resolve_headers})

    def _cdn(self, m: re.Match, query: dict) -> None:
        for repo in self.state.repos.values():
            for data in repo.files.values():
                if sha256_hex(data) == m["sha"]:
                    headers = {"Accept-Ranges": "bytes", "ETag": f'"{m["sha"]}"'}
                    if self.state.cdn_same_host:
                        headers["X-Repo-Commit"] = repo.commit
                    return self._bytes(data, {**headers, **self.state.cdn_headers})
        self._error(404, "NotFound")

    def _bytes(self, data: bytes, headers: dict[str, str]) -> None:
        """The file, or the part of it a ``Range`` header asks for (206)."""
        if self.command == "GET" and self._cut_short(data, headers):
            return
        wanted = self.headers.get("Range")
        if wanted and self.command == "GET":
            r = _RANGE.match(wanted.strip())
            if not r or int(r[1]) >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            start = int(r[1])
            end = min(int(r[2]) if r[2] else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            mode = self.state.range_mode
            if mode == "whole":
                return self._send(200, data, headers, "application/octet-stream")
            body = {
                "shift": data[start + 1 : end + 2],
                "short": data[start : start + (end + 1 - start) // 2],
            }.get(mode, data[start : end + 1])
            if mode == "shift":
                headers["Content-Range"] = f"bytes {start + 1}-{end + 1}/{len(data)}"
            if mode == "stall":
                self._record(0)
                self.send_response(206)
                self.send_header("Content-Range", headers["Content-Range"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                self.state.release.wait(60)
                self.close_connection = True
                return
            return self._send(206, body, headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    def _cut_short(self, data: bytes, headers: dict[str, str]) -> bool:
        """Send part of ``data`` and drop the connection, when ``cut`` names this file (a
        ranged request, a resume, is dropped before any byte when ``cut_always``)."""
        name = unquote(urlsplit(self.path).path).rsplit("/", 1)[-1]
        ranged = bool(self.headers.get("Range"))
        with self.state.lock:
            stall = None if ranged else self.state.stall.pop(name, None)
            if stall is not None:
                n = stall
            elif self.state.cut_always:
                n = self.state.cut.get(name)
            else:
                n = None if ranged else self.state.cut.pop(name, None)
        if n is None:
            return False
        self._record(0 if ranged else n)
        if ranged:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[:n])
        self.wfile.flush()
        if stall is not None:
            self.state.release.wait(60)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        return True
