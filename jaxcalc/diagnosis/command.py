"""``jaxcalc diagnose FILE.py:FUNCTION``: the diagnosis from the shell.

``FUNCTION`` is a module-level function of ``FILE.py`` that takes no arguments and returns ``(f, args)``
(``args`` a tuple of ``f``'s positional arguments). The report is printed; the exit code is 0 when the
diagnosis is clean, 1 when it has findings, 2 on a usage error (bad spec, file, function or return value).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from jaxcalc.cli import _fail, _Parser  # the CLI's one-line usage errors, exit 2

PROG = "jaxcalc diagnose"
EXIT_FINDINGS = 1


def _load(spec: str):
    """``FILE.py:FUNCTION`` -> ``(f, args)`` from calling FUNCTION(); ValueError with a one-line reason."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"expected FILE.py:FUNCTION, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no such file: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_jaxcalc_diagnose_{file.stem}", file)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(file.resolve().parent))  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{path} has no module-level function {name!r}")
    out = fn()
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[0])):
        raise ValueError(f"{name}() must return (f, args) with f callable and args a tuple of f's arguments, "
                         f"got {type(out).__name__}")
    f, args = out
    return f, tuple(args) if isinstance(args, (tuple, list)) else (args,)


def main(argv=None) -> int:
    parser = _Parser(prog=PROG, description="Where a loss or its gradient breaks: NaN origins, the where-trap, wrong "
                                            "custom_jvp/custom_vjp rules, float32 precision loss, each at its line.")
    parser.add_argument("spec", metavar="FILE.py:FUNCTION",
                        help="a module-level function that takes no arguments and returns (f, args)")
    parser.add_argument("--argnums", type=lambda t: tuple(int(v) for v in t.split(",") if v.strip()), default=(0,),
                        help="comma-separated positions of the arguments to differentiate (default: 0)")
    parser.add_argument("--threshold-bits", type=float, default=None,
                        help="local error in bits above which an equation is reported (default: 10)")
    parser.add_argument("--local-errors", choices=("auto", "always", "never"), default="auto",
                        help="measure every equation's local error: auto (when f or its gradient lost digits), "
                             "always, never")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        f, f_args = _load(args.spec)
    except Exception as e:
        return _fail(PROG, " ".join(str(e).split()) or type(e).__name__)

    from jaxcalc.diagnosis import DEFAULT_THRESHOLD_BITS, diagnose

    try:
        report = diagnose(f, *f_args, argnums=args.argnums if len(args.argnums) != 1 else args.argnums[0],
                          threshold_bits=args.threshold_bits or DEFAULT_THRESHOLD_BITS, local_errors=args.local_errors)
    except (TypeError, ValueError) as e:
        return _fail(PROG, " ".join(str(e).split()))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return EXIT_FINDINGS if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
