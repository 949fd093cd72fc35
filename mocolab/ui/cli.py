"""What every `python -m mocolab...` command does with an error its user can fix: say it in one line first.

A wrong key, a missing dataset or checkpoint raises ConfigError, DatasetError or
CheckpointError with a message that names the problem and the fix. Printed by
Python, that message is the last line under a long traceback; here it comes first
(and again at the bottom), the traceback in between, and the exit status is 2.
"""

from __future__ import annotations

import sys
import traceback

from ..run.checkpoint import CheckpointError
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
    return 0
