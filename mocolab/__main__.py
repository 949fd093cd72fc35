"""Command line: pretrain from a preset with key=value overrides; the entry point for torchrun.

    python -m mocolab --preset cifar10_demo epochs=200 gpus=1 output_dir=runs/c10
    python -m mocolab --config runs/c10/config.json epochs=400 resume=True   # a run's own config, changed
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m mocolab --preset imagenet_mocov2 data_root=/data/imagenet output_dir=runs/in

Under torchrun (or srun with MASTER_ADDR/MASTER_PORT exported) every process
runs this and joins the process group; launched by hand with gpus > 1 it
starts the processes itself, like the notebook.
"""

import argparse
import sys

from .ui import cli
from .config import AUTO, PRESETS, config_from_file, make_config
from .settings import parse_override
from .pretraining import pretrain


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS) + [AUTO], help="the recipe (default cifar10_demo)")
    parser.add_argument(
        "--config", metavar="FILE", help="start from a saved config instead: a run's config.json, or a sweep's"
    )
    parser.add_argument("overrides", nargs="*", help="config fields as key=value")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(o) for o in args.overrides)
    if args.config and args.preset:
        parser.error("give --preset or --config, not both: a saved config already names its preset")
    cfg = (
        config_from_file(args.config, **overrides)
        if args.config
        else make_config(args.preset or "cifar10_demo", **overrides)
    )
    pretrain(cfg)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m mocolab"))
