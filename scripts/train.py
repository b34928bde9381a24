#!/usr/bin/env python3
"""Train AutoRec (the book's recipe by default) and report test RMSE.

  python scripts/train.py                        # the book's recipe on MovieLens 100K
  python scripts/train.py --seed 3 --out runs/s3 # another split/seed, with a run folder
  python scripts/train.py --out runs/s3 --resume # continue it after a kill or Ctrl-C
  python scripts/train.py --train-ratings splits/u1 --out runs/u1   # a split given as files
  python scripts/train.py --train-ratings tr.tsv --test-ratings te.tsv [--valid-ratings va.tsv]
  python scripts/train.py --preset tiny --epochs 5 --hidden 64 --parallel pmap
  python scripts/train.py --parallel sharded --model-parallel 2     # data x model mesh
  # two processes (hosts), process 0 writes --out:
  python scripts/train.py --coordinator-address host0:1234 --num-processes 2 --process-id 0
  python scripts/train.py --coordinator-address host0:1234 --num-processes 2 --process-id 1

A thin CLI over autorec_jax.train_and_evaluate. Every config field is a flag; a bad flag or
value exits with status 2 and a message naming the field; bad data or a failed run exits 1
with one line. Ctrl-C exits 130 with one line at any moment, leaving every file in --out
whole: at once until the first epoch has ended, then after the current epoch (saved in
--out, so that --resume continues it); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"train.py: interrupted\n"),
                                             os._exit(130)))

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only: installed at once)

INTERRUPTS = Interrupts("train.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.run.cli import parse_run_args, run_main  # noqa: E402

PROG = "train.py"
EXTRA = {
    "--resume": dict(action="store_true",
                     help="continue the run in --out from its latest checkpoint"),
    "--overwrite": dict(action="store_true",
                        help="replace a previous run in --out (its run files only)"),
    "--coordinator-address": dict(default=None, metavar="HOST:PORT",
                                  help="multi-process run: process 0's address (env "
                                       "AUTOREC_COORDINATOR; 'auto' on Slurm/TPU pods)"),
    "--num-processes": dict(type=int, default=None,
                            help="multi-process run: how many (env AUTOREC_NUM_PROCESSES)"),
    "--process-id": dict(type=int, default=None,
                         help="multi-process run: this one's index (env AUTOREC_PROCESS_ID)"),
}


def main(argv: list[str] | None = None) -> int:
    config, args = parse_run_args(__doc__, argv, extra=EXTRA)
    # Ctrl-C exits at once (after any write in --out completes) until the first epoch ends;
    # from then on the first one stops the loop after its epoch, which is saved.
    INTERRUPTS.folder = args.out
    INTERRUPTS.stop_note = None if args.quiet else INTERRUPTS.stop_note

    from autorec_jax.errors import TrainingInterrupted
    from autorec_jax.run.experiment import train_and_evaluate  # imports JAX's backends lazily
    from autorec_jax.distributed.parallel import initialize_distributed

    def body() -> int:
        # Before any device is touched; nothing happens without a coordinator address.
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
        result = train_and_evaluate(
            config, args.out, resume=args.resume, overwrite=args.overwrite,
            progress=sys.stdout.isatty() and not args.quiet,
            stop_requested=INTERRUPTS.stop_requested)
        if INTERRUPTS.requested:  # after the last poll: the run had finished, and is saved
            raise TrainingInterrupted("interrupted as the run finished; its results are saved")
        if args.quiet and result.summary.get("process_index", 0) == 0:
            print(f"test RMSE {result.summary['test_rmse']:.4f}")
        return 0

    return run_main(PROG, body, interrupts=INTERRUPTS)


if __name__ == "__main__":
    sys.exit(main())
