"""Published checkpoints from the command line.

python -m mocolab.weights list                  # the registry: name, format, checksum, published numbers
python -m mocolab.weights fetch moco_v2_800ep   # download into the cache (resumes, checks the checksum)
python -m mocolab.weights info FILE_OR_NAME     # read a checkpoint: its format, model, identity, load time
python -m mocolab.weights compact RUN/checkpoint_last.pt OUT.pt [--fp32]   # the query encoder alone (teaching.py)
"""

import argparse
import sys

from ..ui import cli
from .download import cache_dir, cached_path, fetch
from .pretrained import load
from .registry import REGISTRY
from .teaching import compact


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mocolab.weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the registry")
    sub.add_parser("fetch", help="download one into the cache").add_argument("name", choices=sorted(REGISTRY))
    sub.add_parser("info", help="read a checkpoint and describe it").add_argument("checkpoint")
    small = sub.add_parser("compact", help="a pretraining checkpoint's query encoder alone, fp16 by default")
    small.add_argument("checkpoint")
    small.add_argument("out")
    small.add_argument("--fp32", action="store_true", help="keep fp32 tensors")
    small.add_argument("--dataset", help="the data its config names (the default evaluation data)")
    small.add_argument("--data-root")
    small.add_argument("--trained-on", help="the data it saw, in words")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(f"cache: {cache_dir()}")
        for p in REGISTRY.values():
            here = "cached" if cached_path(p).is_file() else "-"
            print(f"{p.name:24} {p.format:16} {p.checksum or 'no checksum':16} {here:6} {p.title}; {p.numbers}")
    elif args.command == "fetch":
        print(fetch(args.name))
    elif args.command == "compact":
        out = compact(args.checkpoint, args.out, not args.fp32, args.dataset, args.data_root, args.trained_on)
        print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")
    else:
        model = load(args.checkpoint, download_missing=False)
        print(
            f"{model.summary()}\nidentity {model.identity}; image size {model.image_size}, mean {model.mean}, "
            f"std {model.std}; read and converted in {model.seconds:.2f} s"
            + (f"\nset aside: {', '.join(model.set_aside)}" if model.set_aside else "")
        )


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m mocolab.weights"))
