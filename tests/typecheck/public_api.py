"""A user's script, checked by mypy in `make lint` (pyproject's [tool.mypy] lists it; never run).

What a type checker must see through ``import keishiki``'s lazy exports (and the py.typed
marker): the real types of the public functions and classes, the builtin each error derives
from, and an error for a name keishiki does not export.
"""

from __future__ import annotations

from typing_extensions import assert_type

import keishiki
from keishiki.errors import (
    CorruptFile,
    HubError,
    InvalidRequest,
    KeishikiError,
    MissingDependency,
    NoConversionPath,
    PathNotFound,
    RuntimeUnavailable,
    UnknownFormat,
)


def inspect_and_scan(path: str) -> int:
    info = keishiki.inspect(path)
    assert_type(info, keishiki.ModelInfo)
    assert_type(info.n_parameters, int)
    assert_type(info.tensors[0], keishiki.TensorInfo)
    assert_type(info.tensors[0].shape, tuple[int, ...])
    lazy = next(info.lazy_tensors())
    assert_type(lazy, keishiki.LazyTensor)
    assert_type(keishiki.identify(path).format, str)
    report = keishiki.scan(path, "other.pt")
    assert_type(report.verdict, str)
    return report.exit_code(allow_unknown=True)


def convert_compare_map(src: str, out: str) -> float:
    converted = keishiki.convert(src, out, to="safetensors", force=True, shard_size="5GB")
    assert_type(converted.passed, bool)
    # the options are a TypedDict: a misspelt one or a wrong type is a type error
    keishiki.convert(src, out, to="gguf", qaunt="q4_K_M")  # type: ignore[call-arg]
    keishiki.convert(src, out, to="gguf", verify="no")  # type: ignore[arg-type]
    diff = keishiki.compare(src, out, atol=1e-6)
    assert_type(diff.verdict, str)
    assert_type(diff.exit_code, int)
    names = keishiki.map_names(keishiki.inspect(src), keishiki.inspect(out))
    assert_type(len(names.pairs), int)
    return diff.max_abs_diff


def generate(model: str) -> str:
    llm = keishiki.LLM(model=model)
    outputs = llm.generate(["Hello"], keishiki.SamplingParams(temperature=0.0, max_tokens=4))
    return outputs[0].outputs[0].text


def pull(repo: str) -> str:
    report = keishiki.pull(repo, prefer_safetensors=True)
    return str(report.folder)


def errors_are_builtins(
    missing: PathNotFound,
    bad: InvalidRequest,
    no_path: NoConversionPath,
    extra: MissingDependency,
    hub: HubError,
    backend: RuntimeUnavailable,
) -> tuple[FileNotFoundError, ValueError, ValueError, ImportError, OSError, RuntimeError]:
    as_keishiki: list[KeishikiError] = [missing, bad, no_path, extra, hub, backend]
    assert_type(as_keishiki[0].exit_code, int)
    return (missing, bad, no_path, extra, hub, backend)


def file_errors_are_keishiki_errors(corrupt: CorruptFile, unknown: UnknownFormat) -> None:
    errors: list[keishiki.KeishikiError] = [corrupt, unknown]
    assert_type(errors[0].message, str)


def misspelt() -> None:
    keishiki.inspekt("model.gguf")  # type: ignore[attr-defined]  # the point: mypy flags it
