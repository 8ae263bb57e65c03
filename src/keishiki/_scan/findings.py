"""What a scan found: one :class:`Finding` per global, archive member or reference worth naming,
aggregated into a verdict per file (:class:`FileReport`) and overall (:class:`ScanReport`).

Severities, from worst: ``dangerous`` (a known code-execution or file-system gadget),
``unknown`` (not on the allowlist of what legitimate checkpoints reference: loading it needs
code the file does not carry and a loader that trusts it), ``safe`` (on the allowlist).
``error`` is not a severity of a finding's subject but of the scan itself: the bytes could
not be read to the end, so what follows the break was not seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.display import MAX_ROWS, Shown, View, short_repr

SEVERITIES = ("safe", "unknown", "dangerous")
_RANK = {"safe": 0, "unknown": 1, "dangerous": 2}
_FINDING_COLUMNS = ("severity", "global", "where", "reason")
_VERDICT_ORDER = ("dangerous", "unknown", "error", "safe")


def worst(severities: Iterable[str]) -> str:
    """The most severe of ``severities`` ("safe" for none)."""
    best = "safe"
    for sev in severities:
        if _RANK.get(sev, 0) > _RANK[best]:
            best = sev
    return best


@dataclass
class Finding:
    """One thing the scanner names.

    Attributes:
        file: the file on disk.
        member: the archive member ("" for the file itself); nested archives join with ``!``
            (``outer.zip!inner.zip!data.pkl``).
        offset: byte offset of the opcode in the pickle stream (or in the file), None if n/a.
        opcode: the pickle opcode (GLOBAL, STACK_GLOBAL, INST, EXT1, REDUCE, BUILD...) or the
            kind of check (``zip-member``, ``onnx-external-data``, ``keras-lambda``...).
        global_: ``module.name`` the opcode references, "" when not a global.
        severity: ``dangerous`` / ``unknown`` / ``safe``.
        reason: one sentence saying why.
    """

    file: str
    member: str
    offset: int | None
    opcode: str
    global_: str
    severity: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "member": self.member,
            "offset": self.offset,
            "opcode": self.opcode,
            "global": self.global_,
            "severity": self.severity,
            "reason": self.reason,
        }

    @property
    def where(self) -> str:
        """``file!member@offset`` for one-line messages."""
        text = self.file + (f"!{self.member}" if self.member else "")
        return text + (f"@{self.offset}" if self.offset is not None else "")


def _counts(findings: Iterable[Finding]) -> dict[str, int]:
    """{severity: number of findings}, dangerous first."""
    found = [f.severity for f in findings]
    return {s: found.count(s) for s in reversed(SEVERITIES)}


def _findings_view(title: str, fields: list[tuple[str, str]], findings: Sequence[Finding]) -> View:
    """The View of a scan: its fields, then the findings that are not safe, worst first."""
    shown = sorted(
        (f for f in findings if f.severity != "safe"), key=lambda f: -_RANK.get(f.severity, 0)
    )
    rows = [(f.severity, f.global_ or f.opcode, f.where, f.reason) for f in shown[:MAX_ROWS]]
    return View(title, fields, _FINDING_COLUMNS if shown else (), rows, len(shown))


@dataclass
class FileReport(Shown):
    """The scan of one file: its findings, errors, and what was looked at."""

    path: str
    kind: str = ""  # what the file was scanned as: pickle, zip, torch-legacy, onnx...
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scanned: list[str] = field(default_factory=list)  # pickle streams / members read
    skipped: str = ""  # why the file was not scanned (not a model file)

    @property
    def verdict(self) -> str:
        """``dangerous`` / ``unknown`` over errors over ``safe``: an error alone is ``error``."""
        sev = worst(f.severity for f in self.findings)
        if sev != "safe":
            return sev
        return "error" if self.errors else "safe"

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def to_dict(self, include_safe: bool = True) -> dict[str, Any]:
        findings = [f.to_dict() for f in self.findings if include_safe or f.severity != "safe"]
        return {
            "path": self.path,
            "kind": self.kind,
            "verdict": self.verdict,
            "findings": findings,
            "errors": list(self.errors),
            "scanned": list(self.scanned),
            "skipped": self.skipped or None,
        }

    def __repr__(self) -> str:
        fields: list[tuple[str, object]] = [("path", self.path), ("verdict", self.verdict)]
        if self.kind:
            fields.append(("kind", self.kind))
        fields += list(_counts(self.findings).items())
        if self.errors:
            fields.append(("errors", len(self.errors)))
        if self.skipped:
            fields.append(("skipped", self.skipped))
        return short_repr("FileReport", fields)

    def _view(self) -> View:
        fields = [("verdict", self.verdict)]
        if self.kind:
            fields.append(("scanned as", self.kind))
        fields += [(s, str(n)) for s, n in _counts(self.findings).items() if n]
        fields += [("error", e) for e in self.errors]
        if self.skipped:
            fields.append(("skipped", self.skipped))
        return _findings_view(f"FileReport {self.path}", fields, self.findings)


@dataclass
class ScanReport(Shown):
    """The scan of one or more paths."""

    files: list[FileReport] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for fr in self.files for f in fr.findings]

    @property
    def verdict(self) -> str:
        """Worst verdict over the files: dangerous > unknown > error > safe."""
        verdicts = {fr.verdict for fr in self.files}
        for v in ("dangerous", "unknown", "error"):
            if v in verdicts:
                return v
        return "safe"

    def exit_code(self, allow_unknown: bool = False) -> int:
        """0 nothing unsafe, 1 dangerous (or unknown unless ``allow_unknown``), 2 could not
        scan (an error and nothing unsafe found: what lay beyond the break is unseen)."""
        verdicts = {fr.verdict for fr in self.files}
        if "dangerous" in verdicts or ("unknown" in verdicts and not allow_unknown):
            return 1
        if "error" in verdicts:
            return 2
        return 0

    def globals_by_severity(self, severity: str) -> list[str]:
        """Sorted distinct ``module.name`` (or check kind) of the findings of one severity."""
        return sorted({f.global_ or f.opcode for f in self.findings if f.severity == severity})

    def to_dict(self, include_safe: bool = True) -> dict[str, Any]:
        counts = {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}
        return {
            "verdict": self.verdict,
            "counts": counts,
            "files": [fr.to_dict(include_safe) for fr in self.files],
        }

    def __repr__(self) -> str:
        fields: list[tuple[str, object]] = [("verdict", self.verdict), ("files", len(self.files))]
        fields += list(_counts(self.findings).items())
        errors = sum(len(fr.errors) for fr in self.files)
        if errors:
            fields.append(("errors", errors))
        return short_repr("ScanReport", fields)

    def _view(self) -> View:
        fields = [("verdict", self.verdict), ("files", str(len(self.files)))]
        fields += [(s, str(n)) for s, n in _counts(self.findings).items() if n]
        if len(self.files) > 1:  # each file's verdict, worst first
            ranked = sorted(self.files, key=lambda fr: _VERDICT_ORDER.index(fr.verdict))
            fields += [(fr.verdict, fr.path) for fr in ranked[:MAX_ROWS]]
        fields += [("error", e) for fr in self.files for e in fr.errors]
        return _findings_view("ScanReport", fields, self.findings)
