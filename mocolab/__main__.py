"""Command line: pretrain from a preset with key=value overrides; the entry point for torchrun.

    python -m mocolab --preset cifar10_demo epochs=200 gpus=1 output_dir=runs/c10
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m mocolab --preset imagenet_mocov2 data_root=/data/imagenet output_dir=runs/in

Under torchrun (or srun with MASTER_ADDR/MASTER_PORT exported) every process
runs this and joins the process group; launched by hand with gpus > 1 it
starts the processes itself, like the notebook.
"""

import argparse
import sys

from . import cli
from .config import AUTO, PRESETS, make_config
from .settings import parse_override
from .train import pretrain


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cifar10_demo", choices=sorted(PRESETS) + [AUTO])
    parser.add_argument("overrides", nargs="*", help="config fields as key=value")
    args = parser.parse_args(argv)
    cfg = make_config(args.preset, **dict(parse_override(o) for o in args.overrides))
    pretrain(cfg)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m mocolab"))
