"""The contract every conversion edge follows: options in, a verified step report out.

An *edge* is one conversion between two format ids (``pytorch -> safetensors``).  It is a
plain function ``fn(src: Path, out: Path, opts: ConvertOptions) -> StepReport`` named in an
:class:`Edge` by its import path, so listing the graph (``keishiki formats``) imports nothing
heavy.  The framework (:func:`keishiki._convert.convert`) gives the function a *temporary*
``out`` beside the final output:

* when the output is a folder (an ``hf-model``, or an ONNX/TorchScript folder that carries the
  tokenizer), ``out`` already exists as an empty folder: ``out.is_dir()`` tells the edge
  which layout to write (see :func:`output_is_folder` for the rule);
* otherwise ``out`` does not exist yet and the edge writes one file there.

The edge writes, verifies (unless ``opts.verify`` is False) and returns its report; the
framework renames the result into place atomically, or beside it as ``OUT.unverified`` when
verification failed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypedDict

from ..core.display import Shown, View, short_repr, size
from ..formats.registry import WRITABLE

# format ids a conversion can write (the --to choices)
TARGETS = WRITABLE  # the formats `convert --to` writes, declared in the format registry
DTYPES = ("float16", "bfloat16", "float32")
# --quant values: GGUF types and llama.cpp mixes (convert/gguf_quant.py says which tensor gets
# which type), then ONNX weight quantization (convert/onnx_quant.py)
GGUF_QUANTS = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_K",
    "q3_K",
    "q3_K_M",
    "q4_K",
    "q4_K_S",
    "q4_K_M",
    "q5_K",
    "q5_K_M",
    "q6_K",
)
ONNX_QUANTS = ("int8", "int4")

# what an existing OUT may be identified as for --force to replace it, per target: a folder
# of safetensors/pytorch shards with their config reads as an hf-model
OUTPUT_KINDS = {
    "safetensors": frozenset({"safetensors", "hf-model"}),
    "pytorch": frozenset({"pytorch", "hf-model"}),
    "hf-model": frozenset({"hf-model"}),
    "gguf": frozenset({"gguf"}),
    "torchscript": frozenset({"torchscript"}),
    "onnx": frozenset({"onnx"}),
}

# file suffixes that make OUT a single file even when the target could be a folder
FILE_SUFFIXES = {
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".ts",
    ".pt2",
    ".torchscript",
}
# the suffix an intermediate step's output gets inside the multi-step temp folder
STEP_SUFFIX = {
    "safetensors": ".safetensors",
    "pytorch": ".bin",
    "gguf": ".gguf",
    "onnx": ".onnx",
    "torchscript": ".pt",
}


@dataclass
class ConvertOptions:
    """Every option of ``keishiki convert``; each edge reads the ones it understands.

    Attributes:
        to: target format id (one of :data:`TARGETS`).
        dtype: cast floating tensors to ``float16``/``bfloat16``/``float32`` (weight edges).
        force: replace an existing output.
        verify: read the result back (or run both) and compare; on by default.
        strict: on a failed verification remove the output instead of keeping ``OUT.unverified``.
        quiet: no progress bar.
        atol, rtol: tolerances for run-both verification (graph edges); weight edges are exact.
        key: the state_dict inside a training checkpoint (``--key model``).
        shard_size: maximum bytes per weight shard (hf-model targets).
        quant: GGUF type or llama.cpp mix (:data:`GGUF_QUANTS`: ``q8_0``, ``q4_K_M`` ...);
            ONNX: ``int8`` (dynamic) or ``int4`` (MatMulNBits).
        block_size: ONNX int4: values per quantization block (a power of 2, 16 to 256).
        method: TorchScript ``trace`` or ``script``.
        example_input: ``"1x8:int64"`` (shape and dtype of a traced input).
        trust: load a source that scans dangerous or unknown with a loader that can run its
            code (``trust_remote_code`` is the same option under its Python API name).
        opset, exporter: ONNX export settings (``dynamo``/``torchscript``).
        external_data, external_threshold: ONNX external data on/off and size threshold.
        tokenizer: a tokenizer folder/file to carry along when the source has none.
        split_max_size, split_max_tensors: write the GGUF as splits of at most this many
            bytes of tensor data / tensors each (``--to gguf`` only; OUT names the stem:
            ``model.gguf`` gives ``model-00001-of-0000N.gguf``...).
    """

    to: str
    dtype: str | None = None
    force: bool = False
    verify: bool = True
    strict: bool = False
    quiet: bool = False
    atol: float | None = None
    rtol: float | None = None
    key: str | None = None
    shard_size: int | None = None
    quant: str | None = None
    method: str | None = None
    example_input: str | None = None
    trust: bool = False
    opset: int | None = None
    exporter: str | None = None
    external_data: bool | None = None
    external_threshold: int = 1024
    tokenizer: str | None = None
    split_max_size: int | None = None
    split_max_tensors: int | None = None
    block_size: int | None = None


class ConvertKwargs(TypedDict, total=False):
    """The keyword options of :func:`keishiki.convert`, for type checkers: the fields of
    :class:`ConvertOptions` but ``to``, sizes also as text (``"5GB"``, ``"2G"``), and
    ``trust_remote_code`` (``trust`` under its Python API name).  A test checks that the
    two lists agree."""

    dtype: str | None
    force: bool
    verify: bool
    strict: bool
    quiet: bool
    atol: float | None
    rtol: float | None
    key: str | None
    shard_size: int | str | None
    quant: str | None
    method: str | None
    example_input: str | None
    trust: bool
    trust_remote_code: bool
    opset: int | None
    exporter: str | None
    external_data: bool | None
    external_threshold: int
    tokenizer: str | None
    split_max_size: int | str | None
    split_max_tensors: int | None
    block_size: int | None


@dataclass
class StepReport:
    """What one edge did: counts, timing, and its verification verdict.

    ``verify`` holds at least ``{"method": "read-back" | "run-both", "passed": bool}`` and the
    measured differences (``max_abs_diff``, ``n_compared``, ``mismatches`` ...); it stays
    ``{}`` when verification was switched off.
    """

    edge: str
    src: str
    out: str
    seconds: float = 0.0
    n_tensors: int = 0
    bytes_written: int = 0
    verify: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """True/False after verification, None when it did not run."""
        return self.verify.get("passed") if self.verify else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        """``passed`` / ``FAILED`` (with the verification's method) or ``not verified``."""
        if self.passed is None:
            return "not verified"
        method = self.verify.get("method")
        return ("passed" if self.passed else "FAILED") + (f" ({method})" if method else "")

    def __repr__(self) -> str:
        return short_repr(
            "StepReport",
            [
                ("edge", self.edge),
                ("tensors", self.n_tensors),
                ("bytes_written", self.bytes_written),
                ("passed", self.passed),
            ],
        )


@dataclass(frozen=True)
class Edge:
    """One conversion the graph offers.

    Attributes:
        src, dst: format ids.
        run: ``"keishiki._convert.<module>:<function>"``, imported only when the edge runs.
        extras: pip extras the edge needs (``("torch", "onnx")``).
        lossless: False when the edge can lose information (quantization, graph capture).
        description: one line for ``keishiki formats``.
        loads_source: the edge hands its source to a third-party loader that can run code
            from it (transformers' ``from_pretrained``, ``torch.load(weights_only=False)``),
            so the source must pass the load gate; other edges read it with keishiki's own
            readers, which run nothing.
        first_only: the edge needs what only an original file of ``src`` carries (a model
            GGUF's architecture and vocabulary: the generic GGUF another edge writes has
            neither), so a path starts with it or does not take it.
    """

    src: str
    dst: str
    run: str
    extras: tuple[str, ...] = ()
    lossless: bool = True
    description: str = ""
    loads_source: bool = False
    first_only: bool = False

    @property
    def name(self) -> str:
        return f"{self.src} -> {self.dst}"

    def function(self) -> Callable[[Path, Path, ConvertOptions], StepReport]:
        """The edge's function, imported now."""
        import importlib

        module, _, attr = self.run.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass
class ConvertReport(Shown):
    """The result of :func:`keishiki.convert`: the path taken and each step's report."""

    src: str
    out: str
    src_format: str
    to: str
    path: list[str]
    steps: list[StepReport] = field(default_factory=list)
    seconds: float = 0.0
    kept_as: str | None = None  # where an unverified output was kept
    # the source's scan verdict when it is not "safe" and keishiki's reader took its
    # weights anyway: {"verdict", "reason", "read_by"}
    source_scan: dict | None = None

    @property
    def verified(self) -> bool:
        """True when every step ran its verification."""
        return bool(self.steps) and all(s.verify for s in self.steps)

    @property
    def passed(self) -> bool:
        """False when any step's verification failed (True when verification was off)."""
        return all(s.passed is not False for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "out": self.out,
            "src_format": self.src_format,
            "to": self.to,
            "path": self.path,
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
            "passed": self.passed,
            "kept_as": self.kept_as,
            "source_scan": self.source_scan,
            "steps": [s.to_dict() for s in self.steps],
        }

    def __repr__(self) -> str:
        return short_repr(
            "ConvertReport",
            [
                ("path", " -> ".join(self.path)),
                ("passed", self.passed),
                ("verified", self.verified),
                ("out", self.out),
            ],
        )

    def _view(self) -> View:
        fields = [
            ("source", f"{self.src} ({self.src_format})"),
            ("output", self.out),
            ("path", " -> ".join(self.path)),
            ("seconds", f"{self.seconds:.2f}"),
        ]
        if self.kept_as:
            fields.append(("kept as", self.kept_as))
        if self.source_scan:
            fields.append(("source scan", str(self.source_scan.get("verdict", ""))))
        fields += [("warning", w) for s in self.steps for w in s.warnings]
        rows = [
            (s.edge, str(s.n_tensors), size(s.bytes_written), f"{s.seconds:.2f}", s.verdict)
            for s in self.steps
        ]
        columns = ("step", "tensors", "written", "seconds", "verification")
        return View("ConvertReport", fields, columns if rows else (), rows)


def output_is_folder(to: str, out: Path, src_is_dir: bool) -> bool:
    """Whether the final output of a conversion to ``to`` is a folder.

    ``hf-model`` is always a folder; an OUT ending in a model-file suffix (``.safetensors``,
    ``.bin``, ``.pt``, ``.gguf``, ``.onnx`` ...) is always a file; otherwise a folder source
    (an HF folder) gives a folder, and so do ONNX/TorchScript targets (the tokenizer and
    config travel with them).
    """
    if to == "hf-model":
        return True
    if out.suffix.lower() in FILE_SUFFIXES:
        return False
    return src_is_dir or to in ("onnx", "torchscript")


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
