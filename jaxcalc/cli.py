"""The ``jaxcalc`` command line: ``run NAME``, ``list``, ``info``, ``predict``, ``recommend``, ``diagnose``.

``jaxcalc run NAME`` builds its options from the experiment's ``Config`` dataclass: a field
``batch_size: int`` becomes ``--batch-size N``, a ``bool`` field becomes ``--flag/--no-flag``.
Bad option values exit with code 2 and a one-line reason, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
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


def _add_config_options(parser: argparse.ArgumentParser, config_cls) -> list[str]:
    """Add one option per dataclass field; return the field names exposed."""
    hints = typing.get_type_hints(config_cls)
    exposed = []
    for f in dataclasses.fields(config_cls):
        if f.name in ("seed", "quick") or f.name.startswith("_"):  # the CLI's own --seed / --quick
            continue
        tp, _optional = _unwrap_optional(hints[f.name])
        opt = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") if f.metadata else ""
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{help_} (default: {default})".strip()
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
    parser = _Parser(prog=f"{prog} {name}", description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/NAME-<timestamp>/)")
    parser.add_argument("--seed", type=int, default=None, help="PRNG seed")
    parser.add_argument("--quick", action="store_true", help="small, fast settings (smoke run)")
    parser.add_argument("--no-cache", action="store_true", help="disable the persistent compilation cache")
    exposed = _add_config_options(parser, module.Config)
    args = parser.parse_args(rest)

    overrides = dict(getattr(module, "QUICK", {})) if args.quick else {}
    if args.seed is not None:
        overrides["seed"] = args.seed
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
    start = time.perf_counter()
    try:
        summary = module.run(config, out)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("JAXCALC_DEBUG"):
            raise
        return _fail(f"{prog} {name}", " ".join(str(e).split()))
    elapsed = time.perf_counter() - start
    _print_summary(summary)
    print(f"wrote {out}/ in {elapsed:.1f} s")
    return 0


def _print_summary(summary: dict) -> None:
    for k, v in summary.items():
        if k == "plots" or isinstance(v, (dict, list)):
            continue
        if isinstance(v, float):
            v = f"{v:.6g}"
        print(f"  {k:34s} {v}")


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
