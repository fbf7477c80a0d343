"""The ``jaxcalc`` command line: ``run NAME``, ``list``, ``info``, ``predict``, ``recommend``, ``diagnose``.

``jaxcalc run NAME`` builds its options from the experiment's ``Config`` dataclass: a field
``batch_size: int`` becomes ``--batch-size N``, a ``bool`` field becomes ``--flag/--no-flag``.
Bad option values exit with code 2 and a one-line reason, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import time
import typing
from pathlib import Path

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def default_cache_dir() -> Path:
    env = os.environ.get("JAXCALC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxcalc" / "jax-compilation-cache"


def enable_compilation_cache(path: Path | str | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (min compile time 0, so CPU programs count)."""
    import jax

    path = Path(path) if path is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_tuple(elem_type):
    def parse(text: str):
        try:
            return tuple(elem_type(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {elem_type.__name__}s: {e}") from None

    parse.__name__ = f"comma-separated {elem_type.__name__}s"
    return parse


_SECTION = re.compile(r"^(Args|Arguments|Attributes|Returns|Raises|Yields|Examples?|Notes?|References?|See Also|"
                      r"Methods|Warnings?|Todo):\s*$")
_ENTRY = re.compile(r"^(?P<name>\w+)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")


def attribute_docs(cls) -> dict[str, str]:
    """The Google-style ``Attributes:`` section of ``cls``'s docstring as ``{name: text}``.

    Each entry is ``name: text`` (or ``name (type): text``) indented under ``Attributes:``;
    more-indented lines continue the entry and are joined with single spaces.

    >>> class C:
    ...     '''Settings.
    ...
    ...     Attributes:
    ...       lr: learning rate,
    ...         > 0.
    ...     '''
    >>> attribute_docs(C)
    {'lr': 'learning rate, > 0.'}
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    inside, entry_indent, current = False, None, None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not inside:
            inside = stripped == "Attributes:" and indent == 0
            continue
        if not stripped:
            continue
        if indent == 0 or _SECTION.match(stripped):  # the next section (or text) ends the block
            break
        if entry_indent is None:
            entry_indent = indent
        match = _ENTRY.match(stripped) if indent == entry_indent else None
        if match:
            current = match["name"]
            docs[current] = match["text"].strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {stripped}".strip()
    return docs


def _format_default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "empty"
    return str(value)


def option_help(config_cls) -> dict[str, str]:
    """Help text per ``Config`` field: the docstring's ``Attributes:`` entry, followed by its default."""
    docs = attribute_docs(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        text = docs.get(f.name, "").replace("``", "`")
        default = f.default if f.default is not dataclasses.MISSING else None
        if "default:" not in text:  # the docstring may say itself what the default means
            text = f"{text.rstrip('.')} (default: {_format_default(default)})".strip()
        out[f.name] = text.replace("%", "%%")  # argparse %-formats help strings
    return out


def _add_config_options(parser: argparse.ArgumentParser, config_cls) -> list[str]:
    """Add one option per dataclass field; return the field names exposed."""
    hints = typing.get_type_hints(config_cls)
    helps = option_help(config_cls)
    exposed = []
    for f in dataclasses.fields(config_cls):
        if f.name in ("seed", "quick") or f.name.startswith("_"):  # the CLI's own --seed / --quick
            continue
        tp, _optional = _unwrap_optional(hints[f.name])
        opt = "--" + f.name.replace("_", "-")
        help_ = helps[f.name]
        if tp is bool:
            parser.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif tp in (int, float, str):
            parser.add_argument(opt, dest=f.name, type=tp, default=None, metavar=tp.__name__.upper(), help=help_)
        elif typing.get_origin(tp) is tuple and typing.get_args(tp) and typing.get_args(tp)[0] in (int, float, str):
            parser.add_argument(opt, dest=f.name, type=_parse_tuple(typing.get_args(tp)[0]), default=None, help=help_)
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            parser.add_argument(opt, dest=f.name, choices=choices, default=None, help=help_)
        else:
            continue
        exposed.append(f.name)
    return exposed


def cmd_list(argv) -> int:
    import importlib

    from experiments import registry

    for name, modname in registry().items():
        try:
            doc = (importlib.import_module(modname).__doc__ or "").strip().splitlines()
        except Exception as e:  # a broken module must not hide the others
            doc = [f"(cannot import: {type(e).__name__}: {e})"]
        print(f"{name:22s} {doc[0] if doc else ''}")
    return 0


def cmd_info(argv) -> int:
    import flax
    import jax
    import jaxlib
    import optax

    import jaxcalc

    print(f"jaxcalc {jaxcalc.__version__}")
    print(f"python  {sys.version.split()[0]}")
    print(f"jax     {jax.__version__}")
    print(f"jaxlib  {jaxlib.__version__}")
    print(f"flax    {flax.__version__}")
    print(f"optax   {optax.__version__}")
    print(f"backend {jax.default_backend()}")
    print(f"processes {jax.process_count()} (this is process {jax.process_index()})")
    devices = jax.devices()
    print(f"devices {len(devices)}")
    for d in devices:
        print(f"  {d.id}: {d.platform} {getattr(d, 'device_kind', '')}")
    print(f"compilation cache {default_cache_dir()}")
    return 0


def build_run_parser(name: str, module) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of ``jaxcalc run NAME``: the CLI's own options, then one per ``Config`` field."""
    parser = _Parser(prog=f"jaxcalc run {name}", description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/NAME-<timestamp>/)")
    parser.add_argument("--seed", type=int, default=None, help="PRNG seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="small, fast settings (smoke run)")
    parser.add_argument("--no-cache", action="store_true", help="disable the persistent compilation cache")
    exposed = _add_config_options(parser, module.Config)
    return parser, exposed


def cmd_run(argv) -> int:
    from experiments import get, registry

    prog = "jaxcalc run"
    names = list(registry())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} NAME [options]\nexperiments: {', '.join(names)}\n"
              f"`{prog} NAME --help` lists NAME's options.")
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in names:
        return _fail(prog, f"unknown experiment {name!r}; valid names: {', '.join(names)}")
    module = get(name)
    parser, exposed = build_run_parser(name, module)
    args = parser.parse_args(rest)

    overrides = dict(getattr(module, "QUICK", {})) if args.quick else {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    defaults = dict(overrides)
    for field in exposed:
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    try:
        config = module.Config(**overrides)
    except (ValueError, TypeError) as e:
        return _fail(f"{prog} {name}", str(e).splitlines()[0])

    if not args.no_cache:
        enable_compilation_cache()
    out = args.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    import jax

    if jax.process_index() != 0:  # on several hosts only process 0 writes the run folder
        import tempfile

        out = Path(tempfile.mkdtemp(prefix=f"jaxcalc-p{jax.process_index()}-"))
    from experiments import all as run_all

    # Default settings (only --quick/--seed/--out given): announce the expected time, and remember this one.
    timed = name != "all" and config == module.Config(**defaults)
    warm = run_all.cache_is_warm()
    if timed:
        seconds, measured = run_all.estimate_seconds(name, args.quick, warm)
        print(f"{prog} {name}{' --quick' if args.quick else ''}: about {run_all.format_seconds(seconds)} "
              f"({'as earlier runs here' if measured else 'built-in estimate'}); writing {out}/",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        summary = module.run(config, out)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("JAXCALC_DEBUG"):
            raise
        return _fail(f"{prog} {name}", " ".join(str(e).split()))
    elapsed = time.perf_counter() - start
    if timed:
        run_all.record_seconds(name, args.quick, warm, elapsed)
    _print_summary(summary, name)
    print(f"wrote {out}/ in {elapsed:.1f} s")
    return 0


SUMMARY_MAX_LINES = 24
SUMMARY_WIDTH = 110


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _one_line(value) -> str:
    """A scalar as one short line: floats to 4 significant digits, a multi-line string's first line."""
    if value is None:
        return "none"
    if isinstance(value, str):
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        return (lines[0] + (" …" if len(lines) > 1 else "")) if lines else '""'
    from jaxcalc.report import fmt

    return fmt(value)  # bool yes/no, float to 4 significant digits


def summary_lines(summary: dict, *, width: int = SUMMARY_WIDTH, max_lines: int = SUMMARY_MAX_LINES) -> list[str]:
    """The console summary of a run: one line per figure, with a human label.

    Dicts of scalars fit on one line (``batch 6.2e-05, sgd 0.00028``), lists of up to 6 scalars too; longer
    lists of numbers are summarised (``10 values from 0.21 to 2.6``); nested dicts, lists of dicts and
    Markdown tables (printed during the run) are left to ``summary.json``. Lines are cut at ``width``.
    """
    from jaxcalc.report import label

    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            if not value or not all(_is_scalar(v) for v in value.values()):
                continue
            text = ", ".join(f"{k} {_one_line(v)}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            if not all(_is_scalar(v) for v in value):
                continue
            numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(value) <= 6:
                text = ", ".join(_one_line(v) for v in value) or "none"
            elif len(numbers) == len(value):
                text = f"{len(value)} values from {_one_line(float(min(numbers)))} to {_one_line(float(max(numbers)))}"
            else:
                text = ", ".join(_one_line(v) for v in value)  # cut at the line width below
        elif isinstance(value, str) and value.lstrip().startswith("|"):
            continue  # a Markdown table: printed while the experiment ran, kept in summary.json
        else:
            text = _one_line(value)
        line = f"  {label(key):34s} {text}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"  … and {len(lines) - max_lines} more figures in summary.json"]
    return lines


def _print_summary(summary: dict, name: str | None = None) -> None:
    if name is not None and name != "all":
        from experiments import all as run_all

        for title, text in run_all.section_headlines(name, summary):
            if text:
                print(f"{title}: {text}")
    for line in summary_lines(summary):
        print(line)


def _delegate(module_name: str, func: str):
    def cmd(argv) -> int:
        import importlib

        return getattr(importlib.import_module(module_name), func)(argv)

    return cmd


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "info": cmd_info,
    "predict": _delegate("experiments.cnn", "predict_command"),
    "recommend": _delegate("experiments.recommender", "recommend_command"),
    "diagnose": _delegate("jaxcalc.diagnosis.command", "main"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: jaxcalc {run NAME,list,info,predict,recommend,diagnose} ...\n\n"
              "  run NAME [--out DIR] [--seed N] [--quick]   run an experiment (`jaxcalc list` names them)\n"
              "  list                                        list the experiments\n"
              "  info                                        versions, backend and devices\n"
              "  predict --checkpoint DIR IMAGE...           classify images with a trained CNN\n"
              "  recommend --ratings PATH --user ID          top-N items for a user\n"
              "  diagnose FILE.py:FUNCTION                   where f or its gradient breaks (FUNCTION() -> (f, args))")
        return 0 if argv else EXIT_USAGE
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        return _fail("jaxcalc", f"unknown command {cmd!r}; valid commands: {', '.join(COMMANDS)}")
    if cmd in ("run", "info") and not any(a in ("-h", "--help") for a in rest):
        from jaxcalc import parallel

        try:  # several hosts: connect them before any other JAX call (a no-op on one host)
            parallel.initialize_distributed()
        except ValueError as e:
            return _fail("jaxcalc", str(e))
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
