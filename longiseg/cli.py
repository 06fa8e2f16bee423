"""The ``longiseg`` command line: ``train``, ``predict``, ``evaluate``, ``models``, ``demo`` and ``bench``.

Run ``longiseg COMMAND --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values with dotted keys, e.g. trainer.max_epochs=10 loss.strategy=whole")


def _cmd_models(args: argparse.Namespace) -> int:
    from longiseg.registry import build_model, list_models, model_info

    names = list_models(args.pattern or "", dim=args.dim)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'dim':<4}  {'params':>8}  description")
    for name in names:
        info = model_info(name)
        params = "-"
        if not args.no_params:
            try:
                model = build_model(name)
                params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
            except ImportError as err:
                params = "n/a"
                info = info.__class__(**{**info.__dict__, "description": f"{info.description} [{err}]"})
        print(f"{name:<{width}}  {info.dim:<4}  {params:>8}  {info.description}")
    return 0


def _load_experiment(path: str | None, overrides: Sequence[str]):  # noqa: ANN202
    from longiseg.workflows.config import ExperimentConfig

    if path is None:
        return ExperimentConfig().with_overrides(overrides)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    return ExperimentConfig.from_file(path, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from longiseg.workflows.train import run_training

    cfg = _load_experiment(args.config, args.overrides)
    if args.data:
        cfg.data.root = args.data
    if args.output:
        cfg.trainer.output_dir = args.output
    result = run_training(cfg, resume=args.resume)
    print(f"finished: {result}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from longiseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
    from longiseg.workflows.predict import run_prediction

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    exp_file = args.config or (ckpt.parent / "experiment.yaml")
    cfg = _load_experiment(str(exp_file) if Path(exp_file).is_file() else None, args.overrides)
    name = load_checkpoint(ckpt, map_location="cpu").get("model_name")
    model = build_model_from_checkpoint(ckpt)
    run_prediction(model, name, args.input, args.output, cfg.inference, modalities=cfg.data.modalities,
                   overwrite=args.overwrite, skip_existing=args.skip_existing, device=args.device)
    print(f"predictions written to {args.output}")
    return 0


def _cmd_evaluate(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from longiseg.metrics.evaluate import main as evaluate_main

    return evaluate_main(list(rest))


def _cmd_demo(args: argparse.Namespace) -> int:
    from longiseg.workflows.demo import DemoConfig, run_demo

    kw = {"output_dir": args.output, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.quick:
        kw.update(num_patients=8, num_test=2, epochs=2, steps_per_epoch=5)
    for key in ("num_patients", "epochs", "steps_per_epoch", "seed"):
        val = getattr(args, key)
        if val is not None:
            kw[key] = val
    summary = run_demo(DemoConfig(**kw))
    print(summary["table"])
    print("\nheld-out test patients, trained vs untrained (mean over patients):")
    for label, vals in summary["learned"].items():
        print("  " + label + ": " + ", ".join(
            f"{k} {v['trained']:.3f} vs {v['untrained']:.3f}" for k, v in vals.items()))
    print("\nfigures and reports:")
    for k, v in summary["files"].items():
        print(f"  {k:<16} {v}")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from longiseg.benchmarking import run_mixer_benchmark

    run_mixer_benchmark(quick=args.quick, out_png=args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``longiseg`` command."""
    parser = argparse.ArgumentParser(prog="longiseg", description="Longitudinal lesion segmentation (SegMaST and baselines).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("pattern", nargs="?", default="", help="wildcard, e.g. 'segmast*'")
    p.add_argument("--dim", choices=["2.5D", "3D", "2D"], default=None)
    p.add_argument("--no-params", action="store_true", help="do not build models to count parameters")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model from an experiment config (YAML/JSON)")
    p.add_argument("config", nargs="?", default=None, help="experiment config file (see examples/configs)")
    p.add_argument("--data", default=None, help="cohort folder (overrides data.root)")
    p.add_argument("--output", default=None, help="run folder (overrides trainer.output_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    _add_overrides(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="predict a folder of cases with a checkpoint (NIfTI masks, probabilities, entropy)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'longiseg train' (last.pt / best.pt)")
    p.add_argument("--input", required=True, help="folder of cases in the longiseg layout")
    p.add_argument("--output", required=True, help="prediction folder")
    p.add_argument("--config", default=None, help="experiment config (default: experiment.yaml next to the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-existing", action="store_true", help="skip cases that already have outputs")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    _add_overrides(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="evaluate prediction folder(s) against a reference folder",
                       add_help=False)
    p.set_defaults(func=_cmd_evaluate, passthrough=True)

    p = sub.add_parser("demo", help="the main job: the whole pipeline on the embedded demo cohort")
    p.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, about two minutes)")
    p.add_argument("--num-patients", dest="num_patients", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="Mamba (MaST) vs attention mixer benchmark: time and memory vs tokens")
    p.add_argument("--quick", action="store_true", help="small sizes only (a few minutes on a 2-core CPU)")
    p.add_argument("--plot", default=None, help="write the time/memory plot (PNG) here")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``longiseg`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `evaluate` has its own parser (shared with `python -m longiseg.metrics.evaluate`): pass its args through.
    if argv and argv[0] == "evaluate":
        args, rest = argparse.Namespace(verbose=False), argv[1:]
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return _cmd_evaluate(args, rest)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"longiseg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
