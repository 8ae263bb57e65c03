"""Run keishiki commands and API calls one after another in this process, checking the
marker after each; write one JSON result per command.  Used by test_no_marker.py in a
subprocess per sample (so the ~0.5 s start-up and torch's import are paid once per sample).

argv: SPEC_JSON RESULT_PATH.  SPEC: {"marker": str, "commands": [[id, kind, arg...], ...]};
kind "cli" runs ``keishiki ARGS``; "inspect" / "llm" / "convert" call the Python API
(``convert`` takes OUT and TO).  Each command gets ``TIMEOUT`` seconds (SIGALRM) to catch
hangs.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import traceback
from pathlib import Path

TIMEOUT = 120


class Hang(BaseException):
    pass


def _alarm(*_):
    raise Hang()


def _one(kind: str, args: list[str]) -> dict:
    import keishiki
    from keishiki.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    res: dict = {"rc": None, "exc": None, "exc_msg": None, "keishiki_error": None}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if kind == "cli":
                res["rc"] = run(list(args))
            elif kind == "inspect":
                keishiki.inspect(args[0])
            elif kind == "llm":
                llm = keishiki.LLM(args[0])
                llm.generate(["hi"], keishiki.SamplingParams(max_tokens=1))
            elif kind == "convert":
                keishiki.convert(args[0], args[1], to=args[2])
            else:
                raise ValueError(kind)
    except Hang:
        res["exc"] = "Hang"
    except SystemExit as exc:
        res["rc"] = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - what escaped is the result
        res["exc"] = type(exc).__name__
        res["exc_msg"] = str(exc)
        res["keishiki_error"] = isinstance(exc, keishiki.KeishikiError)
        res["traceback"] = traceback.format_exc()
    finally:
        signal.alarm(0)
    res["stdout"], res["stderr"] = out.getvalue(), err.getvalue()
    return res


def main() -> int:
    spec = json.loads(sys.argv[1])
    marker = Path(spec["marker"])
    results = {}
    for cid, kind, *args in spec["commands"]:
        res = _one(kind, args)
        res["marker"] = marker.exists()
        if res["marker"]:
            marker.unlink()
        results[cid] = res
        Path(sys.argv[2]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
