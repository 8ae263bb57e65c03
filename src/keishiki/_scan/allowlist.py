"""Which globals a legitimate checkpoint references (allowlist), and which are known gadgets.

The verdict rests on the ALLOWLIST: anything not on it is ``unknown``, so a gadget nobody
has listed yet (``mlflow...._run_entry_point``, ``pandas.read_csv``...) is still not
``safe``.  The BLOCKLIST only decides between ``unknown`` and ``dangerous``.

Provenance of the allowlist:
- ``TORCH_WEIGHTS_ONLY``: ``torch._weights_only_unpickler._get_allowed_globals()`` of
  torch 2.13.0 (printed on this machine), which is what ``torch.load(weights_only=True)``
  accepts: tensor rebuild functions, storages, dtypes, ``torch.Size``, OrderedDict...
- numpy array/scalar reconstruction as numpy 1.x and 2.x pickle it (protocols 2-5).
- the globals of every pickle in the real-file corpus (``pickle_globals`` facts).

Names are matched after the normalisation a loader applies (py2 module names are mapped
by the VM); a name that only matches a dangerous module after stripping whitespace,
Unicode compatibility folding or lower-casing is reported as a disguised gadget.
"""

from __future__ import annotations

import unicodedata

try:  # CPython's own py2 -> py3 rename table (what pickle's fix_imports applies)
    from _compat_pickle import IMPORT_MAPPING as _PY2_MODULES
    from _compat_pickle import NAME_MAPPING as _PY2_NAMES
except ImportError:  # pragma: no cover
    _PY2_MODULES, _PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}, {}

_STORAGES = [
    "BFloat16",
    "Bool",
    "Byte",
    "Char",
    "ComplexDouble",
    "ComplexFloat",
    "Double",
    "Float",
    "Half",
    "Int",
    "Long",
    "QInt32",
    "QInt8",
    "QUInt2x4",
    "QUInt4x2",
    "QUInt8",
    "Short",
]
_TENSORS = ["BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short"]
_DTYPES = (
    [
        "bfloat16",
        "bits16",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "bits8",
        "bool",
        "complex128",
        "complex32",
        "complex64",
        "float16",
        "float32",
        "float4_e2m1fn_x2",
        "float64",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "int16",
        "int32",
        "int64",
        "int8",
        "qint32",
        "qint8",
        "quint2x4",
        "quint4x2",
        "quint8",
        "uint16",
        "uint32",
        "uint64",
        "uint8",
        "half",
        "float",
        "double",
        "long",
        "int",
        "short",
        "cfloat",
        "cdouble",
    ]
    + [f"int{i}" for i in range(1, 8)]
    + [f"uint{i}" for i in range(1, 8)]
)
_REBUILD = [
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_sparse_csr_tensor",
]

TORCH_WEIGHTS_ONLY = frozenset(
    [
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_affine",
        "torch.per_channel_symmetric",
        "torch.per_channel_affine_float_qparams",
    ]
    + [f"torch.{d}" for d in _DTYPES]
    + [f"torch.{s}Storage" for s in _STORAGES]
    + [f"torch.cuda.{s}Storage" for s in _STORAGES]
    + [f"torch.{t}Tensor" for t in _TENSORS]
    + [f"torch.cuda.{t}Tensor" for t in _TENSORS]
    + [f"torch.sparse.{t}Tensor" for t in _TENSORS]
    + [f"torch.cuda.sparse.{t}Tensor" for t in _TENSORS]
    + [f"torch._utils.{f}" for f in _REBUILD]
)

_NUMPY_SCALARS = [
    "bool_",
    "float16",
    "float32",
    "float64",
    "longdouble",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "complex64",
    "complex128",
    "str_",
    "bytes_",
    "datetime64",
    "timedelta64",
    "void",
    "object_",
]
NUMPY = frozenset(
    [
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
    ]
    + [f"numpy.{s}" for s in _NUMPY_SCALARS]
    + [
        f"numpy.dtypes.{n}DType"
        for n in (
            "Float16",
            "Float32",
            "Float64",
            "Int8",
            "Int16",
            "Int32",
            "Int64",
            "UInt8",
            "UInt16",
            "UInt32",
            "UInt64",
            "Bool",
            "Complex64",
            "Complex128",
        )
    ]
)

# plain data constructors: calling them with any arguments builds data, never runs code
BUILTIN_DATA = frozenset(
    f"builtins.{n}"
    for n in (
        "set",
        "frozenset",
        "bytearray",
        "complex",
        "slice",
        "range",
        "bytes",
        "dict",
        "list",
        "tuple",
        "int",
        "float",
        "str",
        "bool",
        "object",
    )
)
OTHER_SAFE = frozenset(
    [
        "collections.defaultdict",
        "collections.deque",
        "torch.torch_version.TorchVersion",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.preserve_format",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
    ]
)

# Classes that checkpoints carry beside tensors (docs/scan.md has the table with the reason
# for each).  Each was read in its library: unpickling it is a plain object creation
# (``object.__new__`` or a C/enum constructor that parses its arguments) plus BUILD, which
# sets ``__dict__`` or calls a ``__setstate__`` that only assigns fields.  Nothing here
# imports, opens files or calls an argument.
_PATHS = ["Path", "PurePath", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"]
_BIT_GENERATORS = [
    "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64",
]
_TRAINER_ENUMS = [
    "training_args.OptimizerNames",
    "trainer_utils.HubStrategy",
    "trainer_utils.IntervalStrategy",
    "trainer_utils.SaveStrategy",
    "trainer_utils.SchedulerType",
    "trainer_utils.EvaluationStrategy",
    "trainer_utils.FSDPOption",
    "debug_utils.DebugOption",
    "training_args.ParallelMode",
]
_DCP = [
    "metadata.Metadata",
    "metadata.TensorStorageMetadata",
    "metadata.ChunkStorageMetadata",
    "metadata.BytesStorageMetadata",
    "metadata.MetadataIndex",
    "metadata.StorageMeta",
    "metadata.TensorProperties",
    "metadata._MEM_FORMAT_ENCODING",
    "filesystem._StorageInfo",
]
STATE_ONLY = frozenset(
    [
        "argparse.Namespace",
        "datetime.time",
        "datetime.timezone",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedlessSeedSequence",
        "numpy.random._generator.Generator",
        "numpy.random.mtrand.RandomState",
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
        "transformers.training_args.TrainingArguments",
        "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
        "transformers.trainer_pt_utils.AcceleratorConfig",
        "accelerate.state.PartialState",
        "accelerate.utils.dataclasses.DistributedType",
    ]
    + [f"pathlib.{p}" for p in _PATHS]
    + [f"pathlib._local.{p}" for p in _PATHS]
    + _BIT_GENERATORS
    + [f"transformers.{e}" for e in _TRAINER_ENUMS]
    + [f"torch.distributed.checkpoint.{d}" for d in _DCP]
)

SAFE = TORCH_WEIGHTS_ONLY | NUMPY | BUILTIN_DATA | OTHER_SAFE | STATE_ONLY

# safe only with particular arguments (checked against the Call by the pickle scanner)
CONDITIONAL = {
    "_codecs.encode": "bytes reconstruction (_codecs.encode(text, 'latin1'))",
    "copyreg._reconstructor": "plain-object reconstruction of a class and base listed separately",
    "copyreg.__newobj__": "object creation of a class listed separately",
    "copyreg.__newobj_ex__": "object creation of a class listed separately",
    # numpy's Generator/RandomState pickles: they call the class or the constructor they
    # are given, so they are safe only with a BitGenerator name/class and numpy's own ctor
    "numpy.random._pickle.__bit_generator_ctor": "builds a numpy BitGenerator by name or class",
    "numpy.random._pickle.__generator_ctor": "builds a numpy Generator around a BitGenerator",
    "numpy.random._pickle.__randomstate_ctor": "builds a numpy RandomState around a BitGenerator",
    "numpy.random.__RandomState_ctor": "numpy < 1.17 RandomState (seeded with 0)",
}
BIT_GENERATORS = frozenset(_BIT_GENERATORS)

# TorchScript's own pickles resolve these from the archive's compiled code, not by import
TORCHSCRIPT_SAFE_PREFIXES = ("__torch__.", "torch.jit._pickle.")

# ---- blocklist -------------------------------------------------------------------------------
# whole modules (and their submodules) whose callables run code, spawn processes, import,
# touch files or the network
DANGEROUS_MODULES = frozenset(
    [
        "os",
        "posix",
        "nt",
        "subprocess",
        "_posixsubprocess",
        "sys",
        "runpy",
        "importlib",
        "imp",
        "zipimport",
        "pkgutil",
        "marshal",
        "pickle",
        "_pickle",
        "cPickle",
        "pickletools",
        "dill",
        "cloudpickle",
        "joblib",
        "shelve",
        "pip",
        "ensurepip",
        "venv",
        "setuptools",
        "distutils",
        "webbrowser",
        "shutil",
        "socket",
        "_socket",
        "ssl",
        "ctypes",
        "_ctypes",
        "cffi",
        "code",
        "codeop",
        "pty",
        "tty",
        "asyncio",
        "multiprocessing",
        "_multiprocessing",
        "concurrent",
        "threading",
        "_thread",
        "signal",
        "pdb",
        "bdb",
        "profile",
        "cProfile",
        "trace",
        "timeit",
        "doctest",
        "idlelib",
        "lib2to3",
        "pydoc",
        "http",
        "urllib",
        "urllib2",
        "urllib3",
        "requests",
        "aiohttp",
        "httplib",
        "httpx",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "platform",
        "commands",
        "popen2",
        "mailcap",
        "tempfile",
        "tarfile",
        "zipfile",
        "site",
        "sitecustomize",
        "builtins.__import__",
        "types",
        "operator",
        "_operator",
        "functools",
        "gc",
        "inspect",
        "ast",
        "compileall",
        "py_compile",
        "sqlite3",
        "fileinput",
        "io",
        "_io",
        "codecs",
        "linecache",
        "cgi",
        "cgitb",
        "nturl2path",
        "uuid._popen",
        "ftplib",
        "poplib",
        "imaplib",
        "nntplib",
        "socketserver",
        "wsgiref",
        "numpy.f2py",
        "numpy.distutils",
        "numpy.testing",
        "numpy.ctypeslib",
        "numpy.lib.npyio",
        "torch.jit",
        "torch.hub",
        "torch._dynamo",
        "torch._inductor",
        "torch.utils.cpp_extension",
        "torch.serialization",
        "torch.package",
        "torch.utils.collect_env",
        "torch.utils.bottleneck",
        "torch.fx.experimental.symbolic_shapes",
        "torch._C",
        "torch.ops",
        "torch.classes",
        "torch.library",
        "torch.distributed",
        "torch.multiprocessing",
        "torch._export",
        "torch.export",
        "torch.compiler",
        "torch._functorch",
        "torch.backends",
        "torch.testing",
        "torch.utils.data.datapipes",
        "torch._ops",
        "torch.cuda.memory",
    ]
)

# single callables elsewhere
DANGEROUS_NAMES = frozenset(
    [
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "builtins.__import__",
        "builtins.open",
        "builtins.apply",
        "builtins.execfile",
        "builtins.input",
        "builtins.breakpoint",
        "builtins.globals",
        "builtins.locals",
        "builtins.vars",
        "builtins.__build_class__",
        "builtins.memoryview",
        "builtins.super",
        "builtins.help",
        "builtins.exit",
        "builtins.quit",
        "builtins.reload",
        "builtins.file",
        "builtins.dir",
        "torch.load",
        "torch.save",
        "torch.storage._load_from_bytes",
        "torch.from_file",
        "torch._utils._rebuild_xla_tensor",
        "torch._weights_only_unpickler",
        "numpy.load",
        "numpy.save",
        "numpy.fromfile",
        "numpy.loadtxt",
        "numpy.genfromtxt",
        "numpy.memmap",
        "numpy.tofile",
        "numpy.core.multiarray.fromfile",
        "copyreg.add_extension",
        "__main__.__builtins__",
        "numpy.testing._private.utils.runstring",
        "torch._tensor._rebuild_from_type",  # calls an arbitrary func argument
    ]
)

# dunder attribute names: walking them (``numpy.__builtins__``, ``f.__globals__``) reaches
# builtins and module namespaces from an innocent-looking global
_DUNDER_OK_MODULES = frozenset(["__main__", "__builtin__", "__torch__"])

WHOLE_MODULE_NOTE = "whole pickled module: loading needs the class code and weights_only=False"
_EXPECTED_UNKNOWN = (
    ("torch.nn.", WHOLE_MODULE_NOTE),
    ("torch.optim.", "optimizer object pickled whole: loading needs weights_only=False"),
    ("__main__.", "class defined in the saving script: " + WHOLE_MODULE_NOTE),
    ("__torch__.", "TorchScript class outside a TorchScript archive"),
)


def _module_matches(module: str, blocked: frozenset[str]) -> str | None:
    """The blocked module ``module`` is, or is a submodule of."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in blocked:
            return prefix
    return None


# Cyrillic and Greek letters that look like Latin ones (Unicode confusables): NFKC keeps
# them apart, a reader of the scan's output does not
_CONFUSABLES = str.maketrans("аеорсухіѕјԁһӏԛԝοαειικνρτυχ", "aeopcyxisjdhlqwoaeiiknptux")


def _fold(text: str) -> str:
    """Text as a careless reader would see it: NFKC, look-alike letters as the Latin ones
    they imitate, no whitespace/NULs, lower case."""
    text = unicodedata.normalize("NFKC", text).translate(_CONFUSABLES)
    return "".join(
        ch for ch in text if not ch.isspace() and ch not in "\0\u200b\u200c\u200d\ufeff"
    ).lower()


def _blocked(qualname: str) -> str | None:
    """Why ``qualname`` (already ``module.name``) is a known gadget, or None."""
    if qualname in DANGEROUS_NAMES:
        return f"{qualname} is a known code-execution or file-access gadget"
    hit = _module_matches(qualname, DANGEROUS_MODULES)
    if hit:
        return f"{qualname}: module {hit} runs code, spawns processes, imports or touches files"
    return None


def classify(module: str, name: str, *, torchscript: bool = False) -> tuple[str, str]:
    """The severity and reason for the global ``module.name`` (see :func:`_classify`).

    A Python 2 name is also judged under the Python 3 name ``pickle`` maps it to (for
    protocols < 3 the mapping applies to STACK_GLOBAL too, e.g. ``commands`` ->
    ``subprocess``); the worse verdict wins.
    """
    severity, reason = _classify(module, name, torchscript=torchscript)
    mapped = _PY2_NAMES.get((module, name))
    if mapped is None and module in _PY2_MODULES:
        mapped = (_PY2_MODULES[module], name)
    if mapped and mapped != (module, name) and severity != "dangerous":
        sev2, reason2 = _classify(*mapped, torchscript=torchscript)
        if sev2 == "dangerous":
            return sev2, f"python 2 name {module}.{name} loads as {'.'.join(mapped)}: {reason2}"
    return severity, reason


def _classify(module: str, name: str, *, torchscript: bool = False) -> tuple[str, str]:
    """The severity and reason for the global ``module.name``.

    Args:
        module, name: as recorded by the restricted VM (py2 names already mapped).
        torchscript: the pickle belongs to a TorchScript archive (``__torch__.*`` classes are
            then resolved from the archive's compiled code, not imported).

    Returns:
        ``(severity, reason)`` with severity ``safe``, ``unknown`` or ``dangerous``.
    """
    if module == "<dynamic>" or name == "<dynamic>":
        return (
            "dangerous",
            "STACK_GLOBAL whose module/name are not literal strings (built at "
            "load time, e.g. from another call's result): a hidden import",
        )
    if module == "copyreg.extension":
        return (
            "dangerous",
            f"EXT opcode code {name}: the callable comes from copyreg's "
            "extension registry of the loading process, invisible in the file",
        )
    if module in ("__builtin__", "__builtins__"):  # py2 name, or the builtins dict via STACK_GLOBAL
        module = "builtins"
    qualname = f"{module}.{name}"
    if qualname in SAFE and "." not in name:
        return ("safe", "on the allowlist of what legitimate checkpoints reference")
    # a dotted name is an attribute walk from the module (pickle resolves it for protocol >= 4)
    segments = module.split(".") + name.split(".")
    for seg in segments:
        if (
            seg.startswith("__")
            and seg.endswith("__")
            and len(seg) > 4
            and seg not in _DUNDER_OK_MODULES
        ):
            return (
                "dangerous",
                f"{qualname}: walks the dunder attribute {seg}, which reaches "
                "builtins, code objects or module globals",
            )
    if torchscript and qualname.startswith(TORCHSCRIPT_SAFE_PREFIXES) and "." not in name:
        return ("safe", "TorchScript type resolved from the archive's compiled code")
    why = _blocked(qualname)
    if why:
        return ("dangerous", why)
    if "." in name:
        # attribute walk from a module: check each prefix (torch._utils.os.system)
        for i in range(1, len(segments)):
            why = _blocked(".".join(segments[i:]))
            if why:
                return ("dangerous", f"{qualname}: attribute walk reaches {why}")
        return (
            "unknown",
            f"{qualname}: dotted name walks attributes of {module}; not on the allowlist",
        )
    folded = _fold(qualname)
    if folded != qualname.lower() or qualname != qualname.strip():
        why = _blocked(folded) or _blocked(_fold(module) + "." + _fold(name))
        if why:
            return (
                "dangerous",
                f"disguised name {qualname!r} (whitespace, case or Unicode "
                f"tricks) looks like a gadget: {why}",
            )
    if qualname in CONDITIONAL:
        return ("safe", CONDITIONAL[qualname])
    for prefix, note in _EXPECTED_UNKNOWN:
        if qualname.startswith(prefix):
            return ("unknown", f"{qualname}: {note}")
    if _fold(qualname) != qualname.lower():
        return (
            "unknown",
            f"{qualname!r}: name with whitespace or unusual characters; not on the allowlist",
        )
    return (
        "unknown",
        f"{qualname} is not on the allowlist: loading it imports and runs "
        "code from outside the file",
    )
