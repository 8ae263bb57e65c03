"""One exception hierarchy for everything keishiki can refuse.

The CLI turns every :class:`KeishikiError` into one line on stderr and the error's
``exit_code``; ``KEISHIKI_DEBUG=1`` shows the traceback as well.  Exit codes mean:
0 = done / nothing unsafe, 1 = a finding (unsafe file, verification mismatch),
2 = could not do it (bad input, missing dependency, impossible request).
"""

from __future__ import annotations

from pathlib import Path


class KeishikiError(Exception):
    """Base class of every error keishiki raises on purpose."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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


class MissingDependency(KeishikiError):
    """An optional library is needed for this operation and is not installed."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        self.package = package
        self.extra = extra
        why = f" to {purpose}" if purpose else ""
        super().__init__(
            f"{package} is needed{why} but is not installed: pip install 'keishiki[{extra}]'"
        )


class NoConversionPath(KeishikiError):
    """The conversion graph has no path from the source format to the target."""


class RuntimeUnavailable(KeishikiError):
    """A generation backend cannot run here (no GPU, no vllm, unsupported model)."""


class InvalidRequest(KeishikiError):
    """The arguments are impossible or unsafe: an existing output without force, top_p=0, ..."""


class Mismatch(KeishikiError):
    """Verification found the converted model differs from the source beyond tolerance."""

    exit_code = 1

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


class HubError(KeishikiError):
    """The Hugging Face Hub refused or could not answer: repository or revision not found,
    gated, offline and not cached, unreachable (``keishiki pull``, ``info hf://...``)."""
