"""Every format keishiki knows, declared once: one :class:`FormatSpec` per format.

A spec names the format's id (what ``--json`` prints as ``"format"``), the module in
``keishiki/formats`` that sniffs and reads it (a :class:`FormatModule`, imported only when a
file is sniffed), where its sniffer runs in the sniff order, and what the format can carry.
Every other list is derived from :data:`FORMATS`:

- :data:`SNIFF_ORDER` and :data:`LOOKED_FOR` (:func:`keishiki.formats.identify`),
- ``keishiki formats`` (``keishiki._convert.edges.FORMATS``),
- :data:`CODE_BEARING` (the formats ``keishiki info`` shows a scan verdict for, and whose
  conversions go through the load gate),
- :data:`NETRON_GRAPH` (``keishiki view`` offers Netron only where it draws a graph),
- the export-folder suffixes (a model file beside its config and tokenizer),
- README.md's "Supported formats" table: ``python -m keishiki.formats --readme``
  rewrites it, and a test checks that it matches :func:`readme_table`.

Sniff order matters only where containers overlap (a TorchScript archive is also a zip
with ``data.pkl``; an ONNX file has no magic number): folders first, then the zip flavours
from the most specific to the most general (``torch.save``), then files with a magic
number, then the formats with no magic at all, which their sniffers confirm by parsing.
Nothing here imports a format module or a heavy library: ``import keishiki`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from ..core.model import ModelInfo
    from ..core.source import Source


@dataclass(frozen=True)
class Match:
    """A sniffer's verdict: the format id (as in ``--json``), its variant, and why.

    ``module`` is filled in by :func:`keishiki.formats.identify` (the sniffer leaves it
    empty).  ``member`` names the one file inside a folder that holds the model (an export
    folder: ``model.pt`` beside its tokenizer and config), which the format's reader then
    reads.
    """

    format: str
    variant: str | None = None
    module: str = ""
    reason: str = ""
    member: str | None = None


@runtime_checkable
class FormatModule(Protocol):
    """What a module in ``keishiki/formats`` provides (Netron's ``match``/``open`` split).

    ``sniff`` looks at a few bytes, zip member names or folder entries: cheap, ``None`` on a
    miss, never raises, never imports a heavy library.  ``read`` returns the lazy
    :class:`~keishiki.core.model.ModelInfo` (tensor bytes are read only when asked for);
    :func:`keishiki.formats.read` turns any parser failure into ``CorruptFile``.
    """

    FORMAT: str  # the spec's id

    def sniff(self, src: Source) -> Match | None: ...

    def read(self, src: Source, match: Match) -> ModelInfo: ...


# How Netron (netron.app, the `netron` package) shows the format: "graph", a graph of operators
# or layers; "depends", a graph for some files only (keishiki.view.netron.draws_graph decides
# from the file's content); "no", a flat list of tensors or nothing keishiki could hand it.
NetronView = Literal["graph", "depends", "no"]


@dataclass(frozen=True)
class FormatSpec:
    """One format: its id, its module, where it is sniffed and what it can carry."""

    id: str  # as ``--json`` prints it ("format") and ``convert --to`` takes it
    what: str  # one line, as ``keishiki formats`` prints it
    sniff_rank: int  # sniffers run in increasing rank (see the module docstring)
    module: str = ""  # keishiki.formats.<module>; default: the id with "_" for "-"
    variants: tuple[str, ...] = ()  # what Match.variant can be (None is always allowed)
    notes: str = ""  # a detail for README's table, after ``what``
    writable: bool = False  # a ``keishiki convert --to`` target
    code: bool = False  # can carry code or pickles: info shows the scan verdict, convert gates it
    graph: bool = False  # can carry a computation graph (operators or layers)
    tokenizer: bool = False  # can carry the tokenizer itself
    netron: NetronView = "no"
    # its writers store a dense layer's weight as [in, out], the transpose of PyTorch's
    # [out, in] (ONNX MatMul operands, Keras and Flax kernels): a weight paired with one
    # of its tensors may be compared transposed (keishiki.mapping, keishiki.compare)
    in_out_weights: bool = False
    export_suffixes: tuple[str, ...] = ()  # its model file in an export folder

    def __post_init__(self) -> None:
        if not self.module:  # frozen: set once, here
            object.__setattr__(self, "module", self.id.replace("-", "_"))

    def load(self) -> FormatModule:
        """The format's module (imported on first use; sniffing imports them in order)."""
        return cast(FormatModule, importlib.import_module(f"{__package__}.{self.module}"))


# in the order `keishiki formats`, README.md and the "looked for" error list them (the order
# the sniffers run in is sniff_rank's)
FORMATS: tuple[FormatSpec, ...] = (
    FormatSpec(
        "safetensors",
        "safetensors tensors (single file or shard)",
        sniff_rank=90,  # u64 header length + JSON header
        writable=True,
    ),
    FormatSpec(
        "pytorch",
        "torch.save pickles: state_dicts, checkpoints, whole nn.Modules",
        sniff_rank=80,  # zip with data.pkl (the most general zip), or torch's legacy magic
        variants=("zip", "legacy"),
        writable=True,
        code=True,
    ),
    FormatSpec(
        "hf-model",
        "Hugging Face model folder: config.json + weights + tokenizer",
        sniff_rank=10,  # folder: config.json + weights
        notes="weights as safetensors (single/sharded), `pytorch_model.bin`, TF `.h5`, Flax "
        "`.msgpack` or GGUF",
        writable=True,
        code=True,
        tokenizer=True,
    ),
    FormatSpec(
        "gguf",
        "GGUF v2/v3 (llama.cpp), quantized or not",
        sniff_rank=100,  # "GGUF"; also a folder of GGUF files (one model, perhaps split)
        writable=True,
        code=True,  # a Jinja chat template
        tokenizer=True,
        netron="depends",  # architectures netron has a block definition for
    ),
    FormatSpec(
        "torchscript",
        "TorchScript archive (torch.jit.save)",
        sniff_rank=40,  # zip with code/ and constants.pkl: before pytorch
        notes="also `.pt`: told apart by the archive's members",
        writable=True,
        code=True,
        graph=True,
        netron="graph",
        export_suffixes=(".pt", ".pth", ".jit"),
    ),
    FormatSpec(
        "onnx",
        "ONNX ModelProto, embedded or external data",
        sniff_rank=160,  # protobuf, no magic: confirmed by parsing; also a folder, one .onnx
        variants=("embedded", "external-data"),
        notes="external data resolved inside the model's folder only",
        writable=True,
        code=True,  # external-data paths
        graph=True,
        netron="graph",
        export_suffixes=(".onnx",),
        in_out_weights=True,
    ),
    FormatSpec(
        "torch-export",
        "torch.export .pt2 archive",
        sniff_rank=50,  # zip with serialized_exported_program: before pytorch
        code=True,
        graph=True,
        netron="graph",
        export_suffixes=(".pt2",),
    ),
    FormatSpec(
        "torch7",
        "Lua Torch7 torch.save file (binary or ascii)",
        sniff_rank=150,  # Lua Torch serialisation (binary or ascii): confirmed by parsing
        variants=("binary", "ascii"),
        notes="any extension",
        code=True,  # Lua functions (bytecode Lua's torch.load loads as code)
        graph=True,  # nn modules
        netron="graph",
    ),
    FormatSpec(
        "numpy",
        "NumPy .npy / .npz arrays",
        sniff_rank=70,  # \x93NUMPY, or a zip of .npy members: before pytorch
        variants=("npy", "npz"),
        notes="object arrays listed, never unpickled",
        code=True,  # object arrays are pickles
    ),
    FormatSpec(
        "keras-h5",
        "Keras/TF HDF5 weights or model",
        sniff_rank=110,  # HDF5 signature
        code=True,  # Lambda layers
        graph=True,  # a model_config
        netron="depends",  # only with a model_config
        in_out_weights=True,
    ),
    FormatSpec(
        "keras",
        "Keras v3 .keras archive",
        sniff_rank=60,  # zip with config.json + model.weights.h5: before pytorch
        code=True,  # Lambda layers
        graph=True,
        netron="graph",
        in_out_weights=True,
    ),
    FormatSpec(
        "flax-msgpack",
        "Flax serialized state (msgpack)",
        sniff_rank=130,  # msgpack map of ndarray ext types
        in_out_weights=True,
    ),
    FormatSpec(
        "pickle",
        "any other Python pickle stream, joblib files (read, never loaded)",
        sniff_rank=140,  # any other pickle stream: not a model format, but scan-worthy
        notes="listed for `scan`",
        code=True,
    ),
    FormatSpec(
        "tflite",
        "TensorFlow Lite flatbuffer (identified only)",
        sniff_rank=120,  # "TFL3" flatbuffer identifier
        graph=True,
        netron="graph",
        in_out_weights=True,
    ),
    FormatSpec(
        "tensorflow-savedmodel",
        "TensorFlow SavedModel folder (identified only)",
        sniff_rank=20,  # folder: saved_model.pb (and the file itself, before onnx)
        module="tf_savedmodel",
        graph=True,
        netron="graph",
        in_out_weights=True,
    ),
    FormatSpec(
        "coreml",
        "Core ML model (identified only)",
        sniff_rank=30,  # .mlpackage folder / .mlmodel
        variants=("mlpackage", "mlmodel"),
        graph=True,
        netron="graph",
    ),
)

BY_ID: dict[str, FormatSpec] = {spec.id: spec for spec in FORMATS}
SNIFF_ORDER: tuple[FormatSpec, ...] = tuple(sorted(FORMATS, key=lambda spec: spec.sniff_rank))
LOOKED_FOR = ", ".join(spec.id for spec in FORMATS)
CODE_BEARING = frozenset(spec.id for spec in FORMATS if spec.code)
NETRON_GRAPH = frozenset(spec.id for spec in FORMATS if spec.netron == "graph")
IN_OUT_WEIGHTS = frozenset(spec.id for spec in FORMATS if spec.in_out_weights)
WRITABLE = tuple(spec.id for spec in FORMATS if spec.writable)
# formats whose folder form is "model file(s) + tokenizer/config" (keishiki's and optimum's
# exports), in sniff order, and the suffixes of that model file
EXPORT_FORMATS = tuple(spec for spec in SNIFF_ORDER if spec.export_suffixes)
EXPORT_SUFFIXES = tuple(s for spec in EXPORT_FORMATS for s in spec.export_suffixes)


# ---- README.md's table ------------------------------------------------------------------------

README_BEGIN = (
    "<!-- formats table: generated from src/keishiki/formats/registry.py by "
    "`python -m keishiki.formats --readme`; edit the registry, not this table -->"
)
README_END = "<!-- end of formats table -->"
_NETRON_CELL = {"graph": "yes", "depends": "some files", "no": "-"}


def readme_table() -> str:
    """README.md's "Supported formats" table, one row per format in :data:`FORMATS` order."""
    rows = [
        '| id (`--json` `"format"`) | variants | what | `convert --to` | can carry '
        "| Netron graph |",
        "|---|---|---|---|---|---|",
    ]
    for spec in FORMATS:
        carries = [name for name in ("code", "graph", "tokenizer") if getattr(spec, name)]
        what = f"{spec.what}; {spec.notes}" if spec.notes else spec.what
        cells = [
            f"`{spec.id}`",
            " / ".join(f"`{v}`" for v in spec.variants),
            what,
            "yes" if spec.writable else "-",
            ", ".join(carries) or "-",
            _NETRON_CELL[spec.netron],
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def with_readme_table(text: str) -> str:
    """``text`` (README.md) with the part between the table's markers replaced by
    :func:`readme_table`.

    Raises:
        ValueError: the markers are missing.
    """
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_BEGIN!r} ... {README_END!r} markers")
    head = text[: start + len(README_BEGIN)]
    return f"{head}\n{readme_table()}\n{text[end:]}"
