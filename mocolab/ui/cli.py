"""What every `python -m mocolab...` command does with an error its user can fix: say it in one line first.

A wrong key, a missing dataset or checkpoint raises ConfigError, DatasetError or
CheckpointError with a message that names the problem and the fix. Printed by
Python, that message is the last line under a long traceback; here it comes first
(and again at the bottom), the traceback in between, and the exit status is 2. A run
stopped by a stop signal (mocolab.run.preemption) exits 75, "requeue me"; Ctrl-C
says in one line what was kept and exits 130.
"""

from __future__ import annotations

import sys
import traceback

from ..run.checkpoint import CheckpointError
from ..run.preemption import Preempted
from ..data import DatasetError
from ..settings import ConfigError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError)


def run(main, argv=None, prog: str = "mocolab") -> int:
    """Call main(argv); a user error is reported as '<prog>: <Error>: <message>' first. Returns the exit status."""
    try:
        main(argv)
    except USER_ERRORS as error:
        line = f"{prog}: {type(error).__name__}: {error}"
        print(line, file=sys.stderr)
        traceback.print_exc()
        print(line, file=sys.stderr)
        return 2
    except Preempted as stop:  # a scheduler's stop signal: the position is saved, the scheduler may requeue
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted. What the run wrote is kept: checkpoint_last.pt holds the last finished epoch "
            f"(or its last checkpoint_every_steps step); run the same command with resume=True to continue.",
            file=sys.stderr,
        )
        return 130  # 128 + SIGINT, as a shell reports it
    return 0
