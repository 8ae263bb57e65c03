"""Resolve every call in one TorchScript code file against the allowlist.

The judge for :mod:`.torchscript`: ``torch.X``/``ops.ns.X`` against
``data/torchscript_allowlist.json`` (what real exports call), ``__torch__.*`` against what
the archive itself defines (:class:`Index`), bare names against TorchScript's builtins, and
names that reach files, code loaders or dunders against fixed deny sets that no allowlist
entry overrides.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from dataclasses import dataclass, field

Judgement = tuple[str, str, str]  # (severity, subject, reason)

# ---- the allowlist and what is never allowed ----------------------------------------------

# names that read or write files or load more code, wherever they appear in a torch/ops
# chain or as a method: torch.from_file/aten::from_file, torch.save/load, torch.jit.load,
# torch.ops.load_library, the lite interpreter's loader
_IO_NAMES = frozenset(
    {
        "from_file",
        "save",
        "load",
        "_load_for_mobile",
        "load_library",
        "_load",
        "_save",
        "import_module",
    }
)
# first attribute under torch. that leaves the op namespace: native internals, hubs,
# packages, storages and serialization all reach files or code
_IO_TORCH = _IO_NAMES | {
    "_C",
    "hub",
    "package",
    "storage",
    "serialization",
    "utils",
    "multiprocessing",
    "distributed",
    "_dynamo",
    "_inductor",
}
# Python builtins that evaluate code or touch files; TorchScript has none of them
_BAD_BUILTINS = frozenset(
    {
        "__import__",
        "eval",
        "exec",
        "open",
        "compile",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "setattr",
        "delattr",
        "__builtins__",
        "__loader__",
        "__spec__",
        "help",
        "exit",
        "quit",
        "memoryview",
    }
)
_BAD_MODULES = frozenset(
    {
        "os",
        "sys",
        "subprocess",
        "builtins",
        "importlib",
        "socket",
        "shutil",
        "pickle",
        "marshal",
        "ctypes",
        "io",
        "pathlib",
        "posix",
        "nt",
        "runpy",
        "code",
        "codeop",
        "pty",
        "urllib",
        "http",
        "requests",
        "signal",
    }
)
_ROOTS = frozenset({"torch", "ops", "__torch__", "CONSTANTS"})
_CONSTANT = re.compile(r"c\d+")


@functools.lru_cache(maxsize=1)
def allowlist() -> dict[str, frozenset[str]]:
    """``data/torchscript_allowlist.json`` as one frozenset per section (see its ``_about``)."""
    from importlib import resources  # noqa: PLC0415

    raw = json.loads(
        resources.files("keishiki")
        .joinpath("data/torchscript_allowlist.json")
        .read_text(encoding="utf-8")
    )
    return {k: frozenset(v) for k, v in raw.items() if isinstance(v, list)}


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` → ``["a", "b", "c"]`` (None when the base is not a plain name)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


@dataclass
class Index:
    """What an archive's code defines: ``__torch__`` classes (with their members) and
    functions, keyed by (module lower-cased, as torch's reader finds the file, name)."""

    classes: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    functions: set[tuple[str, str]] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, modules: list[tuple[str, ast.Module]]) -> Index:
        """Index the top-level ``class``/``def`` of each ``(module, tree)``."""
        index = cls()
        for module, tree in modules:
            key = module.lower()
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    index.functions.add((key, node.name))
                elif isinstance(node, ast.ClassDef):
                    members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                    index.methods |= members
                    members |= {t.id for n in node.body for t in _targets(n)}
                    index.classes[(key, node.name)] = frozenset(members)
        return index

    def lookup(self, parts: list[str]) -> tuple[str, int, frozenset[str]] | None:
        """The longest prefix of ``__torch__.<parts>`` the archive defines:
        ``(kind, n_parts_used, class members)``."""
        full = ["__torch__", *parts]
        for k in range(len(full), 1, -1):
            key = (".".join(full[: k - 1]).lower(), full[k - 1])
            if key in self.classes:
                return "class", k - 1, self.classes[key]
            if key in self.functions:
                return "function", k - 1, frozenset()
        return None


def _targets(node: ast.AST) -> list[ast.Name]:
    if isinstance(node, ast.Assign):
        return [t for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target]
    return []


def _inert(stmt: ast.stmt) -> bool:
    """A docstring or ``name = <constant>`` (old archives' ``op_version_set = 1``)."""
    value = getattr(stmt, "value", None)
    return isinstance(value, ast.Constant) and (isinstance(stmt, ast.Expr) or bool(_targets(stmt)))


def _locals(fn: ast.FunctionDef) -> frozenset[str]:
    a = fn.args
    names = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
    return frozenset(names)


def judge_tree(member: str, tree: ast.Module, index: Index) -> list[Judgement]:
    """Every call and name reference in one parsed code file that is not allowlisted."""
    judge = _Judge(member, index)
    try:
        judge.module(tree)
    except RecursionError:
        judge.flag("dangerous", "unparseable-code", "expressions nested too deep to judge")
    return list(judge.found.values())


class _Judge(ast.NodeVisitor):
    """Walks one file; :meth:`flag` records what is off the allowlist, once per subject."""

    def __init__(self, member: str, index: Index):
        self.member, self.index, self.allow = member, index, allowlist()
        self.found: dict[tuple[str, str], Judgement] = {}
        self.locals: frozenset[str] = frozenset()
        self.where = "module level"
        self.setstate = False

    def flag(self, severity: str, subject: str, why: str) -> None:
        if self.setstate and severity == "unknown":
            # __setstate__ runs inside torch.jit.load itself, before anyone calls the model
            severity, why = "dangerous", why + "; in __setstate__, which runs while loading"
        self.found.setdefault(
            (severity, subject), (severity, subject, f"{self.member} ({self.where}): {why}")
        )

    # -- structure: module → classes → functions ------------------------------------------
    def module(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            self.where, self.locals = "module level", frozenset()
            if isinstance(stmt, ast.ClassDef):
                self.class_(stmt)
            elif isinstance(stmt, ast.FunctionDef):
                self.function(stmt, "")
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for alias in stmt.names:
                    name = getattr(stmt, "module", None) or alias.name
                    if not name.startswith("__torch__"):
                        self.flag("dangerous", f"import {name}", "imports a module: loads code")
            elif not _inert(stmt):
                self.flag(
                    "unknown",
                    type(stmt).__name__.lower(),
                    "a module-level statement TorchScript's serializer never writes",
                )
                self.visit(stmt)

    def class_(self, node: ast.ClassDef) -> None:
        self.where = node.name
        for base in node.bases:
            chain = _chain(base)
            if isinstance(base, ast.Name) and base.id in self.allow["class_bases"]:
                continue
            if chain and chain[0] == "__torch__":
                self.reference(chain)
            else:
                self.flag("unknown", ast.unparse(base)[:80], "class base is not a TorchScript type")
        for extra in (*node.keywords, *node.decorator_list):
            self.flag("unknown", ast.unparse(extra)[:80], "class decorator or keyword")
            self.visit(extra)
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                self.function(stmt, node.name + ".")
            else:
                self.where, self.locals = node.name, frozenset()
                self.visit(stmt)

    def function(self, node: ast.FunctionDef, owner: str) -> None:
        self.where, self.locals = owner + node.name, _locals(node)
        self.setstate = node.name == "__setstate__"
        shadow = self.locals & _ROOTS
        for name in sorted(shadow):
            self.flag("unknown", name, f"a local variable shadows the global {name}")
        for deco in node.decorator_list:
            self.flag("unknown", ast.unparse(deco)[:80], "function decorator")
            self.visit(deco)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        for stmt in node.body:
            self.visit(stmt)
        self.setstate = False

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # nested: not TorchScript
        self.flag("unknown", node.name, "nested function definition")
        self.generic_visit(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.flag("unknown", "lambda", "lambda expression (TorchScript has none)")
        self.generic_visit(node)

    # -- expressions ------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        chain = _chain(func)
        if isinstance(func, ast.Name):
            self.call_name(func.id, node)
        elif chain and chain[0] not in self.locals:
            self.reference(chain)
        elif isinstance(func, ast.Attribute):
            self.method(func.attr)
            self.visit(func.value)
        else:
            self.visit(func)
        if not (isinstance(func, ast.Name) and func.id in ("getattr", "hasattr")):
            for arg in node.args:
                self.visit(arg)
        for kw in node.keywords:
            self.visit(kw.value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain and chain[0] not in self.locals:
            self.reference(chain)
        elif chain:  # self.weight, _packed_params.dtype: data of a local object
            for attr in chain[1:]:
                self.attribute(attr)
        else:
            self.attribute(node.attr)
            self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.locals:
            return
        if name in _BAD_BUILTINS or name in _BAD_MODULES:
            self.flag("dangerous", name, f"refers to {name}, which runs code or opens files")
        elif name in _ROOTS:  # t = ops; t.mylib.op(x) would read as a method call
            self.flag(
                "unknown",
                name,
                f"uses the namespace {name} as a value: what is "
                "reached through the alias cannot be read",
            )
        elif _dunder(name) and name not in self.allow["dunder_names"]:
            self.flag("dangerous", name, f"refers to the dunder name {name}")

    # -- judging names ----------------------------------------------------------------------
    def call_name(self, name: str, node: ast.Call) -> None:
        if name in self.locals:
            return  # a value computed above: its source was judged where it was made
        if name in ("getattr", "hasattr"):
            self.getattr_call(name, node)
        elif name in _BAD_BUILTINS or name in _BAD_MODULES:
            self.flag("dangerous", name, f"calls {name}, which runs code or opens files")
        elif name not in self.allow["builtins"]:
            self.flag(
                "unknown",
                name,
                f"calls {name}, not a TorchScript builtin on the allowlist nor a local value",
            )

    def getattr_call(self, name: str, node: ast.Call) -> None:
        args = node.args
        if len(args) < 2 or not (
            isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)
        ):
            self.flag(
                "dangerous",
                f"{name}(<computed>)",
                f"{name} with a computed attribute name: what it reaches cannot be read",
            )
            for arg in args:
                self.visit(arg)
            return
        attr, chain = args[1].value, _chain(args[0])
        if chain and chain[0] not in self.locals:
            self.reference([*chain, attr])
        else:
            self.attribute(attr)
            self.visit(args[0])
        for arg in args[2:]:
            self.visit(arg)

    def attribute(self, attr: str) -> bool:
        """Data attribute of a value: dunders and file/code names are dangerous."""
        if attr in _IO_NAMES:
            self.flag("dangerous", attr, f"reaches .{attr}, which reads or writes files")
        elif _dunder(attr) and attr not in self.allow["dunder_methods"]:
            self.flag(
                "dangerous",
                attr,
                f"reaches the dunder attribute .{attr} (class, "
                "globals, subclasses: the way out of any sandbox)",
            )
        else:
            return True
        return False

    def method(self, name: str) -> None:
        """A method called on a value: one the archive defines, or an op on the allowlist."""
        if not self.attribute(name) or _dunder(name):
            return
        if (
            name in self.index.methods
            or name in self.allow["aten"]
            or name in self.allow["methods"]
        ):
            return
        self.flag(
            "unknown",
            f".{name}",
            f"calls method {name}, neither defined by the "
            "archive's code nor an op on the allowlist",
        )

    def reference(self, chain: list[str]) -> None:
        """A dotted name from a global: ``torch.*``, ``ops.*``, ``__torch__.*``, ``CONSTANTS``."""
        root, parts = chain[0], chain[1:]
        subject = ".".join(chain)
        if root == "torch":
            self.torch_ref(parts)
        elif root == "ops":
            self.ops_ref(parts)
        elif root == "__torch__":
            self.class_ref(parts)
        elif root == "CONSTANTS":
            if len(parts) != 1 or not _CONSTANT.fullmatch(parts[0]):
                self.flag("unknown", subject, "not a constant of the archive's constants.pkl")
        elif root in _BAD_BUILTINS or root in _BAD_MODULES:
            self.flag("dangerous", subject, f"reaches {root}, which runs code or opens files")
        else:
            self.flag("unknown", subject, f"{root} is neither local nor a TorchScript module")

    def _io_or_dunder(self, subject: str, parts: list[str], ops_ok: frozenset[str]) -> bool:
        if any(p in _IO_NAMES for p in parts) or (parts and parts[0] in _IO_TORCH):
            self.flag(
                "dangerous",
                subject,
                "reads or writes files, or loads native or Python "
                "code (file I/O and loaders are never allowlisted)",
            )
        elif any(_dunder(p) and p not in ops_ok for p in parts):
            self.flag("dangerous", subject, "reaches a dunder attribute")
        else:
            return False
        return True

    def torch_ref(self, parts: list[str]) -> None:
        subject = ".".join(["torch", *parts])
        if not parts or self._io_or_dunder(subject, parts, self.allow["aten"]):
            return
        if parts[0] == "classes":
            self.custom_class(parts[1:], subject)
        elif parts[0] == "ops":
            self.ops_ref(parts[1:])
        elif len(parts) > 1 or parts[0] not in self.allow["aten"]:
            self.flag(
                "unknown",
                subject,
                f"{subject} is not on the allowlist of ops that real TorchScript exports call",
            )

    def ops_ref(self, parts: list[str]) -> None:
        subject = ".".join(["torch.ops", *parts])
        if self._io_or_dunder(subject, parts, self.allow["aten"] | self.allow["ops"]):
            return
        if len(parts) < 2 or len(parts) > 3:
            self.flag("unknown", subject, "not an op (torch.ops.<namespace>.<op>[.overload])")
            return
        ns, op = parts[0], parts[1]
        if (ns == "aten" and op in self.allow["aten"]) or f"{ns}.{op}" in self.allow["ops"]:
            return
        if ns in ("aten", "prim", "quantized", "_quantized"):
            self.flag(
                "unknown",
                subject,
                f"{ns}::{op} is not on the allowlist of ops that real TorchScript exports call",
            )
        else:
            self.flag("unknown", subject, f"custom op {ns}::{op}: needs a native extension library")

    def class_ref(self, parts: list[str]) -> None:
        subject = ".".join(["__torch__", *parts])
        if parts[:2] == ["torch", "classes"]:
            self.custom_class(parts[2:], subject)
            return
        found = self.index.lookup(parts)
        if found is None:
            if not self._io_or_dunder(subject, parts, frozenset()):
                self.flag("unknown", subject, "not defined by the archive's code")
            return
        kind, used, members = found
        rest = parts[used:]
        if not rest or (
            kind == "class" and len(rest) == 1 and (rest[0] == "__new__" or rest[0] in members)
        ):
            return
        if not self._io_or_dunder(subject, rest, frozenset()):
            self.flag("unknown", subject, "not a member the archive's code defines")

    def custom_class(self, parts: list[str], subject: str) -> None:
        """``<prefix>.<ns>.<Class>[.__new__|.method]``: built-in classes (quantized packed
        params) are allowlisted; any other needs a native library."""
        cls, rest = parts[:2], parts[2:]
        named = subject.rsplit(".", len(rest))[0] if rest else subject
        if self._io_or_dunder(subject, parts, self.allow["dunder_methods"]):
            return
        if len(cls) == 2 and ".".join(cls) in self.allow["custom_classes"]:
            return
        self.flag(
            "unknown",
            named,
            "custom TorchScript class: native code from a library that must be loaded first",
        )
