"""torchscript: ``torch.jit.save`` archives (also named ``.pt``), read without torch.

Members: ``<prefix>/data.pkl`` (the module object tree: ``__torch__.*`` class instances
whose BUILD state is a dict of attributes, tensors as in torch.save), ``<prefix>/data/<key>``
storages, ``<prefix>/code/__torch__/....py`` (the compiled classes as TorchScript source:
``__parameters__ = [...]``, ``__buffers__ = [...]``, typed attributes, methods),
``constants.pkl`` (+ ``constants/<key>``), optional ``extra/*``, ``bytecode.pkl`` (mobile),
``traced_inputs.pkl``, ``*.debug_pkl`` and no ``.format_version``.

Parameters are told from buffers and plain tensor attributes by the class's own
``__parameters__`` / ``__buffers__`` lists, read by parsing the code file with :mod:`ast`
(parsed, never executed).  The forward schema comes from the ``def forward`` signature.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..core import dtypes, python_code
from ..core.model import ModelInfo
from ..core.pickle_reader import Call, GlobalRef, read_pickle
from ..core.source import Source
from ..core.tensor import TensorInfo
from ..errors import CorruptFile
from . import _torch_pickle as torch_pickle
from . import pytorch
from .registry import Match

FORMAT = "torchscript"
MAX_CODE_BYTES = 16 * 1024 * 1024  # one code file
SHOW_CODE_BYTES = 64 * 1024  # the top module's code shown in details
MAX_CODE_FILES_PARSED = 2000
MAX_CODE_BYTES_SCANNED = 64 * 1024 * 1024  # all code files together, for the op census
# operator namespaces every TorchScript program uses; anything else needs a custom library
STANDARD_OP_NAMESPACES = {
    "aten",
    "prim",
    "quantized",
    "_quantized",
    "prepacked",
    "profiler",
    "_caffe2",
    "torchvision",
    "image",
    "_c10d_functional",
    "c10d",
}
_OP_REF = re.compile(rb"\bops\.([A-Za-z_][A-Za-z_0-9]*)\.([A-Za-z_][A-Za-z_0-9]*)")
_CLASS_REF = re.compile(rb"\btorch\.classes\.([A-Za-z_][A-Za-z_0-9]*)\.([A-Za-z_][A-Za-z_0-9]*)")


def prefix_of(names: list[str]) -> str | None:
    """The archive folder holding data.pkl + constants.pkl + code/, else None."""
    member = pytorch.data_pkl_member(names)
    if member is None:
        return None
    prefix = member[: -len("data.pkl")]
    has_constants = f"{prefix}constants.pkl" in names
    has_code = any(n.startswith(f"{prefix}code/") for n in names)
    return prefix if has_constants and has_code else None


def sniff(src: Source) -> Match | None:
    if src.is_dir or not src.looks_like_zip:
        return None
    if prefix_of(src.zip_names) is None:
        return None
    return Match(FORMAT, None, reason="zip with data.pkl, constants.pkl and code/ (torch.jit)")


# ---- code files ------------------------------------------------------------------------------


@dataclass
class ClassCode:
    """What a compiled class's source declares (parsed with ast, never run)."""

    name: str
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    forward_schema: str | None = None
    forward_source: str | None = None


def class_file(qualname: str) -> tuple[str, str]:
    """``__torch__.a.b.Cls`` -> (``code/__torch__/a/b.py``, ``Cls``)."""
    parts = qualname.split(".")
    return "code/" + "/".join(parts[:-1]) + ".py", parts[-1]


_TYPE_FORMS = {"Optional": "{}?", "List": "{}[]"}


def schema_type(node: ast.expr | None) -> str:
    """A Python annotation as TorchScript's schema spells it (Optional[T] -> T?, List[T] -> T[])."""
    if node is None:
        return "Any"
    if isinstance(node, ast.Subscript):
        base = ast.unparse(node.value)
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        args = [schema_type(a) for a in inner]
        if base in _TYPE_FORMS and len(args) == 1:
            return _TYPE_FORMS[base].format(args[0])
        if base == "Tuple":
            return "(" + ", ".join(args) + ")"
        return f"{base}({', '.join(args)})"
    if isinstance(node, ast.Constant) and node.value is None:
        return "NoneType"
    return ast.unparse(node)


def _schema(fn: ast.FunctionDef) -> str:
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    parts = []
    for arg, default in zip(args, defaults):
        text = f"{schema_type(arg.annotation)} {arg.arg}"
        if default is not None:
            text += f"={ast.unparse(default)}"
        parts.append(text)
    return f"{fn.name}({', '.join(parts)}) -> {schema_type(fn.returns)}"


def _string_list(node: ast.expr) -> list[str]:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [
            e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
    return []


def _source_segment(source: str, lines: list[str] | None, node: ast.AST) -> str | None:
    """``ast.get_source_segment(source, node)`` over lines split once per file: the stdlib
    splits the whole file on every call, quadratic for a file with many classes."""
    if lines is None:
        return ast.get_source_segment(source, node)
    lineno, end_lineno = node.lineno - 1, node.end_lineno - 1
    col, end_col = node.col_offset, node.end_col_offset
    if end_lineno == lineno:
        return lines[lineno].encode()[col:end_col].decode()
    first = lines[lineno].encode()[col:].decode()
    last = lines[end_lineno].encode()[:end_col].decode()
    return "".join([first, *lines[lineno + 1 : end_lineno], last])


def parse_classes(source: str) -> dict[str, ClassCode]:
    """Every class a code file defines, with its declared parameters/buffers and methods."""
    try:
        tree = python_code.parse(source)  # (shared with the scan's judging of the same code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    out: dict[str, ClassCode] = {}
    split = getattr(ast, "_splitlines_no_ff", None)  # CPython's own splitter, when present
    lines = split(source) if split is not None else None
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = ClassCode(node.name)
        for item in node.body:
            if (
                isinstance(item, ast.Assign)
                and len(item.targets) == 1
                and isinstance(item.targets[0], ast.Name)
            ):
                if item.targets[0].id == "__parameters__":
                    cls.parameters = _string_list(item.value)
                elif item.targets[0].id == "__buffers__":
                    cls.buffers = _string_list(item.value)
            elif isinstance(item, ast.FunctionDef):
                cls.methods.append(item.name)
                if item.name == "forward":
                    cls.forward_schema = _schema(item)
                    cls.forward_source = _source_segment(source, lines, item)
        out[node.name] = cls
    return out


class CodeIndex:
    """Parses code files on demand (each at most once) and answers per-class questions."""

    def __init__(self, src: Source, prefix: str):
        self.src, self.prefix = src, prefix
        self.names = set(src.zip_names)
        self.files: dict[str, dict[str, ClassCode]] = {}
        self.texts: dict[str, str] = {}
        self.by_qualname: dict[str, ClassCode | None] = {}  # asked once per tensor: memoised

    def text(self, rel: str) -> str | None:
        name = self.prefix + rel
        if name not in self.names:
            return None
        if rel not in self.texts:
            self.texts[rel] = self.src.read_member(name, MAX_CODE_BYTES).decode("utf-8", "replace")
        return self.texts[rel]

    def cls(self, qualname: str) -> ClassCode | None:
        try:
            return self.by_qualname[qualname]
        except KeyError:
            pass
        found = self._cls(qualname)
        if len(self.files) < MAX_CODE_FILES_PARSED:  # once the budget is spent, None may change
            self.by_qualname[qualname] = found
        return found

    def _cls(self, qualname: str) -> ClassCode | None:
        rel, name = class_file(qualname)
        if rel not in self.files:
            if len(self.files) >= MAX_CODE_FILES_PARSED:
                return None
            text = self.text(rel)
            self.files[rel] = parse_classes(text) if text is not None else {}
        return self.files[rel].get(name)


# ---- the module tree --------------------------------------------------------------------------


def _is_script_object(value: Any) -> bool:
    return (
        isinstance(value, Call)
        and isinstance(value.func, GlobalRef)
        and value.func.module.startswith("__torch__")
    )


def _attributes(obj: Call) -> list[tuple[str, Any]]:
    state = obj.state
    if isinstance(state, dict):
        return [(k, v) for k, v in state.items() if isinstance(k, str)]
    return []


def walk_module(root: Any, path: str, code: CodeIndex):
    """(dotted name, role, tensor ref, owner class) for every tensor in the object tree.

    role: ``parameter`` / ``buffer`` (declared by the owner's class code) or ``attribute``.
    Iterative; objects already visited are not re-entered (shared submodules, cycles).
    """
    seen: set[int] = set()
    todo: list[tuple[str, Any, Call | None]] = [("", root, None)]
    while todo:
        name, value, owner = todo.pop()
        if isinstance(value, Call):
            ref = torch_pickle.decode_tensor(value, path)
            if ref is not None:
                role = "attribute"
                if owner is not None:
                    decl = code.cls(owner.qualname)
                    attr = name.rsplit(".", 1)[-1]
                    if decl is not None and attr in decl.parameters:
                        role = "parameter"
                    elif decl is not None and attr in decl.buffers:
                        role = "buffer"
                yield name, role, ref, owner
                continue
        if id(value) in seen:
            continue
        if _is_script_object(value):
            seen.add(id(value))
            kids = [(k, v, value) for k, v in _attributes(value) if k != "training"]
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            kids = [(str(i), v, None) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            seen.add(id(value))
            kids = [(str(k), v, None) for k, v in value.items()]
        else:
            continue
        for part, child, own in reversed(kids):
            todo.append((f"{name}.{part}" if name else part, child, own))


def read(src: Source, match) -> ModelInfo:
    """Parameters, buffers, classes and forward schema of a TorchScript archive."""
    names = src.zip_names
    prefix = prefix_of(names)
    if prefix is None:
        raise CorruptFile(src.path, "not a TorchScript archive (no data.pkl/constants.pkl/code)")
    where = f"{src.path}:{prefix}data.pkl"
    rec = read_pickle(
        src.read_member(prefix + "data.pkl", pytorch.MAX_PICKLE_BYTES),
        path=where,
        max_ops=pytorch.MAX_OPS,
    )
    code = CodeIndex(src, prefix)
    location = torch_pickle.zip_storage_locator(src, prefix)
    tensors: list[TensorInfo] = []
    refs: dict[str, torch_pickle.TensorRef] = {}
    roles: dict[str, int] = {"parameter": 0, "buffer": 0, "attribute": 0}
    param_numel = 0
    for name, role, ref, owner in walk_module(rec.value, where, code):
        roles[role] += 1
        numel = math.prod(ref.shape)
        if role == "parameter":
            param_numel += numel
        itemsize = dtypes.itemsize(ref.dtype) or 1
        offset = member = None
        extra: dict[str, Any] = {
            "role": role,
            "stride": list(ref.stride),
            "storage_offset": ref.storage_offset,
        }
        if ref.storage is not None:
            start, member = location(ref.storage)
            extra["storage_key"] = ref.storage.key
            if start is not None:
                offset = start + ref.storage_offset * itemsize
        if owner is not None:
            extra["owner_class"] = owner.qualname
        if not torch_pickle.is_contiguous(ref.shape, ref.stride):
            extra["contiguous"] = False
        if ref.flags:  # neg/conj bits: the loader applies them; bytes are not the values
            extra["torch_flags"] = list(ref.flags)
        tensors.append(
            TensorInfo(name, ref.dtype, ref.shape, numel * itemsize, offset, member, extra)
        )
        refs[name] = ref
    details = _details(src, prefix, rec, code, roles, param_numel)
    byteorder = details.get("byteorder") or "little"
    return ModelInfo(
        path=str(src.path),
        format=FORMAT,
        format_version=details["version_record"],
        tensors=tensors,
        details={FORMAT: details},
        warnings=[
            "TorchScript archives carry code (code/ files) that runs when "
            "loaded with torch.jit.load"
        ],
        tensor_loader=torch_pickle.loader_for(src.path, refs, byteorder),
    )


def _details(
    src: Source, prefix: str, rec, code: CodeIndex, roles: dict[str, int], param_numel: int
) -> dict[str, Any]:
    names = src.zip_names
    rel = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    root = rec.value
    root_class = root.qualname if isinstance(root, Call) else None
    top = code.cls(root_class) if root_class else None
    details: dict[str, Any] = {
        "archive_prefix": prefix.rstrip("/"),
        "original_name": root_class.rsplit(".", 1)[-1] if root_class else None,
        "root_class": root_class,
        "n_parameters": roles["parameter"],
        "n_buffers": roles["buffer"],
        "n_tensor_attributes": roles["attribute"],
        "param_numel": param_numel,
        "methods": top.methods if top else [],
        "forward_schema": top.forward_schema if top else None,
        "classes": sorted({g.qualname for g in rec.globals if g.module.startswith("__torch__")}),
        "globals": sorted({g.qualname for g in rec.globals}),
        "pickle_protocol": rec.protocol,
        "code_files": sorted(r for r in rel if r.startswith("code/") and r.endswith(".py")),
        "extra_files": sorted(r[len("extra/") :] for r in rel if r.startswith("extra/")),
        "has_bytecode_pkl": "bytecode.pkl" in rel,
        "has_constants_pkl": "constants.pkl" in rel,
        "has_traced_inputs": "traced_inputs.pkl" in rel,
        "has_debug_info": any(r.endswith(".debug_pkl") for r in rel),
        "n_data_records": sum(1 for r in rel if r.startswith("data/")),
        "n_records": len(names),
        "version_record": _small(src, prefix + "version") or _small(src, prefix + ".data/version"),
        "byteorder": _small(src, prefix + "byteorder"),
        "constants": _constants(src, prefix),
    }
    details.update(_op_census(src, prefix))
    if top is not None and root_class:
        file_rel = class_file(root_class)[0]
        text = code.text(file_rel) or ""
        details["code"] = {file_rel: text[:SHOW_CODE_BYTES]}
        details["forward_source"] = top.forward_source
    return details


def _op_census(src: Source, prefix: str) -> dict[str, Any]:
    """``ops.<namespace>.<op>`` and ``torch.classes.<ns>.<cls>`` referenced by the code files.

    Operators outside the standard namespaces come from a C++ library that must be loaded
    (``torch.ops.load_library``) before the archive runs: worth a look before trusting it.
    """
    namespaces: Counter[str] = Counter()
    custom: set[str] = set()
    classes: set[str] = set()
    budget = MAX_CODE_BYTES_SCANNED
    for info in src.zip().infolist():
        name = info.filename
        if not (name.startswith(prefix + "code/") and name.endswith(".py")) or budget <= 0:
            continue
        text = src.read_member(name, min(MAX_CODE_BYTES, budget))
        budget -= len(text)
        for ns, op in _OP_REF.findall(text):
            namespaces[ns.decode()] += 1
            if ns.decode() not in STANDARD_OP_NAMESPACES:
                custom.add(f"{ns.decode()}.{op.decode()}")
        classes.update(f"{a.decode()}.{b.decode()}" for a, b in _CLASS_REF.findall(text))
    return {
        "op_namespaces": dict(namespaces.most_common()),
        "custom_ops": sorted(custom),
        "custom_classes": sorted(classes),
    }


def _small(src: Source, name: str) -> str | None:
    if not _has_member(src, name):
        return None
    return src.read_member(name, 4096).decode("utf-8", "replace").strip()


def _constants(src: Source, prefix: str) -> list[str]:
    """The constants table as ``type[shape]`` strings (tensors) or value types."""
    name = prefix + "constants.pkl"
    if not _has_member(src, name):
        return []
    rec = read_pickle(
        src.read_member(name, pytorch.MAX_PICKLE_BYTES),
        path=f"{src.path}:{name}",
        max_ops=pytorch.MAX_OPS,
    )
    values = rec.value if isinstance(rec.value, tuple) else (rec.value,)
    out = []
    for v in values[:1000]:
        ref = torch_pickle.decode_tensor(v, name) if isinstance(v, Call) else None
        out.append(f"{ref.dtype}{list(ref.shape)}" if ref else type(v).__name__)
    return out


def _has_member(src: Source, name: str) -> bool:
    """Whether the archive has ``name`` (a dict lookup, not a set of every member name)."""
    try:
        src.zip().getinfo(name)
    except (KeyError, CorruptFile):  # CorruptFile: not a readable zip, like zip_names == []
        return False
    return True
