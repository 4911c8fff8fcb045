"""``ssamba <command>``: argument parsing only; each command delegates to the library."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    from ssamba.loading import load

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


def _stats(args: argparse.Namespace) -> int:
    from ssamba.audio.stats import dataset_stats, preset
    from ssamba.data.manifest import read_manifest

    if args.preset:
        stats = preset(args.preset)
        print(f"mean {stats.mean!r}\nstd {stats.std!r}")
        return 0
    if not args.manifest:
        raise ValueError("give a MANIFEST or --preset NAME")
    if (args.target_length is None) == (not args.no_pad):
        raise ValueError("give exactly one of --target-length N (the task's input length: zero padding counts, as in "
                         "the official statistics) and --no-pad (real frames only)")
    paths = [e.path for e in read_manifest(args.manifest)][: args.limit]
    result = dataset_stats(paths, None if args.no_pad else args.target_length)
    print(f"mean {result.mean!r}\nstd {result.std!r}\nfiles {result.files}\nvalues {result.values}")
    for path, reason in result.failures:
        print(f"skipped {path}: {reason}")
    return 1 if result.failures else 0


def _prepare(args: argparse.Namespace) -> int:
    from ssamba.data.prepare import prepare

    options = {"test_root": Path(args.test_root)} if args.test_root else {}
    if args.classes:
        options["classes"] = args.classes
    for name in ("clips_per_class", "unlabeled", "seed"):  # synthetic only; other recipes refuse them by name
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    report = prepare(args.corpus, args.root, args.out, cache=args.cache, sample_rate=args.sample_rate,
                     workers=args.workers, **options)
    classes = f", {report.num_classes} classes" if report.num_classes is not None else " (unlabeled)"
    print(f"{report.corpus}: {sum(report.split_counts.values())} clips{classes} -> {report.out}")
    for split, count in report.split_counts.items():
        print(f"  {split}: {count}")
    if report.class_counts:  # a class with few clips is a thing to see before training
        fewest, most = (min(report.class_counts.items(), key=lambda kv: (kv[1], kv[0])),
                        max(report.class_counts.items(), key=lambda kv: (kv[1], kv[0])))
        print(f"  clips per class: {fewest[1]} ({fewest[0]}) to {most[1]} ({most[0]})")
    if report.missing:
        print(f"  missing: {len(report.missing)} (see {report.out / 'missing.txt'})")
    if report.failed:
        print(f"  failed: {len(report.failed)} (see {report.out / 'failed.txt'})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ssamba.config import load_config
    from ssamba.train.config import RunConfig
    from ssamba.train.run import run, run_evaluate

    cfg = load_config(RunConfig, args.config, args.overrides)
    if args.command == "evaluate":
        run_evaluate(cfg)
        return 0
    cfg.task = {"pretrain": "pretrain", "finetune": "finetune", "probe": "probe"}[args.command]
    run(cfg, resume=args.resume)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ssamba.demo import run_demo

    summary = run_demo(args.out, quick=args.quick, bench=not args.no_bench)
    print((Path(args.out) / "report.md").read_text())
    print(f"report, plots and runs in {args.out} ({summary['seconds']:.0f} s)")
    return 0


def _predictor(args: argparse.Namespace):
    from ssamba.inference import LengthPolicy, Predictor
    from ssamba.loading import load

    stats = args.stats
    if stats is not None and "," in stats:
        try:
            mean, std = map(float, stats.split(","))
        except ValueError:
            raise ValueError(f"--stats {stats!r}: expected a preset name or MEAN,STD (two numbers)") from None
        stats = (mean, std)
    policy = LengthPolicy(args.min_frames, args.max_frames, args.overlap_frames)
    model = load(args.model, sha256=args.sha256)
    return Predictor(model, stats=stats, policy=policy, batch_size=args.batch_size, progress=True,
                     precision=args.precision, mono=args.mono)


def _report_failures(report) -> int:
    for source, error in report.failures:
        print(f"failed: {error}", file=sys.stderr)
    print(f"{report.ok} of {report.total} inputs done, {len(report.failures)} failed", file=sys.stderr)
    return 1 if report.failures else 0


def _predict(args: argparse.Namespace) -> int:
    from ssamba.atomic import atomic_write
    from ssamba.inference.jobs import JobReport, predict_files

    predictor = _predictor(args)

    def run(out) -> JobReport:
        return predict_files(predictor, args.inputs, out, top_k=args.top_k, fmt=args.format,
                             per_second=args.per_second, activation=args.activation)

    if not args.out:
        return _report_failures(run(sys.stdout))
    reports = []

    def write(tmp: str) -> None:  # atomically: a job that fails or is killed leaves an earlier --out file whole
        with open(tmp, "w", newline="") as out:
            reports.append(run(out))

    atomic_write(args.out, write)
    return _report_failures(reports[0])


def _embed(args: argparse.Namespace) -> int:
    from ssamba.inference.jobs import embed_files

    report = embed_files(_predictor(args), args.inputs, args.out, timestamps=args.timestamps, fmt=args.format)
    return _report_failures(report)


def _bench(args: argparse.Namespace) -> int:
    from ssamba.bench.efficiency import BenchSpec, render_from_csv, run_benchmark

    spec = BenchSpec(sizes=args.sizes, batches=args.batches, max_tokens=args.max_tokens, tokens=args.tokens,
                     variants=args.variants, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                     device=args.device, depth=args.depth, clock=args.clock, timeout_s=args.timeout,
                     memory_limit_gb=args.memory_limit_gb, matmul_precision=args.matmul_precision)
    result = render_from_csv(args.from_csv, spec, args.out) if args.from_csv else run_benchmark(spec, args.out)
    print(result.markdown)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    p.add_argument("--model", required=True, help="saved model folder, official .pth, or hf://OWNER/REPO/FILE")
    p.add_argument("--sha256", help="pin the checkpoint file's sha256")
    p.add_argument("--stats",
                   help="input normalisation the model was trained with: audioset, esc50, speechcommands, "
                        "urbansound8k, or MEAN,STD (default: the model's own, saved by ssamba finetune/pretrain; "
                        "else audioset, as the official checkpoints)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="equally long runs per forward pass")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the encoder under bfloat16 autocast (faster on CPUs with AMX or AVX512-BF16 and on "
                        "GPUs; the official speech-commands model's scores move by < 1e-3)")
    p.add_argument("--min-frames", type=_positive_int,
                   help="pad shorter clips to this many frames (default: the model's trained input length)")
    p.add_argument("--max-frames", type=_positive_int,
                   help="window clips longer than this (default: 6000 = 60 s, or the model's trained length if longer)")
    p.add_argument("--overlap-frames", type=int, help="overlap of the windows (default 1000, or half a window "
                                                      "shorter than 2000 frames)")
    p.add_argument("--mono", choices=["first", "mean"], default="first",
                   help="multichannel files: the first channel (default, as the official pipeline) or the mean")


def _version() -> str:
    """The package version with torch's, which decides the CPU kernels and the GPU path (bug reports want both)."""
    import torch

    from ssamba import __version__

    return f"{__version__} (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssamba", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-V", "--version", action="version", version=f"ssamba {_version()}")
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

    from ssamba.data.corpora import RECIPES

    p = sub.add_parser("prepare", help="build manifests from a corpus's native download layout")
    p.add_argument("corpus", choices=sorted(RECIPES), help="corpus recipe")
    p.add_argument("--root", help="the corpus's download folder (not used by synthetic, which is generated)")
    p.add_argument("--out", required=True, help="output folder for the manifests")
    p.add_argument("--cache", help="resample clips not at --sample-rate into this folder once (resumable)")
    p.add_argument("--sample-rate", type=int, default=16000, help="target rate of the cache (default 16000)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="parallel processes for the cache (without --cache: threads checking the audio headers)")
    p.add_argument("--test-root", help="speechcommands-v1: the separate v0.01 test-set folder (SUPERB KS1)")
    p.add_argument("--classes", choices=["canonical", "found"], help="speechcommands: class set (default canonical)")
    p.add_argument("--clips-per-class", type=int, help="synthetic: labeled clips per class (default 50)")
    p.add_argument("--unlabeled", type=int, help="synthetic: unlabeled clips for pretraining (default 600)")
    p.add_argument("--seed", type=int, help="synthetic: random seed (default 0)")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("stats", help="mean/std of the log-mel inputs of a manifest, for normalisation")
    p.add_argument("manifest", nargs="?", help="SSAST/AST .json or path,label .csv manifest")
    p.add_argument("--target-length", type=int,
                   help="pad/cut to the task's input length in frames, as the official statistics were taken "
                        "(the recipe's data.dataset.features.target_length: 1024 AudioSet, 512 ESC-50, 128 Speech "
                        "Commands); the printed mean and std go to data.dataset.features.mean/std")
    p.add_argument("--no-pad", action="store_true", help="use only real frames (no padding)")
    p.add_argument("--limit", type=_positive_int, help="use only the first N files")
    p.add_argument("--preset", help="print the official statistics of audioset/esc50/speechcommands/urbansound8k")
    p.set_defaults(func=_stats)

    p = sub.add_parser("demo", help="the whole pipeline on a built-in synthetic corpus (minutes on a CPU)")
    p.add_argument("--out", default="ssamba-demo", help="output folder (default ./ssamba-demo)")
    p.add_argument("--quick", action="store_true", help="smaller budget: under 2 minutes")
    p.add_argument("--no-bench", action="store_true", help="skip the efficiency comparison")
    p.set_defaults(func=_demo)

    for name, text in [("pretrain", "self-supervised pretraining (joint masked-patch objective)"),
                       ("finetune", "fine-tune on a labelled manifest (or K folds)"),
                       ("probe", "linear probe of a frozen encoder, layer by layer"),
                       ("evaluate", "evaluate a fine-tuned model (model.init) on data.test")]:
        p = sub.add_parser(name, help=text, description=f"{text}. Works under torchrun for several processes.")
        p.add_argument("config", help="recipe YAML (see recipes/)")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-5 model.size=small")
        if name != "evaluate":
            p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/last.pt")
        p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="top-k labels of audio files with a fine-tuned model")
    _inference_options(p)
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels per clip (default 5)")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="output format (default json)")
    p.add_argument("--per-second", action="store_true", help="also top-k labels for every second")
    p.add_argument("--activation", choices=["auto", "softmax", "sigmoid", "none"], default="auto",
                   help="scores from logits (default auto: sigmoid for AudioSet's 527 labels, else softmax)")
    p.add_argument("--out", help="write results to this file instead of stdout")
    p.set_defaults(func=_predict)

    p = sub.add_parser("embed", help="clip (and time-stamped frame) embeddings of audio files")
    _inference_options(p)
    p.add_argument("--out", required=True, help="output folder (one file per input plus index.csv)")
    p.add_argument("--timestamps", action="store_true", help="also frame embeddings with timestamps in ms")
    p.add_argument("--format", choices=["npy", "safetensors"], default="npy", help="file format (default npy)")
    p.set_defaults(func=_embed)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("efficiency", help="inference time and peak memory, SSAMBA vs SSAST, vs token count")
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "small", "base"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    p.add_argument("--max-tokens", type=int, default=22000, help="largest token count (default 22000)")
    p.add_argument("--tokens", nargs="+", type=int, help="explicit token counts (default 512, 1024, ... max)")
    p.add_argument("--variants", nargs="+", default=["ssamba", "ssast-sdpa", "ssast-naive"],
                   choices=["ssamba", "ssast-sdpa", "ssast-naive"])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, help="torch CPU threads in each run (default: torch's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--depth", type=int, help="override the depth (quick checks only; not the paper's models)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time shown in tables and plots: elapsed (default) or process CPU time (steadier on a "
                        "shared CPU with --threads 1); the CSV has both")
    p.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default="highest",
                   help="torch.set_float32_matmul_precision in every run, both models alike (high: TF32 on CUDA; "
                        "default highest, full float32)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration before giving up")
    p.add_argument("--memory-limit-gb", type=float, help="skip configurations estimated above this (default: "
                                                        "available memory)")
    p.add_argument("--from-csv", nargs="+", help="render earlier results.csv files (merged) instead of running")
    p.add_argument("--out", required=True, help="output folder: results.csv, results.md, *.png")
    p.set_defaults(func=_bench)
    return parser


#: options whose value may start with "-" (a negative mean: ``--stats -4.27,4.57``)
NEGATIVE_VALUE_OPTIONS = ("--stats",)


def _normalise_argv(argv: list[str]) -> list[str]:
    """Two argv rewrites argparse needs. ``--stats -4.27,4.57`` -> ``--stats=-4.27,4.57``: argparse takes a value
    starting with "-" that is not a plain number for an option and fails, although a MEAN,STD pair's mean is always
    negative. ``--resume`` goes last: given between a recipe and its overrides, it would end the overrides'
    positional list and argparse would reject the rest."""
    if "--resume" in argv:
        argv = [a for a in argv if a != "--resume"] + ["--resume"]
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NEGATIVE_VALUE_OPTIONS and arg.startswith("-") and "," in arg:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with -v) on the main process; under torchrun the other ranks say only warnings and errors, with
    their rank, so that a run's progress reads once instead of once per process."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if world > 1 else ""
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_normalise_argv(sys.argv[1:] if argv is None else list(argv)))
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        logging.getLogger("ssamba").error("%s: %s", type(exc).__name__, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
