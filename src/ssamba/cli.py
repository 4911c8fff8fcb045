"""``ssamba <command>``: argument parsing only; each command delegates to the library."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from ssamba.api import load

    options = {k: v for k, v in dict(label_dim=args.label_dim, input_tdim=args.input_tdim, fstride=args.fstride,
                                     tstride=args.tstride).items() if v is not None}
    if args.labels:
        options["labels"] = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
    model = load(args.checkpoint, **options)
    out = model.save_pretrained(args.out_dir)
    enc = model.config.encoder
    logging.getLogger("ssamba").info("wrote %s-%s %s model (%d parameters) to %s", enc.arch, enc.size,
                                     model.config.task, sum(p.numel() for p in model.parameters()), out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssamba", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an official SSAMBA/SSAST .pth checkpoint to our format")
    p.add_argument("checkpoint", help="official .pth file (or a saved ssamba directory)")
    p.add_argument("out_dir", help="output directory (config.json + model.safetensors)")
    p.add_argument("--label-dim", type=int, help="build a fine-tuning model from a pretraining checkpoint")
    p.add_argument("--input-tdim", type=int, help="input frames of the fine-tuning model")
    p.add_argument("--fstride", type=int, help="patch stride along frequency (fine-tuning)")
    p.add_argument("--tstride", type=int, help="patch stride along time (fine-tuning)")
    p.add_argument("--labels", help="text file with one class name per line")
    p.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        logging.getLogger("ssamba").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
