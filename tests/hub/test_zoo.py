"""``keishiki.hub``, the ONNX Model Hub's replacement, against the loopback fake Hub: a zoo
repository holding an ``ONNX_HUB_MANIFEST.json`` (onnx/models' format) and tiny ONNX models
built here, read through huggingface_hub into a cache in tmp_path.

onnx.hub's rules are checked as its code had them: names case-insensitive, a tag filter
keeps models sharing any tag, ``opset=None`` the highest, ``opset=N`` exactly N.  What it did
not do is checked too: sha256 against the manifest (a bad file leaves the cache), manifest
paths kept inside the repository, the test-data archive extracted member by member under
checks, one-line errors with exit 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from keishiki.errors import HubError, InvalidRequest, UnsafeFile
from tests.conftest import REPO, run_cli

from .fakehub import FakeHub, Repo

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ZOO = "onnxmodelzoo/legacy_models"  # the default repository, served by the fake Hub
OTHER = "keishiki-test/my-zoo"  # a second zoo, for repo=
NO_MANIFEST = "keishiki-test/no-manifest"


# ---- the zoo's files ----------------------------------------------------------------------


def _model(opset: int, op: str, external: str | None = None) -> bytes:
    """Y = op(X + W) on [1, 4] floats; ``external``: W's data "stored" in that file."""
    w = numpy_helper.from_array(__import__("numpy").arange(4, dtype="float32").reshape(1, 4), "W")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", external
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["S"]), helper.make_node(op, ["S"], ["Y"])],
        f"tiny_{op.lower()}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="keishiki-tests"
    )
    model.ir_version = 8
    return model.SerializeToString()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _test_data(model: bytes) -> tuple[bytes, bytes, bytes]:
    """(the archive, input_0.pb, output_0.pb) as the zoo ships them: one top folder."""
    import numpy as np

    x = np.array([[-2.0, -1.0, 0.5, 1.0]], dtype=np.float32)
    y = np.maximum(x + np.arange(4, dtype=np.float32), 0)
    inp = numpy_helper.from_array(x, "X").SerializeToString()
    out = numpy_helper.from_array(y, "Y").SerializeToString()
    archive = _tar(
        [
            (_file("tinynet/model.onnx"), model),
            (_file("tinynet/test_data_set_0/input_0.pb"), inp),
            (_file("tinynet/test_data_set_0/output_0.pb"), out),
        ]
    )
    return archive, inp, out


def _entry(
    name: str,
    opset: int,
    path: str,
    data: bytes | None,
    tags: list[str],
    archive: tuple[str, bytes] | None = None,
    **metadata,
) -> dict:
    meta = {"tags": tags}
    if data is not None:
        meta.update(model_sha=hashlib.sha256(data).hexdigest(), model_bytes=len(data))
    if archive is not None:
        meta.update(
            model_with_data_path=archive[0],
            model_with_data_sha=hashlib.sha256(archive[1]).hexdigest(),
            model_with_data_bytes=len(archive[1]),
        )
    meta.update(metadata)
    return {
        "model": name,
        "model_path": path,
        "onnx_version": "1.14",
        "opset_version": opset,
        "metadata": meta,
    }


V = "vision/classification/tinynet/model"


@pytest.fixture(scope="module")
def zoo() -> dict:
    """{"files": {path: bytes}, "manifest": [entries]} of the zoo repository."""
    relu12, relu13, text = _model(12, "Relu"), _model(13, "Relu"), _model(13, "Sigmoid")
    danger = _model(13, "Relu", external="../../../../secret.bin")
    archive, inp, out = _test_data(relu13)
    files = {
        f"{V}/tinynet-12.onnx": relu12,
        f"{V}/tinynet-13.onnx": relu13,
        f"{V}/tinynet-13.tar.gz": archive,
        "text/tinytext/model/tinytext-13.onnx": text,
        "misc/danger-13.onnx": danger,
        "misc/changed-13.onnx": relu13,
    }
    manifest = [
        _entry("TinyNet", 12, f"{V}/tinynet-12.onnx", relu12, ["vision", "classification"]),
        _entry(
            "TinyNet",
            13,
            f"{V}/tinynet-13.onnx",
            relu13,
            ["vision", "classification"],
            archive=(f"{V}/tinynet-13.tar.gz", archive),
        ),
        _entry(
            "TinyText", 13, "text/tinytext/model/tinytext-13.onnx", text, ["Text", "generation"]
        ),
        _entry("Danger", 13, "misc/danger-13.onnx", danger, ["misc"]),
        # the manifest's checksum is of other bytes than the repository serves
        _entry("Changed", 13, "misc/changed-13.onnx", relu12, ["misc"]),
        _entry("Unchecked", 13, f"{V}/tinynet-13.onnx", None, ["misc"]),
        *[
            _entry(f"Escape-{i}", 13, path, relu13, ["misc"])
            for i, path in enumerate(
                [
                    "../../etc/passwd",
                    "/etc/passwd",
                    "vision\\..\\..\\x.onnx",
                    "a/./b.onnx",
                    "C:/x.onnx",
                ]
            )
        ],
    ]
    return {"files": files, "manifest": manifest, "inp": inp, "out": out}


def _repo_files(zoo: dict, manifest: list[dict] | None = None, **extra: bytes) -> dict:
    files = dict(zoo["files"], **extra)
    files["ONNX_HUB_MANIFEST.json"] = json.dumps(manifest or zoo["manifest"], indent=1).encode()
    return files


@pytest.fixture
def hub(zoo):
    """The fake Hub of this module (it replaces conftest's, which serves LLM repositories):
    the zoo at its default id, a second zoo, a repository without a manifest."""
    server = FakeHub()
    server.add(Repo(ZOO, _repo_files(zoo)))
    server.add(Repo(OTHER, _repo_files(zoo, zoo["manifest"][:2])))
    server.add(Repo(NO_MANIFEST, {"README.md": b"# not a zoo\n"}))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def keishiki_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "keishiki-cache"
    monkeypatch.setenv("KEISHIKI_CACHE", str(cache))
    return cache


def _snapshot(hub_env, hub, repo_id: str = ZOO) -> Path:
    return (
        hub_env.cache
        / f"models--{repo_id.replace('/', '--')}"
        / "snapshots"
        / hub.repos[repo_id].commit
    )


def _fetched(hub, suffix: str) -> list[str]:
    return [r.method for r in hub.requests_for(suffix) if "/resolve/" in r.path]


# ---- onnx.hub's API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,tags,expected",
    [
        (None, None, None),  # every entry
        ("tinynet", None, [("TinyNet", 12), ("TinyNet", 13)]),  # case-insensitive name
        ("TINYTEXT", None, [("TinyText", 13)]),
        (None, ["VISION"], [("TinyNet", 12), ("TinyNet", 13)]),  # case-insensitive tag
        (None, ["text"], [("TinyText", 13)]),  # the manifest says "Text"
        (
            None,
            ["generation", "classification"],  # any tag shared
            [("TinyNet", 12), ("TinyNet", 13), ("TinyText", 13)],
        ),
        ("tinynet", ["text"], []),  # name and tags both
        ("resnet50", None, []),
        (None, [], []),  # no tag shared with nothing
    ],
)
def test_list_models(hub, hub_env, zoo, model, tags, expected):
    import keishiki.hub

    got = [(m.model, m.opset) for m in keishiki.hub.list_models(model=model, tags=tags)]
    if expected is None:
        expected = [(e["model"], e["opset_version"]) for e in zoo["manifest"]]
    assert got == expected
    # the manifest only: no model file was asked for
    assert [r.path for r in hub.log if "/resolve/" in r.path] == [
        f"/{ZOO}/resolve/main/ONNX_HUB_MANIFEST.json"
    ] * 2  # HEAD, GET


@pytest.mark.parametrize(
    "name,opset,expected_path",
    [
        ("TinyNet", None, f"{V}/tinynet-13.onnx"),  # the highest opset
        ("tinynet", 12, f"{V}/tinynet-12.onnx"),
        ("tInYnEt", 13, f"{V}/tinynet-13.onnx"),
    ],
)
def test_get_model_info(hub, hub_env, zoo, name, opset, expected_path):
    import keishiki.hub

    info = keishiki.hub.get_model_info(name, opset=opset)
    entry = next(e for e in zoo["manifest"] if e["model_path"] == expected_path)
    assert (info.model, info.opset, info.model_path) == (
        "TinyNet",
        entry["opset_version"],
        expected_path,
    )
    assert info.model_sha == entry["metadata"]["model_sha"]
    assert info.tags == {"vision", "classification"} and info.raw_model_info == entry
    assert str(info).startswith(f"ModelInfo(model=TinyNet, opset={info.opset}, path=")


def test_load_returns_the_checked_model(hub, hub_env, zoo, go_offline):
    import keishiki.hub

    proto = keishiki.hub.load("tinynet", opset=12, silent=True)
    data = zoo["files"][f"{V}/tinynet-12.onnx"]
    assert isinstance(proto, onnx.ModelProto)
    assert proto == onnx.load_from_string(data)
    assert proto.opset_import[0].version == 12
    cached = _snapshot(hub_env, hub) / V / "tinynet-12.onnx"
    assert cached.is_symlink() and cached.read_bytes() == data  # huggingface_hub's cache
    assert _fetched(hub, "tinynet-12.onnx") == ["HEAD", "GET"]
    # again: the manifest is checked, the model comes from the cache (pinned by commit)
    hub.reset()
    assert keishiki.hub.load("TinyNet", opset=12, silent=True) == proto
    assert _fetched(hub, "tinynet-12.onnx") == []
    # and offline, without a request
    hub.reset()
    go_offline()
    assert keishiki.hub.load("TinyNet", opset=12, silent=True) == proto
    assert hub.log == []


def test_load_without_onnx_returns_the_path(hub, hub_env, zoo, monkeypatch):
    import keishiki.hub

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    path = keishiki.hub.load("TinyNet", silent=True)
    assert path == _snapshot(hub_env, hub) / V / "tinynet-13.onnx"
    assert path.read_bytes() == zoo["files"][f"{V}/tinynet-13.onnx"]


def test_load_goes_through_the_load_gate(hub, hub_env):
    import keishiki.hub

    with pytest.raises(
        UnsafeFile,
        match="not loaded to load it with onnx.load: dangerous: .*external-data location",
    ):
        keishiki.hub.load("danger", silent=True)
    # trusted, it passes the gate, and onnx's own external-data check refuses it
    with pytest.raises(Exception, match="points outside the directory"):
        keishiki.hub.load("danger", silent=True, trust_remote_code=True)


def test_download_model_with_test_data(hub, hub_env, zoo, keishiki_cache):
    import keishiki.hub

    folder = keishiki.hub.download_model_with_test_data("tinynet", silent=True)
    archive = zoo["files"][f"{V}/tinynet-13.tar.gz"]
    sha = hashlib.sha256(archive).hexdigest()
    assert folder == keishiki_cache / "onnx-zoo" / f"{sha[:16]}_tinynet-13" / "tinynet"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "model.onnx",
        "test_data_set_0",
        "test_data_set_0/input_0.pb",
        "test_data_set_0/output_0.pb",
    ]
    assert (folder / "model.onnx").read_bytes() == zoo["files"][f"{V}/tinynet-13.onnx"]
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0/input_0.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0/output_0.pb")))
    assert x.tolist() == [[-2.0, -1.0, 0.5, 1.0]] and y.tolist() == [[0.0, 0.0, 2.5, 4.0]]
    # the archive itself stays in huggingface_hub's cache
    assert (_snapshot(hub_env, hub) / V / "tinynet-13.tar.gz").read_bytes() == archive
    # a second call finds the extraction (named by the archive's sha256) and keeps it
    mtime = (folder / "model.onnx").stat().st_mtime_ns
    assert keishiki.hub.download_model_with_test_data("TinyNet", opset=13, silent=True) == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == mtime
    # force_reload downloads and extracts again
    hub.reset()
    assert (
        keishiki.hub.download_model_with_test_data("TinyNet", force_reload=True, silent=True)
        == folder
    )
    assert _fetched(hub, "tinynet-13.tar.gz") == ["HEAD", "GET"]
    assert sorted(p.name for p in folder.parent.parent.iterdir()) == [f"{sha[:16]}_tinynet-13"]


def test_another_repository_and_revision_spellings(hub, hub_env):
    import keishiki.hub

    commit = hub.repos[OTHER].commit
    for repo in (OTHER, f"{OTHER}@main", f"{OTHER}:main", f"{OTHER}@{commit}"):
        assert [(m.model, m.opset) for m in keishiki.hub.list_models(repo)] == [
            ("TinyNet", 12),
            ("TinyNet", 13),
        ], repo
    assert (
        keishiki.hub.load("TinyNet", repo=f"{OTHER}:{commit}", opset=12, silent=True)
        .opset_import[0]
        .version
        == 12
    )
    assert (_snapshot(hub_env, hub, OTHER) / V / "tinynet-12.onnx").exists()


@pytest.mark.parametrize("repo", [f"{OTHER}:main@main", f"{OTHER}:", "a:b:c", "just-a-name"])
def test_bad_repository_spelling(repo):
    from keishiki.hub.zoo import parse_repo

    with pytest.raises(InvalidRequest, match="is not a"):
        parse_repo(repo)


def test_import_stays_light():
    code = (
        "import sys, keishiki.hub as h; h.DEFAULT_REPO; h.list_models; "
        "print(sorted(m for m in ('huggingface_hub', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]"


# ---- keishiki pull onnx-zoo:NAME -----------------------------------------------------------


def test_cli_pull_json(hub, hub_env, zoo):
    code, out, err = run_cli("pull", "onnx-zoo:tinynet", "--opset", "12", "--json", "--quiet")
    assert (code, err) == (0, "")
    data = json.loads(out)
    path = _snapshot(hub_env, hub) / V / "tinynet-12.onnx"
    data12 = zoo["files"][f"{V}/tinynet-12.onnx"]
    assert data == {
        "schema": "keishiki.pull-zoo/1",
        "source": "onnx-zoo",
        "repo_id": ZOO,
        "revision": None,
        "commit": hub.repos[ZOO].commit,
        "model": "TinyNet",
        "opset": 12,
        "model_path": f"{V}/tinynet-12.onnx",
        "path": str(path),
        "sha256": hashlib.sha256(data12).hexdigest(),
        "sha256_verified": True,
        "nbytes": len(data12),
        "tags": ["classification", "vision"],
        "offline": False,
        "verdict": "safe",
        "exit_code": 0,
        "scan": data["scan"],
    }
    assert data["scan"]["verdict"] == "safe"


def test_cli_pull_table_and_other_repo(hub, hub_env):
    code, out, err = run_cli("pull", "onnx-zoo:TINYNET", "--zoo-repo", f"{OTHER}@main", "--quiet")
    assert (code, err) == (0, "")
    assert "TinyNet (opset 13)" in out and "matches the manifest" in out
    assert "verdict: safe" in out and f"{OTHER}@main" in out


def test_cli_pull_dangerous_model_exit_1(hub, hub_env):
    code, out, _err = run_cli("pull", "onnx-zoo:danger", "--json", "--quiet")
    data = json.loads(out)
    assert (code, data["verdict"], data["exit_code"]) == (1, "dangerous", 1)
    assert "external-data" in json.dumps(data["scan"])
    # pull only reports: the checked file stays in the cache
    assert Path(data["path"]).exists()


def _one_line(args: list[str], message: str, hub) -> None:
    code, out, err = run_cli("pull", *args, "--quiet")
    assert (code, out) == (2, ""), err
    assert err == f"keishiki: error: {message.format(endpoint=hub.endpoint)}\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["onnx-zoo:resnet50"], f"{ZOO}: no model named 'resnet50' in the zoo's manifest"),
        (
            ["onnx-zoo:tinynett"],
            f"{ZOO}: no model named 'tinynett' in the zoo's manifest (did "
            f"you mean TinyNet, TinyText?)",
        ),
        (
            ["onnx-zoo:tinynet", "--opset", "11"],
            f"{ZOO}: TinyNet has no version with opset 11 (opsets: 12, 13)",
        ),
        (
            ["onnx-zoo:unchecked"],
            f"{ZOO}: the manifest gives no valid sha256 (model_sha) for "
            f"Unchecked (opset 13): refusing an unchecked file",
        ),
        (
            ["onnx-zoo:tinynet", "--zoo-repo", "keishiki-test/absent"],
            "keishiki-test/absent on {endpoint}: repository not found (or private: log in with "
            "`hf auth login` or HF_TOKEN)",
        ),
        (
            ["onnx-zoo:tinynet", "--zoo-repo", f"{ZOO}@v9"],
            f"{ZOO}@v9 on {{endpoint}}: revision 'v9' not found (a branch, tag or commit)",
        ),
        (
            ["onnx-zoo:tinynet", "--zoo-repo", NO_MANIFEST],
            f"{NO_MANIFEST} on {{endpoint}}: no file 'ONNX_HUB_MANIFEST.json' in the repository",
        ),
        (
            ["onnx-zoo:tinynet", "--include", "*.onnx"],
            "--include: not for onnx-zoo:NAME (a zoo model is one file)",
        ),
        ([ZOO, "--opset", "13"], f"--opset and --zoo-repo are for onnx-zoo:NAME, not {ZOO}"),
    ],
)
def test_cli_errors_are_one_line(hub, hub_env, args, message):
    _one_line(args, message, hub)


@pytest.mark.parametrize(
    "i,path",
    list(
        enumerate(
            ["../../etc/passwd", "/etc/passwd", "vision\\..\\..\\x.onnx", "a/./b.onnx", "C:/x.onnx"]
        )
    ),
)
def test_manifest_path_outside_the_repository(hub, hub_env, i, path):
    _one_line(
        [f"onnx-zoo:escape-{i}"],
        f"{ZOO}: the manifest's model_path {path!r} for "
        f"Escape-{i} leads outside the repository: refused",
        hub,
    )
    assert [r.path for r in hub.log if not r.path.endswith("ONNX_HUB_MANIFEST.json")] == []


def test_sha256_mismatch_leaves_nothing_usable(hub, hub_env, zoo, go_offline):
    import keishiki.hub

    served = zoo["files"]["misc/changed-13.onnx"]
    got, want = (
        hashlib.sha256(served).hexdigest(),
        hashlib.sha256(zoo["files"][f"{V}/tinynet-12.onnx"]).hexdigest(),
    )
    message = (
        f"{ZOO}: misc/changed-13.onnx has sha256 {got[:16]}..., the manifest says "
        f"{want[:16]}...: removed from the cache, not used"
    )
    with pytest.raises(HubError) as err:
        keishiki.hub.load("changed", silent=True)
    assert str(err.value) == message
    assert _fetched(hub, "changed-13.onnx") == ["HEAD", "GET"]  # it was downloaded
    # neither the snapshot link nor the blob is left: no file in the cache holds those bytes
    assert not (_snapshot(hub_env, hub) / "misc" / "changed-13.onnx").exists()
    assert [p for p in hub_env.cache.rglob("*") if p.is_file() and p.read_bytes() == served] == []
    _one_line(["onnx-zoo:Changed"], message, hub)
    go_offline()  # nothing in the cache to answer with
    with pytest.raises(HubError, match="not in the cache .* HF_HUB_OFFLINE=1"):
        keishiki.hub.load("changed", silent=True)


def test_sha256_mismatch_keeps_a_blob_another_snapshot_uses(hub, hub_env, zoo):
    """The same bytes pulled as a good file first: only the failing link goes."""
    import keishiki.hub

    # TinyNet 13 and "changed" are the same bytes, one blob: the failure must not break
    # the good file
    good = keishiki.hub.load("tinynet", silent=True)
    with pytest.raises(HubError, match="removed from the cache"):
        keishiki.hub.load("changed", silent=True)
    link = _snapshot(hub_env, hub) / V / "tinynet-13.onnx"
    assert onnx.load(str(link)) == good


def test_offline_with_nothing_cached(hub, hub_env, go_offline):
    go_offline()
    _one_line(
        ["onnx-zoo:tinynet"],
        f"{ZOO}: not in the cache ({hub_env.cache}) and "
        f"HF_HUB_OFFLINE=1 forbids downloading: pull it once online",
        hub,
    )
    assert hub.log == []


def test_offline_after_a_pull(hub, hub_env, go_offline):
    assert run_cli("pull", "onnx-zoo:tinynet", "--quiet")[0] == 0
    hub.reset()
    go_offline()
    code, out, err = run_cli("pull", "onnx-zoo:tinynet", "--quiet", "--json")
    assert (code, err, json.loads(out)["offline"]) == (0, "", True)
    assert hub.log == []


# ---- the test-data archive ------------------------------------------------------------------


def _chr(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "members,problem",
    [
        ([(_file("../evil.txt"), b"x")], "'../evil.txt' is a '..' that climbs out of the folder"),
        (
            [(_file("m/../../evil.txt"), b"x")],
            "'m/../../evil.txt' is a '..' that climbs out of the folder",
        ),
        ([(_file("/tmp/evil.txt"), b"x")], "'/tmp/evil.txt' is an absolute path"),
        (
            [(_link("m/passwd", "/etc/passwd"), None)],
            "'m/passwd' is a link to '/etc/passwd' (absolute or malformed)",
        ),
        (
            [(_link("m/up", "../../outside"), None)],
            "'m/up' is a link to '../../outside', outside the folder",
        ),
        (
            [(_link("m/hard", "../outside", tarfile.LNKTYPE), None)],
            "'m/hard' is a link to '../outside', outside the folder",
        ),
        (
            [(_chr("m/tty"), None)],
            "'m/tty' is not a regular file, folder or link (a device or FIFO)",
        ),
    ],
)
def test_archive_members_that_escape(hub, hub_env, zoo, keishiki_cache, tmp_path, members, problem):
    import keishiki.hub

    bad = _tar([(_file("m/model.onnx"), b"fine"), *members])
    manifest = [
        _entry(
            "Tar",
            13,
            f"{V}/tinynet-13.onnx",
            zoo["files"][f"{V}/tinynet-13.onnx"],
            ["x"],
            archive=("bad/tar-13.tar.gz", bad),
        )
    ]
    hub.add(Repo(ZOO, _repo_files(zoo, manifest, **{"bad/tar-13.tar.gz": bad})))
    with pytest.raises(HubError) as err:
        keishiki.hub.download_model_with_test_data("tar", silent=True)
    assert str(err.value) == (
        f"{ZOO}: bad/tar-13.tar.gz: archive member {problem}: refused, nothing extracted"
    )
    # nothing extracted, not even in part, and nothing outside
    assert _extracted(keishiki_cache) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_symlink_chains_meet_the_second_guard(hub, hub_env, zoo, keishiki_cache):
    """Each link looks inside on its own (``m/a`` -> ``..`` is the root); through the first,
    ``m/a/b`` -> ``..`` lands above it: tarfile's data filter, run on top, refuses it."""
    import keishiki.hub

    bad = _tar(
        [
            (_file("m/model.onnx"), b"fine"),
            (_link("m/a", ".."), None),
            (_link("m/a/b", ".."), None),
            (_file("m/a/b/evil.txt"), b"x"),
        ]
    )
    manifest = [
        _entry(
            "Tar",
            13,
            f"{V}/tinynet-13.onnx",
            zoo["files"][f"{V}/tinynet-13.onnx"],
            ["x"],
            archive=("bad/tar-13.tar.gz", bad),
        )
    ]
    hub.add(Repo(ZOO, _repo_files(zoo, manifest, **{"bad/tar-13.tar.gz": bad})))
    with pytest.raises(
        HubError,
        match=r"^onnxmodelzoo/legacy_models: bad/tar-13.tar.gz: "
        r"archive member refused by tarfile's data filter "
        r"\('m/a/b' would link to .*outside the destination\): "
        r"nothing extracted$",
    ):
        keishiki.hub.download_model_with_test_data("tar", silent=True)
    assert _extracted(keishiki_cache) == []
    assert not (keishiki_cache / "evil.txt").exists()


def test_archive_sizes_are_bounded(hub, hub_env, keishiki_cache):
    import keishiki.hub

    with pytest.raises(
        HubError,
        match=r"tinynet-13.tar.gz: the archive holds more than "
        r"100,000 members or 100 bytes: refused, nothing",
    ):
        keishiki.hub.download_model_with_test_data("tinynet", silent=True, max_bytes=100)
    assert _extracted(keishiki_cache) == []


def _extracted(keishiki_cache: Path) -> list[Path]:
    folder = keishiki_cache / "onnx-zoo"
    return list(folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize(
    "manifest,problem",
    [
        (
            b"not json",
            "not a valid ONNX_HUB_MANIFEST.json (JSONDecodeError: Expecting value: "
            "line 1 column 1 (char 0))",
        ),
        (
            b'{"model": "x"}',
            "not a valid ONNX_HUB_MANIFEST.json (a JSON list of models expected, found dict)",
        ),
        (
            b'[{"model": "x", "opset_version": 1, "metadata": {}}]',
            "entry 0 of ONNX_HUB_MANIFEST.json has no str 'model_path'",
        ),
        (
            b'[{"model": "x", "model_path": "x.onnx", "opset_version": "13", "metadata": {}}]',
            "entry 0 of ONNX_HUB_MANIFEST.json has no integer 'opset_version'",
        ),
        (
            b'[{"model": "x", "model_path": "x.onnx", "opset_version": 13, '
            b'"metadata": {"tags": "vision"}}]',
            "entry 0 of ONNX_HUB_MANIFEST.json has 'tags' that are not a list of strings",
        ),
    ],
)
def test_malformed_manifest_is_one_line(hub, hub_env, manifest, problem):
    repo = hub.add(Repo("keishiki-test/broken-zoo", {"ONNX_HUB_MANIFEST.json": manifest}))
    _one_line(["onnx-zoo:x", "--zoo-repo", repo.repo_id], f"{repo.repo_id}: {problem}", hub)
