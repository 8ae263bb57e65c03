"""Red team: every keishiki command and API entry point over every malicious sample of
``tests/scan/samples.py``; no payload may ever run (the marker file never appears), `scan`
must say unsafe (exit 1), and the load paths (`run`, `bench`, `convert`, `compare
--outputs`, ``LLM``, ``convert()``) must refuse a dangerous-or-unknown file without trust,
with one error line and no traceback.  Then the path gate: HF folders whose shard, index
or tokenizer lands outside the folder are refused by every command and never leak the
outside file; and ``convert --force`` never deletes a folder keishiki did not write.

Commands that load a runtime run in a subprocess per sample (``_driver.py``: one start-up
and one torch import per sample, the marker checked after each command); the metadata
commands (info, tensors, scan) run in this process.  Build once per module; ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.scan.samples import benign, malicious

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("_driver.py")

# every malicious sample of tests/scan/samples.py -> its kind (picks the usual convert
# target and whether it is offered to the runtimes)
MALICIOUS_TABLE = {
    "reduce_os_system_p0": "pickle",
    "reduce_os_system_p1": "pickle",
    "reduce_os_system_p2": "pickle",
    "reduce_os_system_p3": "pickle",
    "reduce_os_system_p4": "pickle",
    "reduce_os_system_p5": "pickle",
    "py2_builtin_eval": "pickle",
    "py2_builtin_exec_p2": "pickle",
    "py2_mapped_stack_global": "pickle",
    "builtins_open_p4": "pickle",
    "memo_mix_binput_memoize": "pickle",
    "memo_out_of_order": "pickle",
    "modelscan85_build_attrs": "pickle",
    "modelscan330_numpy_builtins": "pickle",
    "modelscan331_importlib_getattr": "pickle",
    "modelscan267_nested_pickle_loads": "pickle",
    "pr74_importlib": "pickle",
    "pr74_marshal_functiontype": "pickle",
    "pip_main": "pickle",
    "numpy_runstring": "pickle",
    "copyreg_reconstructor_popen": "pickle",
    "ext1_registry": "pickle",
    "newobj_ex_popen": "pickle",
    "inst_p0_subprocess_call": "pickle",
    "obj_p1_os_system": "pickle",
    "getattr_import_chain": "pickle",
    "operator_methodcaller": "pickle",
    "codecs_rot13_exec": "pickle",
    "functools_partial": "pickle",
    "timeit_timeit": "pickle",
    "mailcap_findmatch": "pickle",
    "spawnv_passfds": "pickle",
    "sqlite3_connect": "pickle",
    "zipfile_write": "pickle",
    "torch_collect_env_run": "pickle",
    "shutil_copyfile": "pickle",
    "dotted_name_walk": "pickle",
    "unicode_escape_names": "pickle",
    "os_trailing_space": "pickle",
    "fullwidth_unicode_module": "pickle",
    "stack_global_from_call": "pickle",
    "benign_then_payload": "pickle",
    "truncated_after_reduce": "pickle",
    "garbage_after_payload": "pickle",
    "dangerous_then_bad_memo": "pickle",
    "pickle_as_bin": "pickle",
    "npy_object_payload": "numpy",
    "npz_object_payload": "numpy",
    "zip_dotdot_member": "archive",
    "nested_zip": "archive",
    "tar_member_payload": "archive",
    "keras_lambda": "keras",
    "keras_h5_lambda": "keras",
    "noproto_frame_first": "pickle",
    "noproto_short_binunicode_first": "pickle",
    "noproto_newtrue_first": "pickle",
    "noproto_empty_dict_first": "pickle",
    "noproto_mark_first": "pickle",
    "multi_pickle_third_stream": "pickle",
    "nullifai_broken_tail": "pickle",
    "nullifai_truncated_mid_string": "pickle",
    "npy_descr_big_endian_O": "numpy",
    "npy_descr_O8": "numpy",
    "npy_descr_object_word": "numpy",
    "npy_descr_escaped_O": "numpy",
    "npy_double_quoted_header": "numpy",
    "npy_structured_object_field": "numpy",
    "npy_v3_object": "numpy",
    "npy_v2_object": "numpy",
    "npy_really_pickle": "numpy",
    "joblib_payload": "joblib",
    "joblib_zlib_payload": "joblib",
    "joblib_lzma_payload": "joblib",
    "joblib_gzip_payload": "joblib",
    "keras_lambda_no_metadata": "keras",
    "keras_lambda_bytecode": "keras",
    "keras_module_gadget_activation": "keras",
    "keras_module_gadget_top_level": "keras",
    "keras_upper_case_config_json": "keras",
    "zip_prepended_junk": "archive",
    "torch_zip_reduce": "torch",
    "torch_zip_renamed_prefix": "torch",
    "torch_zip_extra_member": "archive",
    "torch_zip_bad_crc": "torch",
    "torch_zip_encrypted_flag": "torch",
    "torch_zip_dotdot_member": "archive",
    "torch_zip_payload_in_storage_name": "torch",
    "torch_legacy_reduce": "torch",
    "torch_legacy_sysinfo_payload": "torch",
    "torch_legacy_keys_payload": "torch",
    "torch_magic_then_payload": "torch",
    "torch_legacy_trailing_payload": "archive",
    "torch_zip_upper_case_members": "torch",
    "torch_zip_mixed_case_data_pkl": "torch",
    "torch_zip_dot_data_folder": "torch",
    "torch_zip_zip64_members": "torch",
    "torch_zip_nullifai_broken_pickle": "torch",
    "polyglot_pickle_then_torch_zip": "torch",
    "torch_tar_legacy_payload": "torch",
    "torch_tar_v7_no_ustar_magic": "torch",
    "torch_tar_payload_in_storages": "torch",
    "torch_legacy_protocol_pickle_payload": "torch",
    "ts_setstate_aten_save": "ts",
    "ts_forward_aten_save": "ts",
    "ts_forward_ops_aten_save": "ts",
    "ts_upper_case_members": "ts",
    "ts_forward_from_file": "ts",
    "ts_load_library": "ts",
    "ts_getattr_computed": "ts",
    "ts_dunder_globals": "ts",
    "ts_setstate_as_pytorch_model_bin": "ts",
    "hf_ckpt_training_args_bin": "hf",
    "hf_ckpt_optimizer_pt": "hf",
    "hf_ckpt_rng_state_pth": "hf",
    "hf_ckpt_scheduler_no_extension": "hf",
    "hf_pytorch_model_bin_payload": "hf",
    "hf_sharded_bin_payload": "hf",
    "hf_auto_map_remote_code": "hf",
    "hf_tokenizer_auto_map_remote_code": "hf",
    "hf_chat_template_ssti": "hf",
    "gguf_chat_template_ssti": "gguf",
    "torch_zip_duplicate_data_pkl": "torch",
    "torch_zip_duplicate_data_pkl_case": "torch",
    "ts_duplicate_code_member": "ts",
    "ts_duplicate_code_member_case": "ts",
    "keras_internal_get_file_gadget": "keras",
    "keras_internal_enable_unsafe": "keras",
    "pt2_use_pickle_weight_zip": "pt2",
    "pt2_use_pickle_weight_raw": "pt2",
}
BENIGN_NAMES = [
    "numpy_pickle_p2",
    "numpy_pickle_p3",
    "numpy_pickle_p4",
    "numpy_pickle_p5",
    "plain_dict_p0",
    "ordered_dict_p2",
    "npy",
    "npz",
    "torch_zip_all_dtypes",
    "torch_legacy_all_dtypes",
    "torch_training_checkpoint",
    "torch_training_checkpoint_legacy",
    "safetensors",
    "torch_ckpt_argparse_namespace",
    "torch_ckpt_pathlib_paths",
    "hf_trainer_rng_state",
    "torch_ckpt_numpy_generator",
    "hf_training_args_bin",
    "torch_dcp_folder",
    "ts_traced_plain",
    "ts_scripted_plain",
    "joblib_numpy_arrays",
    "joblib_numpy_arrays_zlib",
    "numpy_generator_pickle",
    "numpy_randomstate_pickle",
]
# the usual second target of each kind (the first is always safetensors)
USUAL_TARGET = {
    "pickle": "pytorch",
    "torch": "pytorch",
    "numpy": "pytorch",
    "joblib": "pytorch",
    "archive": "pytorch",
    "keras": "pytorch",
    "ts": "onnx",
    "hf": "gguf",
    "gguf": "hf-model",
    "pt2": "pytorch",
}
# offered to the runtimes: whatever `run` could take (TorchScript, HF folders, pickles named
# pytorch_model.bin in a folder) and a few of every other kind
RUNNABLE = sorted(
    {n for n, k in MALICIOUS_TABLE.items() if k in ("ts", "hf")}
    | {
        "pickle_as_bin",
        "reduce_os_system_p4",
        "torch_zip_reduce",
        "polyglot_pickle_then_torch_zip",
        "torch_tar_legacy_payload",
        "npy_really_pickle",
        "joblib_payload",
        "keras_lambda_bytecode",
        "gguf_chat_template_ssti",
        "pt2_use_pickle_weight_zip",
    }
)

# (command, whether it must refuse: non-zero exit / KeishikiError, one line, no traceback)
EVERY = [
    "info",
    "tensors",
    "scan",
    "convert-safetensors",
    "convert-usual",
    "compare",
    "map",
    "api-inspect",
    "api-convert",
]
RUNTIME = ["run", "bench", "compare-outputs", "api-llm"]
CHAT = ["run-chat"]  # HF folders: the chat template is rendered too
REFUSES = {
    "convert-safetensors",
    "convert-usual",
    "api-convert",
    "run",
    "run-chat",
    "bench",
    "compare-outputs",
    "api-llm",
}
IN_PROCESS = {"info", "tensors", "scan"}

# in-process commands first, command by command (pytest-xdist deals its first quarter of
# tests round-robin: cheap ones there), then the subprocess ones sample by sample (later
# chunks are contiguous, so a driver run per group of samples is seldom repeated)
CASES = [(n, c) for c in EVERY if c in IN_PROCESS for n in MALICIOUS_TABLE] + [
    (n, c)
    for n in MALICIOUS_TABLE
    for c in EVERY
    + (RUNTIME if n in RUNNABLE else [])
    + (CHAT if MALICIOUS_TABLE[n] in ("hf", "gguf") else [])
    if c not in IN_PROCESS
]
GROUP = 4  # samples per driver subprocess (one start-up and torch import per group)
_ORDER = list(MALICIOUS_TABLE)

# misses still open at the last red-team run: (sample, command) -> what happens
KNOWN_MISSES: dict[tuple[str, str], str] = {}


def _case(name: str, command: str):
    miss = KNOWN_MISSES.get((name, command))
    marks = [pytest.mark.xfail(strict=True, reason=miss)] if miss else []
    return pytest.param(name, command, id=f"{name}-{command}", marks=marks)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("redteam")
    marker = root / "MARKER"
    samples = {s.name: s for s in malicious(root / "malicious", marker)}
    return {"root": root, "marker": marker, "samples": samples}


@pytest.fixture(scope="module")
def benign_corpus(tmp_path_factory):
    pytest.importorskip("torch")
    return {s.name: s for s in benign(tmp_path_factory.mktemp("redteam-benign"))}


def _driver(spec: dict, workdir: Path, timeout: float) -> dict:
    result = workdir / "result.json"
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO / "src")
    )
    try:
        subprocess.run(
            [sys.executable, str(DRIVER), json.dumps(spec), str(result)],
            cwd=workdir,
            env=env,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pass
    return json.loads(result.read_text()) if result.exists() else {}


_RESULTS: dict[str, dict] = {}


def _commands(name: str, path: Path, out: Path) -> list[list[str]]:
    kind = MALICIOUS_TABLE[name]
    usual = USUAL_TARGET[kind]
    cmds = [
        [
            "convert-safetensors",
            "cli",
            "convert",
            str(path),
            str(out / "a.safetensors"),
            "--to",
            "safetensors",
            "--quiet",
        ],
        [
            "convert-usual",
            "cli",
            "convert",
            str(path),
            str(out / f"b.{usual}"),
            "--to",
            usual,
            "--quiet",
        ],
        ["compare", "cli", "compare", str(path), str(path), "--quiet"],
        ["map", "cli", "map", str(path), str(path)],
        ["api-inspect", "inspect", str(path)],
        ["api-convert", "convert", str(path), str(out / "c.safetensors"), "safetensors"],
    ]
    if name in RUNNABLE:
        cmds += [
            [
                "run",
                "cli",
                "run",
                str(path),
                "--max-tokens",
                "1",
                "--prompt",
                "hi",
                "--temperature",
                "0",
            ],
            [
                "bench",
                "cli",
                "bench",
                str(path),
                "--repeats",
                "1",
                "--gen-len",
                "1",
                "--prompt-len",
                "4",
            ],
            [
                "compare-outputs",
                "cli",
                "compare",
                str(path),
                str(path),
                "--outputs",
                "--max-tokens",
                "1",
                "--quiet",
            ],
            ["api-llm", "llm", str(path)],
        ]
    if kind in ("hf", "gguf"):
        cmds.append(
            [
                "run-chat",
                "cli",
                "run",
                str(path),
                "--chat",
                "--max-tokens",
                "1",
                "--prompt",
                "hi",
                "--temperature",
                "0",
            ]
        )
    return cmds


def _sample_results(corpus, name: str) -> dict:
    """Every subprocess command of ``name`` and the samples grouped with it, run once in
    one driver process (cached per worker); the marker is checked after each command."""
    if name not in _RESULTS:
        start = _ORDER.index(name) // GROUP * GROUP
        group = _ORDER[start : start + GROUP]
        work = corpus["root"] / "runs" / f"{group[0]}+{len(group)}"
        work.mkdir(parents=True)
        cmds, outs = [], {}
        for member in group:
            outs[member] = work / member
            outs[member].mkdir()
            for cid, *rest in _commands(member, corpus["samples"][member].path, outs[member]):
                cmds.append([f"{member}::{cid}", *rest])
        res = _driver(
            {"marker": str(corpus["marker"]), "commands": cmds}, work, timeout=120 * len(cmds) + 60
        )
        for member in group:
            _RESULTS[member] = {
                "out": outs[member],
                "results": {
                    cid: res.get(
                        f"{member}::{cid}", {"exc": "driver died or hung", "marker": False}
                    )
                    for cid, *_ in _commands(member, Path(), outs[member])
                },
            }
    return _RESULTS[name]


def _one_error_line(stderr: str) -> bool:
    return len([ln for ln in stderr.splitlines() if ln.startswith("keishiki:")]) == 1


def test_table_covers_the_generator(corpus, benign_corpus):
    assert sorted(corpus["samples"]) == sorted(MALICIOUS_TABLE)
    assert sorted(benign_corpus) == sorted(BENIGN_NAMES)


@pytest.mark.parametrize("name,command", [_case(n, c) for n, c in CASES])
def test_no_payload_runs(corpus, name, command):
    marker = corpus["marker"]
    assert not marker.exists(), "marker left over by an earlier case"
    path = corpus["samples"][name].path
    if command in IN_PROCESS:
        code, _out, err = run_cli(command, path)
        ran = marker.exists()
        if ran:
            marker.unlink()
        assert not ran, f"{name}: `keishiki {command}` ran the payload (marker created)"
        assert "Traceback" not in err, err[-2000:]
        if command == "scan":
            assert code == 1, f"scan exit {code}: {err.strip()[:300]}"
        return
    entry = _sample_results(corpus, name)
    res = entry["results"][command]
    assert not res["marker"], f"{name}: {command} ran the payload (marker created)"
    assert res["exc"] != "Hang", f"{command} hung past 120 s"
    text = (res.get("stdout") or "") + (res.get("stderr") or "")
    assert "Traceback" not in text, text[-2000:]
    if command.startswith("api-"):
        if command == "api-inspect":
            assert res["exc"] is None or res["keishiki_error"], res.get("traceback")
        else:
            assert res["keishiki_error"] is True, (
                f"{command} did not refuse: exc={res['exc']} {res.get('traceback', '')[-800:]}"
            )
            assert "\n" not in res["exc_msg"].strip()
            _assert_no_output(entry["out"], command)
        return
    assert res["exc"] is None, res.get("traceback", res["exc"])
    if command in REFUSES:
        assert res["rc"] not in (0, None), (
            f"{command} exit {res['rc']} on a malicious sample: "
            f"{(res['stdout'] + res['stderr']).strip()[-400:]}"
        )
        assert _one_error_line(res["stderr"]), res["stderr"][-1000:]
        _assert_no_output(entry["out"], command)


# the output each converting command was given (refused: nothing may be left there)
OUTPUT_PREFIX = {"convert-safetensors": "a.", "convert-usual": "b.", "api-convert": "c."}


def _assert_no_output(out: Path, command: str) -> None:
    prefix = OUTPUT_PREFIX.get(command)
    if prefix:
        left = sorted(p.name for p in out.iterdir() if p.name.startswith(prefix))
        assert not left, f"{command} refused but left {left}"


@pytest.mark.parametrize("name", BENIGN_NAMES)
def test_benign_lookalike_scans_safe(benign_corpus, name):
    code, _out, err = run_cli("scan", benign_corpus[name].path)
    assert "Traceback" not in err
    assert code == 0, err.strip()[:400]


# ---- the path gate -------------------------------------------------------------------------

SECRET = "KEISHIKI-SECRET-7d41c9e2"
PATH_CASES = [
    "shard_symlink",
    "index_symlink",
    "index_dotdot",
    "index_absolute",
    "tokenizer_symlink",
    "config_symlink",
    # a shard under a symlinked sub-folder (a resolver that checks only the file's
    # own is_symlink misses it)
    "index_subdir_symlink",
    # HF cache: snapshots/ -> blobs/ is allowed, but only into the same repo's
    # blobs/, and only when the blob itself is not a link out
    "hf_cache_blob_links_outside",
    "hf_cache_other_repos_blob",
    # the repo's blobs/ folder itself is a symlink to a folder outside
    "hf_cache_blobs_dir_outside",
    # a split GGUF named by its first shard; the second shard links outside
    "gguf_split_shard_symlink",
]
PATH_COMMANDS = ["info", "convert", "run", "compare", "map"]
KNOWN_PATH_MISSES: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def path_cases(tmp_path_factory, corpus):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from tests.scan.samples import _tiny_hf

    root = tmp_path_factory.mktemp("pathgate")
    base = _tiny_hf(corpus["root"] / "malicious")  # built with the corpus: reused
    weights = load_file(base / "model.safetensors")
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.safetensors"
    save_file({k: v.clone() for k, v in weights.items()}, secret, metadata={"note": SECRET})
    index = {
        "metadata": {"note": SECRET, "total_size": 0},
        "weight_map": {k: "model.safetensors" for k in weights},
    }
    (outside / "model.safetensors.index.json").write_text(json.dumps(index))
    tok = json.loads((base / "tokenizer.json").read_text())
    tok["added_tokens"].append(
        {
            "id": len(tok["model"]["vocab"]) + 100,
            "content": SECRET,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    (outside / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((base / "config.json").read_text())
    cfg["note"] = SECRET
    (outside / "config.json").write_text(json.dumps(cfg))
    cases = {}
    for case in PATH_CASES:
        folder = root / "models" / case
        shutil.copytree(base, folder)
        if case == "shard_symlink":
            (folder / "model.safetensors").unlink()
            os.symlink(secret, folder / "model.safetensors")
        elif case == "index_symlink":
            os.symlink(
                outside / "model.safetensors.index.json", folder / "model.safetensors.index.json"
            )
        elif case in ("index_dotdot", "index_absolute"):
            (folder / "model.safetensors").unlink()
            shutil.copy(secret, folder.parent / "secret.safetensors")
            shard = "../secret.safetensors" if case == "index_dotdot" else str(secret)
            (folder / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": {k: shard for k in weights}})
            )
        elif case == "tokenizer_symlink":
            (folder / "tokenizer.json").unlink()
            os.symlink(outside / "tokenizer.json", folder / "tokenizer.json")
        elif case == "config_symlink":
            (folder / "config.json").unlink()
            os.symlink(outside / "config.json", folder / "config.json")
        elif case == "index_subdir_symlink":
            (folder / "model.safetensors").unlink()
            os.symlink(outside, folder / "shards")
            (folder / "model.safetensors.index.json").write_text(
                json.dumps(
                    {
                        "metadata": {},
                        "weight_map": {k: "shards/secret.safetensors" for k in weights},
                    }
                )
            )
        elif case == "gguf_split_shard_symlink":
            shutil.rmtree(folder)
            folder = _gguf_split(root / "gguf" / "model", root / "gguf" / "outside")
        elif case.startswith("hf_cache_"):
            shutil.rmtree(folder)
            folder = _hf_cache_snapshot(root / "hub" / case, base, secret, case.split("_", 2)[2])
        cases[case] = folder
    # controls: the same layouts without a way out are read (the refusals are not vacuous)
    cases["control_plain"] = base
    cases["control_hf_cache_same_repo"] = _hf_cache_snapshot(
        root / "hub" / "control", base, base / "model.safetensors", "same_repo"
    )
    return {"root": root, "cases": cases, "base": base}


def _gguf_split(folder: Path, outside: Path) -> Path:
    """A 2-shard GGUF in ``folder`` whose second shard is a symlink to one in ``outside``
    (that one's metadata holds SECRET); returns the first shard."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    for where, name in ((folder, "tiny"), (outside, SECRET)):
        where.mkdir(parents=True)
        w = gguf.GGUFWriter(str(where / "m.gguf"), "llama", split_max_tensors=1)
        w.add_string("general.name", name)
        w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
        w.add_tensor("output.weight", np.ones((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    second = "m-00002-of-00002.gguf"
    (folder / second).unlink()
    os.symlink(outside / second, folder / second)
    return folder / "m-00001-of-00002.gguf"


def _hf_cache_snapshot(hub: Path, base: Path, weights: Path, mode: str) -> Path:
    """models--org--name/{blobs,snapshots/REV} like huggingface_hub writes it; the weights'
    blob per ``mode``: "same_repo" (a copy, as the hub writes it), "blob_links_outside"
    (the blob is a symlink to ``weights`` outside), "other_repos_blob" (the snapshot links
    into another repo's blobs/), "blobs_dir_outside" (blobs/ is a symlink to the folder of
    ``weights``)."""
    repo = hub / "models--org--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    if mode == "blobs_dir_outside":
        os.symlink(weights.parent, repo / "blobs")
    else:
        (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for i, f in enumerate(sorted(base.iterdir())):
        if f.name == "model.safetensors":
            continue
        blob = repo / "blobs" / f"{i:064x}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    blob = repo / "blobs" / ("e" * 64)
    if mode == "blobs_dir_outside":
        blob = repo / "blobs" / weights.name
    elif mode == "other_repos_blob":
        other = hub / "models--someone--else" / "blobs"
        other.mkdir(parents=True)
        blob = other / ("f" * 64)
        shutil.copy(weights, blob)
    elif mode == "blob_links_outside":
        os.symlink(weights, blob)
    else:
        shutil.copy(weights, blob)
    os.symlink(os.path.relpath(blob, snap), snap / "model.safetensors")
    return snap


_PATH_RESULTS: dict[str, dict] = {}


def _path_results(path_cases, case: str) -> dict:
    if case not in _PATH_RESULTS:
        folder = path_cases["cases"][case]
        work = path_cases["root"] / "runs" / case
        out = work / "out"
        out.mkdir(parents=True)
        cmds = [
            ["info", "cli", "info", str(folder)],
            [
                "convert",
                "cli",
                "convert",
                str(folder),
                str(out / "o.safetensors"),
                "--to",
                "safetensors",
                "--quiet",
            ],
            [
                "run",
                "cli",
                "run",
                str(folder),
                "--max-tokens",
                "1",
                "--prompt",
                "hi",
                "--temperature",
                "0",
            ],
            ["compare", "cli", "compare", str(folder), str(folder), "--quiet"],
            ["map", "cli", "map", str(folder), str(folder)],
        ]
        res = _driver(
            {"marker": str(work / "MARKER"), "commands": cmds}, work, timeout=120 * len(cmds) + 60
        )
        _PATH_RESULTS[case] = {"results": res, "out": out}
    return _PATH_RESULTS[case]


@pytest.mark.parametrize(
    "case,command",
    [
        pytest.param(
            c,
            m,
            id=f"{c}-{m}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_PATH_MISSES[(c, m)])]
            if (c, m) in KNOWN_PATH_MISSES
            else [],
        )
        for c in PATH_CASES
        for m in PATH_COMMANDS
    ],
)
def test_path_outside_the_folder_is_refused(path_cases, case, command):
    entry = _path_results(path_cases, case)
    res = entry["results"].get(command)
    assert res is not None, "driver died or hung"
    text = (res.get("stdout") or "") + (res.get("stderr") or "")
    assert "Traceback" not in text and res["exc"] is None, res.get("traceback", text[-1500:])
    assert SECRET not in text, f"{command} printed the outside file's bytes"
    for f in entry["out"].rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"{f.name} holds the outside bytes"
    assert res["rc"] not in (0, None), f"{command} exit {res['rc']}: {text.strip()[-400:]}"


KNOWN_CONTROL_MISSES: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(
    "case,command",
    [
        pytest.param(
            c,
            m,
            id=f"{c}-{m}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_CONTROL_MISSES[(c, m)])]
            if (c, m) in KNOWN_CONTROL_MISSES
            else [],
        )
        for c in ("control_plain", "control_hf_cache_same_repo")
        for m in ("info", "scan", "convert", "run")
    ],
)
def test_path_gate_controls_are_read(path_cases, tmp_path, case, command):
    """The same layouts with no way out are read by every command (so the refusals above
    are the path gate's, not a blanket refusal of symlinks or caches)."""
    folder = path_cases["cases"][case]
    args = {
        "info": [],
        "scan": [],
        "convert": [tmp_path / "o.safetensors", "--to", "safetensors", "--quiet"],
        "run": ["--max-tokens", "1", "--prompt", "hi", "--temperature", "0"],
    }[command]
    code, out, err = run_cli(command, folder, *args)
    assert code == 0, (out + err).strip()[-500:]


KNOWN_FORCE_MISSES: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(
    "to,how",
    [
        pytest.param(
            to,
            how,
            id=f"{to}-{how}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_FORCE_MISSES[(to, how)])]
            if (to, how) in KNOWN_FORCE_MISSES
            else [],
        )
        for to in ("safetensors", "hf-model")
        for how in ("folder", "symlink_to_folder", "symlink_to_file", "dangling_symlink")
    ],
)
def test_convert_force_never_deletes_a_folder_keishiki_did_not_write(path_cases, tmp_path, to, how):
    """OUT is the user's folder, a symlink to it, a symlink to the user's file, or a
    dangling symlink: --force must not delete or write through any of them; keishiki
    refuses."""
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "sub").mkdir()
    (user / "sub" / "data.csv").write_text("1,2,3")
    target = user
    link_to = {
        "symlink_to_folder": user,
        "symlink_to_file": user / "thesis.tex",
        "dangling_symlink": tmp_path / "gone.safetensors",
    }.get(how)
    if link_to is not None:
        target = tmp_path / "latest.safetensors"
        os.symlink(link_to, target)
    code, out, err = run_cli(
        "convert", path_cases["base"], target, "--to", to, "--force", "--quiet"
    )
    assert (user / "thesis.tex").read_text() == "years of work"
    assert (user / "sub" / "data.csv").read_text() == "1,2,3"
    if link_to is not None:
        assert target.is_symlink() and os.readlink(target) == str(link_to), (
            "--force replaced the user's symlink"
        )
        assert not (tmp_path / "gone.safetensors").exists(), "wrote through a dangling link"
    assert code != 0 and "Traceback" not in err, (code, err[-500:])


def test_convert_force_never_writes_over_its_source(path_cases, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(path_cases["base"], src)
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    code, _out, err = run_cli("convert", src, src, "--to", "hf-model", "--force", "--quiet")
    assert code != 0 and "Traceback" not in err
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before


@pytest.mark.parametrize("name", ["hf_chat_template_ssti", "gguf_chat_template_ssti"])
def test_chat_template_escape_stays_in_the_sandbox_even_trusted(corpus, name):
    """--trust-remote-code lets the model load, but a chat template is still rendered in
    jinja's sandbox: the template's reach for os.system fails and creates nothing."""
    path = corpus["samples"][name].path
    work = corpus["root"] / "trusted-chat" / name
    work.mkdir(parents=True)
    res = _driver(
        {
            "marker": str(corpus["marker"]),
            "commands": [
                [
                    "run",
                    "cli",
                    "run",
                    str(path),
                    "--chat",
                    "--trust-remote-code",
                    "--max-tokens",
                    "1",
                    "--prompt",
                    "hi",
                    "--temperature",
                    "0",
                ]
            ],
        },
        work,
        timeout=180,
    )["run"]
    assert not res["marker"], "the chat template ran code"
    assert res["exc"] is None, res.get("traceback")
    assert "Traceback" not in res["stderr"]


def test_the_harness_sees_a_payload_that_runs(corpus):
    """The canary: with --trust-remote-code the TorchScript __setstate__ payload does run
    (torch.jit.load runs it), and the driver reports the marker, so the `marker: False` of
    every case above is a real observation."""
    work = corpus["root"] / "canary"
    work.mkdir()
    path = corpus["samples"]["ts_setstate_aten_save"].path
    res = _driver(
        {
            "marker": str(corpus["marker"]),
            "commands": [
                [
                    "run",
                    "cli",
                    "run",
                    str(path),
                    "--trust-remote-code",
                    "--max-tokens",
                    "1",
                    "--prompt",
                    "hi",
                ]
            ],
        },
        work,
        timeout=180,
    )["run"]
    assert res["marker"] is True
    assert not corpus["marker"].exists()  # the driver removed it


# ---- references out of the file that a loader follows ----------------------------------------

KNOWN_REFERENCE_MISSES: dict[str, str] = {}


def _keras_h5_referencing(path: Path, outside: Path, how: str) -> None:
    """A Keras-2 style .h5 whose Dense kernel is read from ``outside`` by h5py (and so by
    Keras' load_model / load_weights): HDF5 external storage or an external link."""
    h5py = pytest.importorskip("h5py")
    import numpy as np

    outside.parent.mkdir(parents=True, exist_ok=True)
    if how == "external_storage":
        outside.write_bytes(SECRET.encode().ljust(64, b"A"))
    else:
        with h5py.File(outside, "w") as f:
            f.create_dataset(
                "kernel",
                data=np.frombuffer(SECRET.encode().ljust(64, b"B"), dtype="<f4").reshape(4, 4),
            )
    cfg = {
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [{"class_name": "Dense", "config": {"name": "dense", "units": 4}}],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [b"dense"]
        layer = group.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        weights = layer.create_group("dense")
        if how == "external_storage":
            weights.create_dataset(
                "kernel:0", shape=(4, 4), dtype="<f4", external=[(str(outside), 0, 64)]
            )
        else:
            weights["kernel:0"] = h5py.ExternalLink(str(outside), "/kernel")
        weights.create_dataset("bias:0", data=np.zeros(4, dtype="<f4"))


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            h,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_REFERENCE_MISSES[h])]
            if h in KNOWN_REFERENCE_MISSES
            else [],
        )
        for h in ("external_storage", "external_link")
    ],
)
def test_hdf5_reference_outside_the_folder(tmp_path, how):
    """h5py follows HDF5 external storage and external links on disk (checked: reading the
    kernel returns the outside file's bytes), so a loader reading weights through h5py reads
    a file outside the model's folder. keishiki never reads it (info, tensors, convert: no
    secret in any output) and scan must say so, as it does for ONNX external data (exit 1)."""
    path = tmp_path / "model" / "model.h5"
    _keras_h5_referencing(path, tmp_path / "outside" / "data.bin", how)
    outputs = []
    for args in (
        ["info", path],
        ["tensors", path],
        ["convert", path, tmp_path / "o.safetensors", "--to", "safetensors", "--quiet"],
    ):
        code, out, err = run_cli(*args)
        assert "Traceback" not in err
        outputs.append(out + err)
    assert SECRET not in "".join(outputs)
    out_file = tmp_path / "o.safetensors"
    assert not out_file.exists() or SECRET.encode() not in out_file.read_bytes()
    code, out, err = run_cli("scan", path)
    assert code == 1, (out + err).strip()[-300:]


# ---- strings from the file must not drive the user's terminal ---------------------------------

ESC_TEXT = "\x1b[2K\x1b[1A\x1b[8mverdict: safe\x1b]52;c;dG91Y2ggL3RtcC94\x07"
_ESC = (
    "raw ESC sequences from the file's {} reach the terminal (rich escapes markup, not "
    "ESC): the file can erase rows, conceal 'dangerous', write the clipboard (OSC 52)"
)
KNOWN_TERMINAL_MISSES: dict[str, str] = {}  # (all fixed: cli/render.printable)


@pytest.fixture(scope="module")
def escape_files(tmp_path_factory):
    """Files whose strings carry terminal control sequences (erase line, cursor up,
    conceal, OSC 52 clipboard): a pickle's global name, safetensors tensor names and
    metadata, a file name, GGUF keys/values/tensor names, ONNX names and metadata."""
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import save_file

    from tests.scan.samples import u

    root = tmp_path_factory.mktemp("escapes")
    pkl = root / "g.pkl"
    pkl.write_bytes(
        b"\x80\x04" + u("os") + u("system" + ESC_TEXT) + b"\x93" + u("true") + b"\x85R."
    )
    st = root / "m.safetensors"
    save_file({"w" + ESC_TEXT: torch.ones(2)}, st, metadata={"note": ESC_TEXT})
    named = root / "named"  # the file's own name carries the sequences
    named.mkdir()
    (named / f"evil{ESC_TEXT.replace('/', '_')}.pkl").write_bytes(
        b"\x80\x04" + u("os") + u("system") + b"\x93" + u("true") + b"\x85R."
    )
    files = {"pkl": pkl, "st": st, "name": named}
    try:  # GGUF string keys/values and tensor names; ONNX names, doc string and metadata
        import gguf
        import numpy as np
        from onnx import helper, save

        writer = gguf.GGUFWriter(str(root / "e.gguf"), "llama")
        writer.add_string("general.name", ESC_TEXT)
        writer.add_string("x" + ESC_TEXT, ESC_TEXT)
        writer.add_tensor("t" + ESC_TEXT, np.ones((2,), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        node = helper.make_node("Identity", ["x"], ["y"], name="n" + ESC_TEXT)
        graph = helper.make_graph(
            [node],
            "g" + ESC_TEXT,
            [helper.make_tensor_value_info("x", 1, [2])],
            [helper.make_tensor_value_info("y", 1, [2])],
        )
        model = helper.make_model(graph, producer_name="p" + ESC_TEXT, doc_string=ESC_TEXT)
        model.metadata_props.add(key="k" + ESC_TEXT, value=ESC_TEXT)
        save(model, str(root / "e.onnx"))
        files.update(gguf=root / "e.gguf", onnx=root / "e.onnx")
    except ImportError:
        pass
    return files


@pytest.mark.parametrize(
    "command,which",
    [
        pytest.param(
            c,
            w,
            id=f"{c}-{w}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_TERMINAL_MISSES[f"{c}-{w}"])]
            if f"{c}-{w}" in KNOWN_TERMINAL_MISSES
            else [],
        )
        for c, w in [
            ("scan", "pkl"),
            ("info", "pkl"),
            ("scan", "st"),
            ("info", "st"),
            ("tensors", "st"),
            ("map", "st"),
            ("compare", "st"),
            ("scan", "name"),
            ("info", "gguf"),
            ("tensors", "gguf"),
            ("info", "onnx"),
            ("tensors", "onnx"),
        ]
    ],
)
def test_file_strings_cannot_drive_the_terminal(escape_files, command, which):
    """Names and metadata read from a file are shown with their control characters
    escaped: raw ESC / C1 sequences would let the file erase the finding rows, hide
    'dangerous' (SGR 8) or write the clipboard (OSC 52) in the user's terminal. (Output
    here is not a terminal, so keishiki itself emits no escape codes: any ESC came from the
    file.)"""
    path = escape_files.get(which) or pytest.skip(f"{which}: gguf/onnx not installed")
    args = [path, path] if command in ("map", "compare") else [path]
    code, out, err = run_cli(command, *args)
    assert "Traceback" not in err
    text = out + err
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if ch == "\x1b" or "\x80" <= ch <= "\x9f"})
    assert not bad, f"raw control characters from the file reach the terminal: {bad}"


# ---- the load gate's scan cache must not outlive a changed file --------------------------------

KNOWN_CACHE_MISS = ""  # fixed: the cache key holds the inode and ctime, folders never cached


def _pad_zip(src: Path, size: int, out: Path) -> None:
    """``src`` re-zipped with an ignored ``extra/pad`` member so that it is ``size`` bytes."""
    import io
    import zipfile

    folder = zipfile.ZipFile(src).namelist()[0].split("/")[0]
    for pad in range(8192):
        buf = io.BytesIO()
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w") as zout:
            for name in zin.namelist():
                zout.writestr(name, zin.read(name))
            zout.writestr(f"{folder}/extra/pad", b"\0" * pad)
        if len(buf.getvalue()) == size:
            out.write_bytes(buf.getvalue())
            return
    raise AssertionError("could not pad to the size")


@pytest.mark.xfail(bool(KNOWN_CACHE_MISS), strict=True, reason=KNOWN_CACHE_MISS)
def test_gate_cache_does_not_outlive_a_changed_file(corpus, tmp_path):
    """In one process (a server, a notebook): LLM(p) on a TorchScript file that scans safe,
    then the file is rewritten in place with a payload of the same size and the old mtime
    (rsync --inplace -t, tar extraction), then LLM(p) again. The gate must judge the new
    bytes, not a verdict cached by (path, size, mtime): the payload must not run."""
    import warnings

    import torch

    good = tmp_path / "good.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3))), good)
    evil = corpus["samples"]["ts_setstate_aten_save"].path
    size = max(good.stat().st_size, evil.stat().st_size) + 300
    _pad_zip(good, size, tmp_path / "good_padded.pt")
    _pad_zip(evil, size, tmp_path / "evil_padded.pt")
    script = f"""
import os, shutil, keishiki
p = {str(tmp_path / "model.pt")!r}
shutil.copy({str(tmp_path / "good_padded.pt")!r}, p)
st = os.stat(p)
for attempt in (1, 2):
    if attempt == 2:
        with open(p, "r+b") as f:
            f.write(open({str(tmp_path / "evil_padded.pt")!r}, "rb").read())
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        keishiki.LLM(p)
    except keishiki.KeishikiError:
        pass
"""
    marker = corpus["marker"]
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    ran = marker.exists()
    if ran:
        marker.unlink()
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert not ran, "the second load used the first file's cached verdict: the payload ran"
