"""One exception hierarchy for everything keishiki can refuse.

The CLI turns every :class:`KeishikiError` into one line on stderr and the error's
``exit_code``; ``KEISHIKI_DEBUG=1`` shows the traceback as well.  Exit codes mean:
0 = done / nothing unsafe, 1 = a finding (unsafe file, verification mismatch),
2 = could not do it (bad input, missing dependency, impossible request).

As huggingface_hub's errors do, each class also derives from the builtin a Python caller
would catch without knowing keishiki: a path that does not exist is a
:class:`FileNotFoundError` (:class:`PathNotFound`), impossible arguments a
:class:`ValueError` (:class:`InvalidRequest`, :class:`NoConversionPath`), a missing optional
library an :class:`ImportError` (:class:`MissingDependency`), a Hub failure an
:class:`OSError` (as transformers' ``from_pretrained`` raises), a backend that cannot run here
a :class:`RuntimeError`.  A file's broken bytes (:class:`CorruptFile`) or unknown format are
plain exceptions, as :class:`zipfile.BadZipFile` and :class:`pickle.UnpicklingError` are:
keishiki's format readers catch the ValueError of the parsers they call, and must not catch
their own verdict.

Messages name the Python parameter (``force=True``, ``dtype='float8'``), not a command-line
flag: the CLI rewrites those names into its flags (``--force``) in its one error table.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any


class KeishikiError(Exception):
    """Base class of every error keishiki raises on purpose."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PathNotFound(KeishikiError, FileNotFoundError):
    """The model path (or another path an argument names) does not exist."""

    def __init__(self, path: str | Path, message: str | None = None):
        self.path = str(path)
        super().__init__(message or f"{self.path}: no such file or folder")
        # as open() fills them (``filename`` is what a caller of FileNotFoundError reads);
        # set after __init__: OSError's own (message) form leaves them None
        self.errno = errno.ENOENT
        self.filename = self.path


class UnknownFormat(KeishikiError):
    """No format sniffer recognised the file or folder."""

    def __init__(self, path: str | Path, looked_for: str = ""):
        self.path = str(path)
        tail = f" (looked for: {looked_for})" if looked_for else ""
        super().__init__(f"{self.path}: not a model file keishiki recognises{tail}")


class CorruptFile(KeishikiError):
    """The file claims a format but its bytes break that format's rules."""

    def __init__(self, path: str | Path, reason: str, offset: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.path}: corrupt or truncated{where}: {reason}")


class UnsafeFile(KeishikiError):
    """The file would run code when loaded, and the caller did not pass ``trust``."""

    exit_code = 1

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: unsafe: {reason}")


class MissingDependency(KeishikiError, ImportError):
    """An optional library is needed for this operation and is not installed."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        self.package = package
        self.extra = extra  # a keishiki extra, or the install line itself ("pip install ...")
        why = f" to {purpose}" if purpose else ""
        install = extra if extra.startswith("pip install") else f"pip install 'keishiki[{extra}]'"
        super().__init__(f"{package} is needed{why} but is not installed: {install}")
        self.name = package  # ImportError's attribute: the module that could not be imported


class NoConversionPath(KeishikiError, ValueError):
    """The conversion graph has no path from the source format to the target."""


class RuntimeUnavailable(KeishikiError, RuntimeError):
    """A generation backend cannot run here (no GPU, no vllm, unsupported model)."""


class InvalidRequest(KeishikiError, ValueError):
    """The arguments are impossible or unsafe: an existing output without force=True,
    top_p=0, ..."""


class Mismatch(KeishikiError):
    """Verification found the converted model differs from the source beyond tolerance."""

    exit_code = 1

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report or {}


class HubError(KeishikiError, OSError):
    """The Hugging Face Hub refused or could not answer: repository or revision not found,
    gated, offline and not cached, unreachable (``keishiki pull``, ``info hf://...``)."""
