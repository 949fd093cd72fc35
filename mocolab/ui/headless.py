"""Run a notebook headless (papermill) the way a terminal user needs it: live progress, one-line errors.

    python -m mocolab.ui.headless notebooks/02_pretrain.ipynb runs/demo/02_pretrain.ipynb \\
        --log runs/demo/log.txt -p dataset imagefolder -p data_root /data/cifar10

papermill itself shows a cell counter ("Executing: 40%") that stands still for the
whole training. Here the lines the job appends to its log.txt (one per epoch: loss,
kNN, seconds) are printed as they come. When a cell fails, the error comes first as
one line (what failed and what to do), then the traceback, then the same line again
at the bottom, where a terminal user looks. `make demo` is a thin wrapper over this.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from ..run.launch import relay_log
from ..settings import parse_value


def failure_line(error, hints: dict[str, str]) -> str:
    """'<Error>: <message>' of a failed cell, with the hint for that error type when there is one."""
    name, message = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    hint = hints.get(name)
    return f"{name}: {message}" + (f"\n  {hint}" if hint else "")


def run_notebook(notebook, output, parameters: dict, log=None, hints: dict | None = None) -> int:
    """Execute `notebook` into `output` with `parameters`; relay `log` while it runs. Returns an exit code."""
    import papermill

    output, hints = Path(output), hints or {}
    output.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    relay = None
    if log is not None:
        log = Path(log)
        start = log.stat().st_size if log.exists() else 0
        relay = threading.Thread(target=relay_log, args=(log, start, stop, True), daemon=True)
        relay.start()
    tic = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False)
    except Exception as error:  # a failed cell (PapermillExecutionError) or papermill's own error
        stop.set()
        if relay is not None:
            relay.join()
        line = failure_line(error, hints)
        print(f"\nFAILED: {line}\n", file=sys.stderr, flush=True)
        print(getattr(error, "traceback", None) and "\n".join(error.traceback) or repr(error), file=sys.stderr)
        print(f"\nFAILED: {line}\n(the executed notebook, with the failing cell: {output})", file=sys.stderr)
        return 1
    stop.set()
    if relay is not None:
        relay.join()
    print(f"done in {time.perf_counter() - tic:.0f} s; executed notebook: {output}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab.ui.headless", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebook")
    parser.add_argument("output", help="the executed notebook")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--log", help="a log file the notebook's job appends to (e.g. RUN/log.txt): relayed live")
    parser.add_argument(
        "--hint",
        action="append",
        default=[],
        metavar="ERROR=TEXT",
        help="a line to add when a cell fails with this error type",
    )
    args = parser.parse_args(argv)
    hints = dict(h.split("=", 1) for h in args.hint)
    return run_notebook(args.notebook, args.output, {k: parse_value(v) for k, v in args.parameter}, args.log, hints)


if __name__ == "__main__":
    sys.exit(main())
