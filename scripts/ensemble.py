#!/usr/bin/env python3
"""Ensembles of I-AutoRec and U-AutoRec runs on one split, blended by weights fit on
validation only.

  python scripts/ensemble.py --out runs/ens --seeds 0-4                   # 5 I-AutoRec seeds
  python scripts/ensemble.py --out runs/ens --seeds 0-4 --user-seeds 0-2  # + 3 U-AutoRec
  python scripts/ensemble.py --out runs/ens2 \\
      --members "--hidden 500" "--hidden 300 --orientation user --seed 1"

--seeds and --user-seeds (A-B, or comma-separated) are the model seeds of the I-AutoRec
(orientation item) and U-AutoRec (orientation user) members; every member keeps the base
config's split seed (--split-seed, else --seed), so all share one split. --members gives one
train.py flag string per member, applied after the flags outside it; a member that sets no
--split-seed gets the base config's.

The base config is --preset (default d2l) and your flags. A member that holds out no
validation set and selects nothing gets --valid-ratio 0.1 --early-stopping 10 (give any of
--valid-ratio, --early-stopping, --select to choose yourself, e.g. --retrain true too).
Blend weights (an intercept and one per member) are fit by least squares on the members'
validation predictions and applied to test; the mean of the members is reported beside it.

Each member is a run folder --out/member<i>: the same command again reuses finished members
and resumes a killed one. --out/ensemble.json and report.md hold every score. Prints one
line per member, then the mean and the fitted blend. Bad input exits 2 with one line, a
failed run 1, Ctrl-C 130.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"ensemble.py: interrupted\n"),
                                             os._exit(130)))

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("ensemble.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.run.cli import config_from_flag_string, parse_run_args, run_main  # noqa: E402
from autorec_jax.config import replace  # noqa: E402
from autorec_jax.errors import ConfigError  # noqa: E402

PROG = "ensemble.py"
# What a member gets when it selects nothing on validation (see the docstring).
SELECTION_DEFAULTS = dict(valid_ratio=0.1, early_stopping=10)


def _seeds(flag: str, text: str | None) -> tuple[int, ...]:
    """'0-4' -> (0, 1, 2, 3, 4); '0,2,5' -> (0, 2, 5); None -> ()."""
    if text is None:
        return ()
    if match := re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text):
        seeds = tuple(range(int(match[1]), int(match[2]) + 1))
    elif re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text):
        seeds = tuple(int(s) for s in text.split(","))
    else:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{flag} expects distinct seeds as A-B or A,B,C; got {text!r}")
    return seeds


EXTRA = {
    "--seeds": dict(default=None, help="I-AutoRec members' seeds: A-B or A,B,C"),
    "--user-seeds": dict(default=None, help="U-AutoRec members' seeds: A-B or A,B,C"),
    "--members": dict(nargs="+", default=None, metavar="FLAGS",
                      help="one train.py flag string per member (instead of seeds)"),
    "--one-at-a-time": dict(action="store_true",
                            help="train the members one after another, not those that share shapes "
                                 "together in one compiled step"),
}


def member_configs(base, args) -> list:
    """The members' configs from --seeds/--user-seeds or --members (ConfigError if bad)."""
    if args.out is None:
        raise ConfigError("give --out (the ensemble's folder)")
    seeds = {"item": _seeds("--seeds", args.seeds),
             "user": _seeds("--user-seeds", args.user_seeds)}
    if args.members is not None:
        if seeds["item"] or seeds["user"]:
            raise ConfigError("--members excludes --seeds and --user-seeds")
        configs = [config_from_flag_string(text, args, f"--members {index}")
                   for index, text in enumerate(args.members)]
        configs = [c if c.data.split_seed is not None else
                   replace(c, split_seed=base.split_seed) for c in configs]
    elif seeds["item"] or seeds["user"]:
        configs = [replace(base, orientation=orientation, seed=seed, split_seed=base.split_seed)
                   for orientation, chosen in seeds.items() for seed in chosen]
    else:
        raise ConfigError("give --seeds and/or --user-seeds, or --members")
    return [replace(c, **SELECTION_DEFAULTS)
            if c.data.valid_ratio == 0 and not c.selects_on_validation else c
            for c in configs]


def main(argv: list[str] | None = None) -> int:
    base, args = parse_run_args(__doc__, argv, extra=EXTRA)
    from autorec_jax.studies import ensemble  # imports JAX

    def body() -> int:
        result = ensemble.train_ensemble(member_configs(base, args), out_dir=args.out,
                                         progress=sys.stdout.isatty() and not args.quiet,
                                         batch_members=not args.one_at_a_time)
        print("\n".join(ensemble.format_lines(result.summary)))
        return 0

    INTERRUPTS.folder = args.out
    INTERRUPTS.message = "interrupted; run it again to continue"
    return run_main(PROG, body, interrupted=INTERRUPTS.message, interrupts=INTERRUPTS)


if __name__ == "__main__":
    sys.exit(main())
