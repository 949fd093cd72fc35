"""Command line: fine-tune and evaluate one transfer row; the entry point for torchrun.

    python -m mocolab.transfer task=voc_detection weights=runs/in/checkpoint_last.pt \\
        data_root=/data/VOCdevkit preset=voc_c4_24k gpus=8 output_dir=runs/voc_det
    torchrun --nproc-per-node 8 -m mocolab.transfer task=coco data_root=/data/coco \\
        weights=runs/in/checkpoint_last.pt preset=coco_mask_1x gpus=8 output_dir=runs/coco

Fields are those of TransferConfig (job.py) as key=value. Launched by hand
with gpus > 1 it starts the processes itself; under torchrun each process
joins the group. `python -m mocolab.transfer.export` writes the backbone for
detectron2 or MMDetection instead.
"""

import argparse
import sys

from ..ui import cli
from ..settings import parse_override
from .job import fine_tune, make_transfer_config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab.transfer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="TransferConfig fields as key=value")
    args = parser.parse_args(argv)
    fine_tune(make_transfer_config(**dict(parse_override(o) for o in args.overrides)))


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m mocolab.transfer"))
