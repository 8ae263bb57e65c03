"""A hostile Hub, a hostile repository, a crafted cache: what keishiki's Hub code must refuse.

Each table is one attack class: writing outside the cache or the temporary copy (an ETag, a
commit or a file name that climbs out), repository information huggingface_hub cannot parse,
the token following a redirect to the CDN, answers that lie about ranges and sizes, a server
that stops sending, JSON nested to the recursion limit, sparse copies whose holes a reader
could take for zeros, a pickle the remote scan would pass over for its name, remote files that
must never be unpickled, and ``hf://`` references (and the zoo, and pull offline) answered
from a cache whose links lead elsewhere.  The expected outcome is always one line on stderr
and exit 2 (could not do it), or exit 1 where the path gate finds an escape; never a
traceback, never "safe", never a byte written where it does not belong.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

from .conftest import EVIL, TINY, run_keishiki
from .fakehub import Repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ONNX = "keishiki-test/redteam-onnx"
ONNX_EXT = "keishiki-test/redteam-onnx-external"
ZIP_EVIL = "keishiki-test/redteam-zip-evil"


def _one_line(code: int, out: str, err: str, want: int = 2) -> str:
    """The single stderr line of a refused command (asserting exit code and no stdout)."""
    assert (code, out) == (want, ""), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keishiki: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _escaped(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "pwned" in p.name]


# ---- (a) a Hub answer that names a cache path outside the cache ---------------------------------

PULL_CASES = [  # (id, knob, value, words of the one line)
    ("etag-climbs", "resolve_headers", {"ETag": '"../../../../pwned-etag"'}, "ETag"),
    (
        "linked-etag-climbs",
        "resolve_headers",
        {"X-Linked-Etag": '"../../../../pwned-etag"'},
        "X-Linked-Etag",
    ),
    ("etag-absolute", "resolve_headers", {"ETag": '"/tmp/pwned-abs"'}, "ETag"),
    (
        "commit-header-climbs",
        "resolve_headers",
        {"X-Repo-Commit": "../../../../pwned-c"},
        "X-Repo-Commit",
    ),
    ("sha-climbs", "info_patch", {"sha": "../../../../pwned-sha"}, "not a 40-digit hash"),
    ("sha-absolute", "info_patch", {"sha": "/tmp/pwned-sha"}, "not a 40-digit hash"),
    ("sha-missing", "info_patch", {"sha": None}, "not a 40-digit hash"),
]


@pytest.mark.parametrize(
    "knob,value,words", [c[1:] for c in PULL_CASES], ids=[c[0] for c in PULL_CASES]
)
def test_pull_refuses_cache_paths_from_the_hub(hub, hub_env, tmp_path, knob, value, words):
    """huggingface_hub joins the Hub's ETag and commit to cache paths unchecked; pull checks
    them first (one line, exit 2) and nothing lands outside the cache."""
    getattr(hub, knob).update(value)
    line = _one_line(*run_cli("pull", TINY, "--quiet"))
    assert words in line and "refused" in line
    assert _escaped(tmp_path) == [] and not Path("/tmp/pwned-abs").exists()


def test_pull_refuses_cache_paths_after_a_redirect(hub, hub_env, tmp_path):
    """/resolve redirects on the same host, and the answer at the end of the chain names
    the ETag: huggingface_hub takes it (it wrote the download to <cache>/../../pwned), so it
    is checked as /resolve's own is."""
    hub.cdn_same_host = True
    hub.cdn_headers = {"ETag": '"../../../../pwned-etag"'}
    line = _one_line(*run_cli("pull", TINY, "--quiet"))
    assert "/cdn/" in line and "ETag" in line and "refused" in line
    assert _escaped(tmp_path) == []
    hub.cdn_headers = {}
    assert run_cli("pull", TINY, "--quiet")[0] == 0  # the honest redirect chain


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"lfs": {"oid": "../../../../pwned-dir/pwned", "size": 1}}, "lfs.oid"),
        ({"xetHash": "../../../../pwned-xet"}, "xetHash"),
        ({"oid": "/tmp/pwned-oid"}, "oid"),
    ],
)
def test_pull_refuses_a_tree_listing_whose_ids_climb(hub, hub_env, tmp_path, patch, key):
    """huggingface_hub names blobs and locks after a tree entry's ids (with hf_xet, without
    asking /resolve): a listing whose ids are no plain hash is refused before any write."""
    hub.tree_patch = patch
    line = _one_line(*run_cli("pull", TINY, "--quiet"))
    assert f"has {key} " in line and "refused" in line
    assert _escaped(tmp_path) == [] and not Path("/tmp/pwned-oid").exists()


@pytest.mark.parametrize("local_dir", [False, True], ids=["cache", "local-dir"])
@pytest.mark.parametrize("name", ["../pwned.txt", "a/../../pwned.txt", "/tmp/pwned-abs.txt", ".."])
def test_pull_refuses_file_names_that_climb(hub, hub_env, tmp_path, name, local_dir):
    """The tree listing names a file outside the repository: huggingface_hub refuses it,
    and pull says so in one line (exit 2), nothing written outside."""
    hub.add(Repo("keishiki-test/redteam-names", {"config.json": b"{}", name: b"pwned"}))
    args = ["pull", "keishiki-test/redteam-names", "--quiet"]
    if local_dir:
        (tmp_path / "ld" / "deep").mkdir(parents=True)
        args += ["--local-dir", tmp_path / "ld" / "deep"]
    line = _one_line(*run_cli(*args))
    assert "file name it refuses" in line
    assert _escaped(tmp_path) == [] and not Path("/tmp/pwned-abs.txt").exists()


@pytest.mark.parametrize("local_dir", [False, True], ids=["cache", "local-dir"])
@pytest.mark.parametrize(
    "name", [".git/config", "sub/.GIT/hooks/pre-commit", ".hg/hgrc", ".cache/huggingface/x"]
)
def test_pull_refuses_version_control_and_cache_folders(hub, hub_env, tmp_path, name, local_dir):
    """No Hub repository holds a .git/ (git refuses to commit one), yet a .git/config written
    into a --local-dir checkout runs commands at the next `git status` (core.fsmonitor)."""
    hub.add(Repo("keishiki-test/redteam-vcs", {"config.json": b"{}", name: b"[core]\n"}))
    args = ["pull", "keishiki-test/redteam-vcs", "--quiet"]
    target = tmp_path / "checkout"
    if local_dir:
        target.mkdir()
        args += ["--local-dir", target]
    line = _one_line(*run_cli(*args))
    assert "refused" in line and "version-control or cache folder" in line
    assert not (target / name).exists() and _escaped(tmp_path) == []


@pytest.mark.parametrize("name", [".git", "sub/.Git", ".svn/entries"])
def test_a_pinned_pull_never_downloads_version_control_names(hub, hub_env, tmp_path, name):
    """Pulled at a commit, the file list is not asked for (so not refused): a ".git" *file*
    ("gitdir: elsewhere", beside a folder holding git's config) is never downloaded, nor
    is anything else under a version-control name."""
    repo = hub.add(
        Repo("keishiki-test/redteam-gitfile", {"config.json": b"{}", name: b"gitdir: data\n"})
    )
    target = tmp_path / "checkout"
    target.mkdir()
    code, _out, err = run_cli(
        "pull", f"{repo.repo_id}@{repo.commit}", "--local-dir", target, "--quiet"
    )
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir() if p.name != ".cache") == ["config.json"]


def test_zoo_refuses_cache_paths_from_the_hub(hub, hub_env, tmp_path):
    import keishiki.hub
    from keishiki.errors import HubError

    hub.add(Repo("keishiki-test/redteam-zoo", {"ONNX_HUB_MANIFEST.json": b"[]"}))
    hub.resolve_headers.update({"X-Repo-Commit": "../../../../pwned-zoo"})
    with pytest.raises(HubError, match="X-Repo-Commit"):
        keishiki.hub.list_models(repo="keishiki-test/redteam-zoo")
    assert _escaped(tmp_path) == []


# ---- (a, c) a file list no repository can hold --------------------------------------------------

LISTING_CASES = [  # (id, the siblings model_info lists)
    ("dotdot", [{"rfilename": "../pwned.bin", "size": 10}]),
    ("inner-dotdot", [{"rfilename": "a/../../pwned.bin", "size": 10}]),
    ("absolute", [{"rfilename": "/tmp/pwned.bin", "size": 10}]),
    ("backslash", [{"rfilename": "a\\..\\pwned.bin", "size": 10}]),
    ("control-chars", [{"rfilename": "x\x1b[2J\rpwned.bin", "size": 10}]),
    ("empty-part", [{"rfilename": "a//pwned.bin", "size": 10}]),
    ("dot", [{"rfilename": "./pwned.bin", "size": 10}]),
    (
        "file-and-folder",
        [{"rfilename": "model.bin", "size": 10}, {"rfilename": "model.bin/pwned.bin", "size": 10}],
    ),
    ("size-huge", [{"rfilename": "model.bin", "size": 10**18}]),
    ("size-negative", [{"rfilename": "model.bin", "size": -1}]),
    ("size-string", [{"rfilename": "model.bin", "size": "12"}]),
]


@pytest.mark.parametrize("command", ["info", "scan"])
@pytest.mark.parametrize(
    "siblings", [c[1] for c in LISTING_CASES], ids=[c[0] for c in LISTING_CASES]
)
def test_a_hostile_file_list_is_refused(hub, hub_env, tmp_path, command, siblings):
    config = {"rfilename": "config.json", "size": len(hub.repos[EVIL].files["config.json"])}
    hub.info_patch["siblings"] = [config, *siblings]
    line = _one_line(*run_cli(command, f"hf://{EVIL}"))
    assert "refused" in line
    assert "\x1b" not in line and "\r" not in line
    assert _escaped(tmp_path) == [] and not Path("/tmp/pwned.bin").exists()


MALFORMED_CASES = [  # (id, fields of model_info's answer, the commands that read it)
    ("siblings-not-a-list", {"siblings": "x"}, ["info", "scan", "pull"]),
    ("sibling-without-name", {"siblings": [{"size": 3}]}, ["info", "scan", "pull"]),
    ("sha-not-a-string", {"sha": 123}, ["info", "scan", "pull"]),
    ("name-not-a-string", {"siblings": [{"rfilename": 5, "size": 3}]}, ["info", "scan"]),
]


@pytest.mark.parametrize(
    "patch,command",
    [(c[1], cmd) for c in MALFORMED_CASES for cmd in c[2]],
    ids=[f"{c[0]}-{cmd}" for c in MALFORMED_CASES for cmd in c[2]],
)
def test_a_malformed_model_info_is_one_line(hub, hub_env, patch, command):
    """huggingface_hub's parser fails on shapes the Hub never sends (KeyError, TypeError):
    said as the Hub's malformed answer, not as keishiki's internal error."""
    hub.info_patch.update(patch)
    line = _one_line(*run_cli(command, TINY if command == "pull" else f"hf://{TINY}"))
    assert "malformed" in line or "refused" in line


# ---- a redirect to the CDN carries no token ------------------------------------------------------


@pytest.mark.parametrize("action", ["info", "pull"])
def test_the_token_stays_with_the_hub(hub, hub_env, monkeypatch, action):
    """LFS files redirect to another origin (the CDN): the token goes to the Hub only, never
    across the redirect, for range reads and downloads alike."""
    import keishiki

    hub.repos[TINY].private = True
    hub.cdn = True
    monkeypatch.setenv("HF_TOKEN", hub.repos[TINY].token)
    if action == "info":
        keishiki.inspect(f"hf://{TINY}")
    else:
        keishiki.pull(TINY, quiet=True)
    cdn = [r for r in hub.log if r.path.startswith("/cdn/")]
    assert cdn and not any(r.auth for r in cdn)
    assert {r.host.split(":")[0] for r in cdn} == {"localhost"}
    assert all(r.auth for r in hub.log if not r.path.startswith("/cdn/"))


# ---- (b, e) a server that lies about ranges -----------------------------------------------------

RANGE_CASES = [  # (mode, what the line says)
    ("whole", "HTTP 200"),  # the whole file for a range: not read
    ("shift", "Content-Range"),  # the bytes one further on
    ("short", "sent"),  # half of what was asked for
]


@pytest.mark.parametrize("mode,words", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_info_refuses_a_lying_range_answer(hub, hub_env, mode, words):
    hub.range_mode = mode
    line = _one_line(*run_cli("info", f"hf://{TINY}"))
    assert words in line


@pytest.mark.parametrize("mode", ["shift", "short"])
@pytest.mark.parametrize("repo_id", [TINY, EVIL, ZIP_EVIL])
def test_scan_is_never_safe_from_a_lying_range_answer(hub_redteam, marker, mode, repo_id):
    """A file read from a lying answer is an error for that file (exit 2), never safe."""
    import keishiki

    hub_redteam.range_mode = mode
    report = keishiki.scan(f"hf://{repo_id}")
    assert (report.verdict, report.exit_code()) == ("error", 2)
    assert not marker.exists()


# ---- (d) a server that stops sending ------------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "scan"])
def test_a_stalled_answer_times_out_in_one_line(hub, hub_env, command):
    """huggingface_hub's client waits forever by default; a range read gives up after
    HF_HUB_DOWNLOAD_TIMEOUT seconds (the subprocess timeout is the test's bound)."""
    hub.range_mode = "stall"
    env = {**hub_env.env(), "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
    proc = run_keishiki(env, command, f"hf://{TINY}")
    if command == "scan":  # the file is an error in the report
        assert proc.returncode == 2 and "Timeout" in proc.stdout + proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        line = _one_line(proc.returncode, proc.stdout, proc.stderr)
        assert "Timeout" in line


# ---- (c, e) JSON nested to the recursion limit --------------------------------------------------


def test_deeply_nested_config_is_one_line(hub, hub_env):
    hub.repos[TINY].files["config.json"] = b"[" * 200_000 + b"]" * 200_000
    line = _one_line(*run_cli("info", f"hf://{TINY}"))
    assert "config.json" in line and "RecursionError" in line


# ---- (b) holes of a sparse copy never read as data ----------------------------------------------


@pytest.fixture(scope="module")
def redteam_files(repo_files, marker, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """An ONNX model with a 256 KiB initializer (inline, and as external data), and a torch
    zip whose data.pkl is the marker-writing pickle."""
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.scan.samples import _payload_pickles

    weight = numpy_helper.from_array(np.arange(256 * 256, dtype=np.float32).reshape(256, 256), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path_factory.mktemp("redteam-onnx")
    onnx.save_model(model, folder / "model.onnx")
    inline = (folder / "model.onnx").read_bytes()
    onnx.save_model(
        model,
        folder / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    path = tmp_path_factory.mktemp("redteam-zip") / "pytorch_model.bin"
    torch.save({"w": torch.ones(64 * 1024)}, path)
    evil_pickle = _payload_pickles(marker)["reduce_os_system_p4"][1]
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = evil_pickle if item.filename.endswith("/data.pkl") else src.read(item)
            dst.writestr(item.filename, data)
    return {
        ONNX: {"model.onnx": inline},
        ONNX_EXT: {
            "model.onnx": (folder / "ext.onnx").read_bytes(),
            "ext.onnx.data": (folder / "ext.onnx.data").read_bytes(),
        },
        ZIP_EVIL: {"pytorch_model.bin": out.getvalue()},
    }


@pytest.fixture
def hub_redteam(hub, hub_env, redteam_files):
    for repo_id, files in redteam_files.items():
        hub.add(Repo(repo_id, dict(files)))
    return hub


HOLE_CASES = [  # an hf:// file read by keishiki's local reader over a sparse copy
    f"hf://{ONNX}/model.onnx",
    f"hf://{ONNX_EXT}/model.onnx",
    f"hf://{ZIP_EVIL}/pytorch_model.bin",
    f"hf://{EVIL}/pytorch_model.bin",
]


@pytest.mark.parametrize("fill", [b"\xaa", b"c", b"\x80"], ids=["aa", "GLOBAL", "PROTO"])
@pytest.mark.parametrize("ref", HOLE_CASES, ids=["onnx", "onnx-external", "zip", "pickle"])
def test_remote_files_never_read_the_holes(hub_redteam, monkeypatch, marker, ref, fill):
    """``info hf://.../file`` (ONNX, torch zip, raw pickle): holes of the sparse copy and of
    its neighbours filled with other bytes (pickle opcodes included) give the same answer as
    holes of zeros, so neither the reader nor the scanner read a byte that was not fetched."""
    import keishiki
    from keishiki.hub import remote_files, remote_scan

    zeros = keishiki.inspect(ref).to_dict()
    original_sparse, original_hole = remote_scan._Sparse.__init__, remote_scan._placeholder

    def filled(self, repo, name, path):
        original_sparse(self, repo, name, path)
        path.write_bytes(fill * self.size)

    def hole(root, name, size):
        original_hole(root, name, size)
        (root / name).write_bytes(fill * size)

    monkeypatch.setattr(remote_scan._Sparse, "__init__", filled)
    monkeypatch.setattr(remote_files, "_placeholder", hole)
    assert keishiki.inspect(ref).to_dict() == zeros
    assert not marker.exists()


# ---- (g) nothing remote is unpickled ------------------------------------------------------------


@pytest.mark.parametrize(
    "ref,verdict",
    [
        (f"hf://{EVIL}", "dangerous"),
        (f"hf://{EVIL}/pytorch_model.bin", "dangerous"),
        (f"hf://{ZIP_EVIL}/pytorch_model.bin", "dangerous"),
    ],
)
def test_remote_pickles_are_read_never_loaded(hub_redteam, marker, ref, verdict):
    code, out, err = run_cli("info", ref, "--json")
    assert code in (0, 1), err
    assert json.loads(out)["safety"]["verdict"] == verdict
    assert not marker.exists()


# ---- (b) a file the remote scan passes over for its name ----------------------------------------


def _hidden(repo_files, marker, tmp_path_factory) -> dict[str, bytes]:
    """The marker pickle under names no loader suffix announces, as torch.load, pickle.load
    and joblib.load read them: raw, in a tar (torch's legacy format), gzip-compressed."""
    import gzip
    import tarfile

    from tests.scan.samples import _payload_pickles

    evil = _payload_pickles(marker)["reduce_os_system_p4"][1]
    tar_path = tmp_path_factory.mktemp("redteam-tar") / "model.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    return {
        "weights.data": evil,
        "model.tar": tar_path.read_bytes(),
        "state.gz": gzip.compress(evil),
        "optimizer.pt.bak": evil,
    }


@pytest.mark.parametrize("name", ["weights.data", "model.tar", "state.gz", "optimizer.pt.bak"])
def test_remote_scan_sees_what_the_local_scan_sees(
    hub, hub_env, repo_files, marker, tmp_path_factory, tmp_path, name
):
    """A pickle a loader can be pointed at is judged by its bytes, whatever its name: the
    remote verdict is the local one (dangerous), never "safe" for a file it did not read."""
    import keishiki

    data = _hidden(repo_files, marker, tmp_path_factory)[name]
    hub.add(Repo("keishiki-test/redteam-hidden", {"README.md": b"# hi\n", name: data}))
    (tmp_path / name).write_bytes(data)
    local = keishiki.scan(tmp_path)
    remote = keishiki.scan("hf://keishiki-test/redteam-hidden")
    assert local.verdict == "dangerous"
    assert (remote.verdict, remote.exit_code()) == ("dangerous", 1)
    assert not marker.exists()


# ---- (c) a sparse copy fetched in bounded pieces ------------------------------------------------


def test_merged_ranges_are_read_in_bounded_pieces(hub_redteam, monkeypatch):
    """Members side by side merge into one range of any size; each request (and what memory
    holds of it) stays within FETCH_PIECE."""
    import keishiki
    from keishiki.hub import ranged, remote_scan

    monkeypatch.setattr(remote_scan, "FETCH_PIECE", 4096)
    sizes = []
    original = ranged.RangedRepo.read

    def counted(self, name, offset, n):
        sizes.append(n)
        return original(self, name, offset, n)

    monkeypatch.setattr(ranged.RangedRepo, "read", counted)
    report = keishiki.scan(f"hf://{EVIL}")
    assert report.verdict == "dangerous"
    assert sizes and max(sizes) <= 4096 and len(sizes) > 1


# ---- (a) hf:// through a crafted cache ----------------------------------------------------------


def _storage(hub_env) -> Path:
    return hub_env.cache / "models--keishiki-test--tiny-llama"


def _relink_file(snapshot: Path, outside: Path) -> None:
    """model.safetensors of the snapshot now links to a copy outside the repository."""
    outside.mkdir()
    shutil.copyfile(snapshot / "model.safetensors", outside / "secret.safetensors")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(outside / "secret.safetensors")


def _ref_climbs(snapshot: Path, outside: Path) -> None:
    """refs/main names a folder outside snapshots/ (a copy of the snapshot)."""
    shutil.copytree(snapshot, outside, symlinks=False)
    ref = snapshot.parent.parent / "refs" / "main"
    ref.write_text(os.path.relpath(outside, snapshot.parent))


def _ref_absolute(snapshot: Path, outside: Path) -> None:
    shutil.copytree(snapshot, outside, symlinks=False)
    (snapshot.parent.parent / "refs" / "main").write_text(str(outside))


def _snapshot_is_a_link(snapshot: Path, outside: Path) -> None:
    shutil.copytree(snapshot, outside, symlinks=False)
    shutil.rmtree(snapshot)
    snapshot.symlink_to(outside, target_is_directory=True)


def _blobs_is_a_link(snapshot: Path, outside: Path) -> None:
    blobs = snapshot.parent.parent / "blobs"
    shutil.copytree(blobs, outside)
    shutil.rmtree(blobs)
    blobs.symlink_to(outside, target_is_directory=True)


CACHE_CASES = [  # (id, crafting, the hf:// path after the repository)
    ("file-links-outside", _relink_file, "/model.safetensors"),
    ("file-links-outside-repo", _relink_file, ""),
    ("ref-climbs", _ref_climbs, ""),
    ("ref-absolute", _ref_absolute, ""),
    ("snapshot-is-a-link", _snapshot_is_a_link, ""),
    ("blobs-is-a-link", _blobs_is_a_link, ""),
]


@pytest.mark.parametrize("command", ["convert", "compare"])
@pytest.mark.parametrize(
    "craft,inner", [c[1:] for c in CACHE_CASES], ids=[c[0] for c in CACHE_CASES]
)
def test_a_crafted_cache_is_refused(
    hub, hub_env, go_offline, tmp_path, tiny_llama, craft, inner, command
):
    """A snapshot whose files, folder, ref or blobs lead outside the repository: the path
    gate refuses the hf:// reference (exit 1), offline and online alike."""
    import keishiki

    snapshot = keishiki.pull(TINY, quiet=True).folder
    craft(snapshot, tmp_path / "outside")
    go_offline()
    argv = [command, f"hf://{TINY}{inner}"]
    argv += (
        [tmp_path / "o.safetensors", "--to", "safetensors"]
        if command == "convert"
        else [tiny_llama / "model.safetensors" if inner else tiny_llama, "--json"]
    )
    line = _one_line(*run_cli(*argv), want=1)
    assert "unsafe" in line
    assert not (tmp_path / "o.safetensors").exists()


def _to_dev_zero(link: Path, tmp_path: Path) -> None:
    link.unlink()
    link.symlink_to("/dev/zero")


def _blob_to_fifo(link: Path, tmp_path: Path) -> None:
    blob = link.resolve()
    blob.unlink()
    os.mkfifo(blob)


# (the path gate refuses both: a link out of the repository, a blob that is not a file)
@pytest.mark.parametrize(
    "craft,error",
    [(_to_dev_zero, "UnsafeFile"), (_blob_to_fifo, "UnsafeFile")],
    ids=["link-to-dev-zero", "blob-is-a-fifo"],
)
def test_zoo_reads_no_crafted_cache_file(hub, hub_env, go_offline, craft, error, tmp_path):
    """The zoo's manifest (and each model, before its checksum) is read from the cache only
    through the path gate: a link to /dev/zero or a FIFO in blobs/ would be read forever."""
    import keishiki.hub
    from keishiki import errors

    hub.add(Repo("keishiki-test/redteam-zoo", {"ONNX_HUB_MANIFEST.json": b"[]"}))
    assert keishiki.hub.list_models(repo="keishiki-test/redteam-zoo") == []
    snapshot = next((hub_env.cache / "models--keishiki-test--redteam-zoo" / "snapshots").iterdir())
    craft(snapshot / "ONNX_HUB_MANIFEST.json", tmp_path)
    go_offline()
    with pytest.raises(getattr(errors, error)):
        keishiki.hub.list_models(repo="keishiki-test/redteam-zoo")


@pytest.mark.parametrize(
    "craft",
    [_ref_climbs, _ref_absolute, _snapshot_is_a_link],
    ids=["ref-climbs", "ref-absolute", "snapshot-is-a-link"],
)
def test_pull_answers_no_crafted_snapshot(hub, hub_env, go_offline, tmp_path, craft):
    """Offline, pull answers from the cache: a ref or snapshot leading elsewhere is refused
    (exit 1), not reported as the repository's folder."""
    import keishiki

    snapshot = keishiki.pull(TINY, quiet=True).folder
    craft(snapshot, tmp_path / "outside")
    go_offline()
    line = _one_line(*run_cli("pull", TINY, "--quiet"), want=1)
    assert "not a snapshot of" in line


@pytest.mark.parametrize(
    "path, etag, refused",
    [
        ("/org/name/resolve/main/x.bin", '"../../../x"', True),
        ("/org/api/resolve/main/x.bin", '"../../../x"', True),  # a repo named api: no API
        ("/elsewhere/x.bin", '"../../../x"', True),  # where a resolve redirected to
        ("/api/models/org/name", '"Zm9v/YmFy+cQ=="', False),  # a web server's base64 ETag
        ("/api/models/org/name", '"../../../x"', True),  # the API's own, climbing
        ("/org/name/resolve/main/x.bin", '"3f786850e387550fdab836ed7e6dc881de23001b"', False),
    ],
)
def test_the_cache_header_check_covers_the_endpoints_answers(hub, hub_env, path, etag, refused):
    """Which answers the ETag check sees: every answer of the endpoint's host, the API's
    (base64 ETags) only for what climbs; a path holding "/api/" elsewhere is no API."""
    import httpx

    from keishiki.errors import HubError
    from keishiki.hub import _hf

    request = httpx.Request("HEAD", _hf.endpoint() + path)
    response = httpx.Response(200, headers={"ETag": etag}, request=request)
    if refused:
        with pytest.raises(HubError, match="not a plain hash"):
            _hf._check_cache_headers(response)
    else:
        _hf._check_cache_headers(response)
    elsewhere = httpx.Response(
        200, headers={"ETag": etag}, request=httpx.Request("GET", "http://cdn.invalid" + path)
    )
    _hf._check_cache_headers(elsewhere)  # another host's answers name nothing in the cache
