"""Command-line flags derived from the config dataclasses: a new field is a new flag.

Every field `f` of group `g` is accepted as `--f` and as `--g.f` (underscores may be written
as dashes). Values are parsed by the field's type: int, float, str, bool (true/false),
optional (none), tuple of ints (comma-separated, e.g. `--hidden 500,250,500`; an empty
element, as in `500,,2`, is an error rather than dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import typing

from autorec_jax import config as config_lib
from autorec_jax.run import preflight, runtime
from autorec_jax.errors import ConfigError


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_str(text: str) -> str:
    """Plain text; `tab`, `\\t` and `space` name the separators hard to type in a shell."""
    return {"tab": "\t", "\\t": "\t", "space": " "}.get(text, text)


def _parse_tuple(text: str, parse, expected: str) -> tuple:
    """Comma-separated values; an empty element is refused, not silently dropped."""
    parts = [x.strip() for x in text.split(",")]
    if "" in parts:
        # argparse prefixes the flag's names, so the message names the field.
        raise argparse.ArgumentTypeError(
            f"empty element in {text!r}; give comma-separated {expected}")
    return tuple(parse(x) for x in parts)


def _value_parser(annotation: str):
    """A text -> value parser for a field annotation such as 'int | None'."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    parsers = {"int": int, "float": float, "str": _parse_str, "bool": _parse_bool,
               "tuple[int, ...]": lambda t: _parse_tuple(t, int, "integers, e.g. 500,250,500"),
               "tuple[float, ...]": lambda t: _parse_tuple(t, float, "numbers, e.g. 1,5")}
    if base not in parsers:
        raise TypeError(f"no flag parser for annotation {annotation!r}")
    parse = parsers[base]

    def parse_value(text: str):
        if optional and text.lower() == "none":
            return None
        return parse(text)

    parse_value.__name__ = base  # argparse names the type in its error messages
    return parse_value


# Short names for fields whose own is less natural on a command line.
FLAG_ALIASES = {"network": ["--model"]}


def _fields():
    """(group or None, field) for every config field, groups first."""
    for group in config_lib.GROUPS:
        cls = typing.get_type_hints(config_lib.Config)[group]
        for field in dataclasses.fields(cls):
            yield group, field
    for field in dataclasses.fields(config_lib.Config):
        if field.name not in config_lib.GROUPS:
            yield None, field


def add_config_flags(parser: argparse.ArgumentParser, groups=None) -> None:
    """Adds one flag per config field (of `groups` only, when given, plus `seed`)."""
    defaults = config_lib.Config()
    for group, field in _fields():
        if groups is not None and group is not None and group not in groups:
            continue
        default = getattr(getattr(defaults, group), field.name) if group else getattr(
            defaults, field.name)
        dashed = field.name.replace("_", "-")
        names = [f"--{dashed}"] + ([f"--{group}.{dashed}"] if group else [])
        names += FLAG_ALIASES.get(field.name, [])
        if dashed != field.name:
            names += [f"--{field.name}"] + ([f"--{group}.{field.name}"] if group else [])
        parser.add_argument(*names, dest=f"override:{group or ''}.{field.name}",
                            type=_value_parser(field.type), default=argparse.SUPPRESS,
                            metavar=field.type.replace(" ", ""),
                            help=f"(default: {default})")


def config_from_args(args: argparse.Namespace, base: config_lib.Config) -> config_lib.Config:
    """Applies the flags that were given to `base`.

    Raises:
      ConfigError: a value the field does not allow (the message names the field).
    """
    overrides = {}
    for key, value in vars(args).items():
        if key.startswith("override:"):
            group, field = key[len("override:"):].split(".", 1)
            overrides[f"{group}.{field}" if group else field] = value
    try:
        return config_lib.replace(base, **overrides)
    except TypeError as err:  # pragma: no cover - replace() validates through __post_init__
        raise ConfigError(str(err)) from None


def config_from_flag_string(text: str, args: argparse.Namespace, prog: str
                            ) -> config_lib.Config:
    """One side of a comparison, e.g. `--preset d2l --dropout 0.2`, as a config.

    Starts from the string's `--preset` (else `args.preset` or `args.config`), applies the
    config flags of `args` (the flags both sides share), then the string's own config flags.

    Raises:
      ConfigError: an unknown flag or a bad value in `text` (the message starts with
        `prog`, e.g. "--b").
    """
    parser = argparse.ArgumentParser(prog=prog, add_help=False, exit_on_error=False)
    parser.add_argument("--preset", choices=sorted(config_lib.PRESETS), default=None)
    add_config_flags(parser)
    try:
        side, unknown = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, ValueError) as err:
        raise ConfigError(f"{prog}: {err}") from None
    if unknown:
        raise ConfigError(f"{prog}: unknown flags {' '.join(unknown)}")
    start = (config_lib.PRESETS[side.preset]() if side.preset else
             base_config(getattr(args, "preset", None), getattr(args, "config", None)))
    base = config_from_args(args, start)
    try:
        return config_from_args(side, base)
    except ConfigError as err:
        raise ConfigError(f"{prog}: {err}") from None


def config_file(path) -> config_lib.Config:
    """The config in a JSON file written from `to_dict` (best_config.json, summary's "config").

    Raises:
      ConfigError: an unreadable or malformed file, an unknown field or a bad value (one
        line naming the file).
    """
    import json
    try:
        data = json.loads(open(path, encoding="utf-8").read())
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object of config groups")
        return config_lib.config_from_dict(data)
    except (OSError, ValueError, TypeError, ConfigError) as err:
        raise ConfigError(f"--config {path}: {err}; give a file written by to_dict, such "
                          f"as scripts/tune.py's best_config.json") from None


def base_config(preset: str | None, path: str | None,
                default: str = "d2l") -> config_lib.Config:
    """The starting config: `--config FILE`, else `--preset` (`default` when neither)."""
    if preset is not None and path is not None:
        raise ConfigError("give --preset or --config, not both")
    return config_file(path) if path is not None else config_lib.PRESETS[preset or default]()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the description (a script's docstring) kept as written."""


def parse_run_args(description: str, argv: list[str] | None = None,
                   extra: dict[str, dict] | None = None, default_preset: str = "d2l"
                   ) -> tuple[config_lib.Config, argparse.Namespace]:
    """The command line of a training entry point, applied: (config, parsed args).

    The flags: `--preset` (a starting configuration) or `--config FILE` (one from a JSON
    file, `config_file`), `--out` (a folder for metrics.jsonl
    and summary.json), `--quiet` (log warnings only), `--compilation-cache` (JAX's
    persistent cache folder, or "off"), every config field, and `extra`.

    Args:
      description: the --help text (a script passes its docstring).
      argv: the arguments (default: sys.argv[1:]).
      extra: a script's own flags: {"--clip-norm": dict(type=float, default=1.0, help=...)},
        keyword arguments of `ArgumentParser.add_argument`; read back as `args.clip_norm`.
      default_preset: the start when neither --preset nor --config is given.

    Returns:
      (the preset with the given config flags applied, the parsed namespace). Logging is set
      up (INFO to stdout, WARNING with --quiet) and the compilation cache turned on.

    Exits with status 2 and a message naming the field on an unknown flag or a bad value.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--preset", choices=sorted(config_lib.PRESETS), default=None,
                        help=f"starting configuration; flags override its fields "
                             f"(default: {default_preset})")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="starting configuration from a JSON file as written by "
                             "to_dict (e.g. scripts/tune.py's best_config.json); flags "
                             "override its fields")
    parser.add_argument("--out", default=None,
                        help="folder for metrics.jsonl and summary.json")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--compilation-cache", default=None,
                        help="JAX persistent compilation cache folder, or 'off' "
                             "(default: $AUTOREC_JAX_JIT_CACHE or ~/.cache/autorec_jax/jit)")
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    add_config_flags(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, base_config(args.preset, args.config,
                                                    default_preset))
        # Folders are checked before any data is loaded or anything compiled.
        if args.out is not None:
            preflight.check_out_dir(args.out)
        if args.compilation_cache != "off":
            preflight.check_cache_dir(args.compilation_cache
                                      or runtime.default_compilation_cache_dir())
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("autorec_jax").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.compilation_cache != "off":
        runtime.enable_compilation_cache(args.compilation_cache)
    return config, args


def run_main(prog: str, body, *, interrupted: str = "interrupted; run it again to continue",
             interrupts: "runtime.Interrupts | None" = None) -> int:
    """Runs a script's `body() -> int`, turning what a user can act on into one stderr line
    and an exit status: ConfigError 2, TrainingInterrupted 130 (its own message), any other
    AutoRecError or OSError 1, Ctrl-C 130 (`interrupted`).

    With `interrupts` (installed by the script), the line and status are this thread's only
    if no Ctrl-C is already ending the process (`Interrupts.take_exit`).
    """
    from autorec_jax.errors import AutoRecError, TrainingInterrupted
    line = None
    try:
        status = body()
    except ConfigError as err:
        status, line = 2, f"{prog}: error: {err}"
    except TrainingInterrupted as err:
        status, line = 130, f"{prog}: {err}"
    except (AutoRecError, OSError) as err:
        status, line = 1, f"{prog}: error: {err}"
    except KeyboardInterrupt:
        status, line = 130, f"{prog}: {interrupted}"
    if interrupts is not None:
        interrupts.take_exit()
    if line is not None:
        print(line, file=sys.stderr)
    return status
