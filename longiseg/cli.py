"""The ``longiseg`` command line: one command per stage, ``cohort`` (or ``register`` of raw scans) -> ``train`` ->
``tune`` -> ``predict`` -> ``evaluate`` and ``lesions``, plus ``models``, ``demo`` (the demo's stages in sequence)
and ``bench``.

Run ``longiseg COMMAND --help`` for the options of each command.

Every command fails the same way: one line ``longiseg COMMAND: error: WHAT`` on stderr and exit code 2 for
usage and input errors (a missing or malformed file, a bad option value, an output that exists), 1 for
anything else, 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM, e.g. from a scheduler at its
time limit; the same clean-up runs as for Ctrl-C), 141 without a word when the reader of the output went away
(``longiseg models | head -1``); the Python traceback only with ``--debug`` or ``LONGISEG_DEBUG=1``. ``-v``
shows longiseg's debug records; other libraries show their warnings and errors only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from longiseg.utils.io import (
    check_input_folder,
    check_output_folder,
    check_separate_folders,
    expand_home,
    folder_is_empty,
)
from longiseg.utils.validation import DEBUG_CHECKS_ENV, env_flag

__all__ = ["main", "build_parser", "Terminated", "EXIT_USAGE", "EXIT_FAILURE", "EXIT_INTERRUPTED",
           "EXIT_TERMINATED", "EXIT_BROKEN_PIPE"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + 15  # SIGTERM
#: Exit code when the reader of the output went away (``longiseg models | head -1``), as a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13
#: The most torch CPU threads ``--threads`` takes.
MAX_THREADS = 1024
#: Commands that run models, and with them the selective scan that ``LONGISEG_SCAN_BACKEND`` may force.
_RUNS_MODELS = ("train", "tune", "predict", "demo")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (``kill PID``, a scheduler's time limit) while
    :func:`main` runs: a ``KeyboardInterrupt``, so that what Ctrl-C cleans up (temporaries, worker and child
    processes) is cleaned up the same way."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated(f"terminated by signal {signum}")


def _exit_terminated(signum: int, frame: object) -> NoReturn:
    """SIGTERM of a torchrun worker (torchrun ends every rank when one fails): one line and exit now. Raised as an
    exception it could land inside a callback of the distributed C++ code, which prints and swallows it, and the
    rank then failed in its next collective with a transport error (exit 1). Outputs are written atomically, so
    an exit in the middle leaves no half-written file under its final name."""
    sys.stderr.write(f"longiseg: terminated (signal {signum}; torchrun ends the ranks when one fails)\n")
    sys.stderr.flush()
    os._exit(EXIT_TERMINATED)

class _FinalizerInterrupts:
    """``sys.unraisablehook`` while :func:`main` runs. A Ctrl-C or SIGTERM that lands in a finalizer (a DataLoader
    iterator of persistent workers shutting them down at the end of training) was printed as "Exception ignored in
    ..." with a traceback and then lost: the command ended with 0. It is remembered here (:attr:`interrupt`) and
    reported when the command returns (a finalizer cannot raise; the trainer ends each epoch's non-persistent
    workers outside one, so an interrupt there stops it at once). Once the command is ending on an interrupt
    (:attr:`ending`), a worker's "killed by signal" error from the same signal is dropped."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.interrupt: KeyboardInterrupt | None = None
        self.ending = False
        self.active = True  # False once main returned

    def __call__(self, unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not self.active:
            self.previous(unraisable)
        elif isinstance(exc, KeyboardInterrupt):
            self.interrupt = self.interrupt or exc
        elif not (self.ending and isinstance(exc, RuntimeError) and "killed by signal" in str(exc)):
            self.previous(unraisable)


# Exceptions that mean "what the user gave is wrong" (exit code 2); the library raises these with messages
# that name the file or argument. ``ConfigError`` and ``yaml`` errors are ``ValueError`` subclasses here.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError, ImportError,
)


#: Options of ``longiseg`` itself, given before the command (``--debug`` is taken anywhere).
_GLOBAL_OPTIONS = ("-v", "--verbose", "--threads", "--import")


class _Parser(argparse.ArgumentParser):
    """argparse's parser with the one-line usage error of every other error (its subparsers are of this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                   ) -> argparse.Namespace:
        """As argparse's, but arguments no parser knows are the error of the sub-command they were given to
        (``longiseg demo: error: unrecognized arguments: --bogus (see longiseg demo --help)``)."""
        argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            target = next((a.choices[command] for a in subs if command in a.choices), self)
            if command in argv and set(extras) & set(argv[:argv.index(command)]):  # given before the command
                target = self
            where = ""
            if target is not self and any(a.split("=", 1)[0] in _GLOBAL_OPTIONS for a in extras):
                where = f"; -v, --threads N and --import MODULE go before the command (longiseg OPTION {command} ...)"
            target.error(f"unrecognized arguments: {' '.join(extras)}{where}")
        return parsed


def _add_overrides(p: argparse.ArgumentParser, help_text: str = "override config values with dotted keys, e.g. "
                   "trainer.max_epochs=10 loss.strategy=whole") -> None:
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=help_text)


def _cmd_models(args: argparse.Namespace) -> int:
    from longiseg.registry import build_model, list_models, model_info

    names = list_models(args.pattern or "", dim=args.dim)
    if not names:  # an input error like any other: one line on stderr, exit code 2
        if args.dim is not None and not list_models(dim=args.dim):
            dims = sorted({model_info(n).dim for n in list_models()})
            raise ValueError(f"no {args.dim} model is registered (--dim); dims with models: {', '.join(dims)}")
        if args.dim is not None:
            raise ValueError(f"no {args.dim} model matches {args.pattern!r} (--dim {args.dim}; without --dim: "
                             f"{len(list_models(args.pattern or ''))} models)")
        raise ValueError(f"no model matches {args.pattern!r} ('longiseg models' lists all {len(list_models())})")
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
    return ExperimentConfig.from_file(path, overrides)  # names a missing file, a folder, a bad suffix


def _cmd_train(args: argparse.Namespace) -> int:
    from longiseg.engine.distributed import launch_rank
    from longiseg.workflows.train import run_training

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    # --data and --output as the last overrides: the file's values are replaced before the config is checked (an
    # empty trainer.output_dir in the file was refused although --output gave one); JSON quoting keeps any path a
    # string
    folders = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in (("data.root", args.data),
                                                                 ("trainer.output_dir", args.output)) if value]
    quiet = ["trainer.progress_bar=false"] if args.no_progress else []
    cfg = _load_experiment(args.config, [*args.overrides, *folders, *quiet])
    check_output_folder(cfg.trainer.output_dir, "--output")
    if args.data is not None:  # named as typed (it was "data.root ... does not exist", the field it overrides)
        check_input_folder(args.data, "--data")
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    if launch_rank() == 0:  # under torchrun: rank 0 reports
        print(f"finished: {result.summary()}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from longiseg.utils.device import resolve_device
    from longiseg.workflows.tune import TUNING_FILE, run_tuning

    device = resolve_device(args.device, name="--device")
    run = check_input_folder(args.run, "run folder")
    # the mode bits too: os.access says yes to root whatever they are, and tune would write into a chmod a-w run
    if not os.access(run, os.W_OK) or not run.stat().st_mode & stat.S_IWUSR:
        raise PermissionError(f"run folder {run} is not writable (tune records its choice there)")
    sel = run_tuning(run, checkpoint=args.checkpoint, data_root=args.data, device=device,
                     **({} if args.objective is None else {"objective": args.objective}),
                     progress=not args.no_progress)
    if sel is None:
        print(f"no validation patient has new lesions: threshold kept; see {run / TUNING_FILE}")
    else:
        print(f"progression threshold {sel.threshold:g} ({sel.objective} {sel.score:.3f} on "
              f"{sel.num_progression + sel.num_stable} validation follow-ups; {sel.default_score:.3f} at "
              f"{sel.default:g}); recorded in {run / Path(args.checkpoint).name} and {run / TUNING_FILE}")  # RUN/x.pt: x.pt
    return 0


#: Options of ``cohort`` and ``demo`` that set the DemoConfig field of the same name.
_DEMO_FLAGS = ("num_patients", "num_test", "epochs", "steps_per_epoch", "seed", "jobs", "threads")


def _demo_config(args: argparse.Namespace, **settings: Any) -> Any:
    """The DemoConfig of ``cohort``/``demo``; a default --num-test that the given --num-patients cannot hold out is
    named as the default (the message named only the config field)."""
    from longiseg.utils.config import ConfigError
    from longiseg.workflows.demo import DemoConfig

    try:
        return DemoConfig(**settings)
    except ConfigError as err:
        if args.num_test is None and "num_test must be" in str(err):
            raise ConfigError(f"{err}: the default --num-test is the demo's; pass a smaller --num-test for "
                              f"{settings.get('num_patients')} patients") from None
        text = str(err).removeprefix("DemoConfig: ")
        for key in _DEMO_FLAGS:  # the option as the user typed it, not the config field behind it
            if text.startswith(f"{key} ") and getattr(args, key, None) is not None:
                raise ConfigError(f"--{key.replace('_', '-')}{text[len(key):]}") from None
        raise


def _cmd_cohort(args: argparse.Namespace) -> int:
    from longiseg.workflows.demo import demo_cohort_config, write_cohort

    sizes = {k: v for k, v in (("num_patients", args.num_patients), ("num_test", args.num_test)) if v is not None}
    cfg = _demo_config(args, spacing=args.spacing, seed=args.seed, **sizes)  # the demo's sizes unless given
    out = check_output_folder(args.output, "OUT")
    if out.exists() and not folder_is_empty(out) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace the cohort, train and "
                              "test folders in it")
    if any(o.split("=", 1)[0].strip() in ("num_patients", "spacing", "seed") for o in args.overrides):
        raise ValueError("--set cannot change num_patients, spacing or seed: use --num-patients, --spacing, --seed")
    cohort_cfg = demo_cohort_config(cfg).with_overrides(args.overrides)  # checked before anything is written
    split = write_cohort(out, cohort_cfg, cfg.num_test, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"cohort {out / 'cohort'} ({cfg.num_patients} patients); training patients in {out / 'train'}, "
          f"{len(split['test'])} held-out test patients in {out / 'test'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from longiseg.engine.checkpoint import build_model_from_checkpoint, load_model
    from longiseg.utils.device import resolve_device
    from longiseg.workflows.config import ExperimentConfig, InferenceConfig
    from longiseg.workflows.predict import run_prediction, threshold_note

    device = resolve_device(args.device, name="--device")
    if args.overwrite and args.skip_existing:
        raise ValueError("--overwrite and --skip-existing exclude each other")
    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        raise IsADirectoryError(f"--checkpoint {ckpt} is a folder; give the checkpoint file (e.g. {ckpt / 'best.pt'})")
    if not ckpt.is_file():
        raise FileNotFoundError(f"--checkpoint {ckpt} does not exist")
    if not Path(args.input).is_dir():
        raise FileNotFoundError(f"--input {args.input} is not a folder")
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config} does not exist")
    check_output_folder(args.output, "--output")
    registered = None if args.native is None else Path(args.native or args.input)
    # before the checkpoint loads (seconds): run_prediction makes the same check
    check_separate_folders(args.output, "output folder", {"input": args.input, "registered": registered})
    if registered is not None:  # before the model loads: SimpleITK and the register output
        from longiseg.registration.grid import require_simpleitk

        require_simpleitk()
        if not registered.is_dir():
            raise FileNotFoundError(f"--native {registered} is not a folder (give the output of longiseg register)")
    ignored = [o for o in args.overrides if o.split("=", 1)[0].strip().startswith("model.")]
    if ignored:  # the architecture (and its weights) is the checkpoint's, with or without --config
        raise ValueError(f"--set {ignored[0]}: predict builds the model from --checkpoint, so model.* settings "
                         "do not apply (the scan backend follows LONGISEG_SCAN_BACKEND or the device)")
    if args.config is not None:  # explicit settings win over the checkpoint's own
        cfg = _load_experiment(args.config, args.overrides)
        model = build_model_from_checkpoint(ckpt)
        inference, modalities = cfg.inference, cfg.data.modalities
        print(f"settings from {args.config}")
    else:
        model = load_model(ckpt)  # the checkpoint describes itself (an old one without a spec: a clear error)
        if not model.spec.trained:
            raise ValueError(f"checkpoint {ckpt} does not record how to use the model (modality order, window, "
                             "post-processing): it was not written by longiseg train; pass --config with the "
                             "experiment file of its training")
        # --set inference.progression_threshold=0.4 (or threshold=..., the baseline's) adjusts the recorded settings
        # (keys without the section are read as inference.*; messages name the full key)
        for o in args.overrides:  # named as typed (they were named with "inference." in front)
            if "=" not in o:  # e.g. the "48]" of an unquoted "[32, 48]"
                raise ValueError(f"--set {o!r} must look like key=value (a value with spaces needs quotes, e.g. "
                                 "--set 'inference.patch_size=[32, 48]')")
            key = o.split("=", 1)[0]
            if not all(key.strip().split(".")):  # "=5", "inference.=5"
                raise ValueError(f"--set {o!r}: empty key component in {key!r} (e.g. inference.threshold=0.4)")
        foreign = [o.strip() for o in args.overrides
                   if "." in o.split("=", 1)[0] and not o.strip().startswith("inference.")]
        if foreign:  # e.g. trainer.max_epochs=10: read as inference.trainer, the message named a key never given
            raise ValueError(f"--set {foreign[0]}: predict takes inference settings (inference.KEY=VALUE, e.g. "
                             "inference.progression_threshold=0.4) unless --config gives the experiment")
        sets = [o.strip() if o.strip().startswith("inference.") else f"inference.{o.strip()}" for o in args.overrides]
        inference = ExperimentConfig(inference=InferenceConfig.from_dict(model.spec.inference)).with_overrides(
            sets).inference
        modalities = None
        given = f" and --set {' '.join(args.overrides)}" if args.overrides else ""
        print(f"settings from the checkpoint{given}: modalities {list(model.spec.modalities or [])}, window "
              f"{inference.patch_size}, thresholds baseline {inference.threshold:.3g} / progression "
              f"{inference.progression_cut:.3g}{threshold_note(model.spec, inference)}")
    run_prediction(model, args.input, args.output, inference, modalities=modalities, overwrite=args.overwrite,
                   skip_existing=args.skip_existing, device=device, registered_dir=registered,
                   progress=not args.no_progress)
    native = "" if registered is None else " (masks on the original grids in CASE/native/)"
    print(f"predictions written to {args.output}{native}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from longiseg.metrics.evaluate import REPORT_FILES, evaluate_folder, write_report
    from longiseg.metrics.protocol import get_protocol
    from longiseg.metrics.report import format_paper_table

    if len(args.folders) < 2:
        swallowed = [n for n in args.names or [] if Path(n).is_dir()]
        if swallowed:  # `--names A B PRED GT`: nargs="+" takes everything after it
            raise ValueError(f"--names took the folders given after it ({', '.join(swallowed)}); give --names "
                             "after the folders, or end its list with --")
        raise ValueError("give at least one prediction folder and then the reference folder")
    *preds, gt = args.folders
    blank = [n for n in args.names or [] if not n.strip()]
    if blank:  # the report's rows and columns are named by them
        raise ValueError(f"--names {blank[0]!r}: a model name must not be empty or blank")
    names = args.names or [Path(p).name for p in preds]
    if len(names) != len(preds):
        raise ValueError(f"--names needs one name per prediction folder ({len(preds)}), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}; use --names")
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    if args.out:
        out = check_output_folder(args.out, "--out")
        for i, folder in enumerate(args.folders):
            check_separate_folders(out, "--out", {"reference" if i == len(preds) else "prediction": folder})
        clash = [str(out / f) for f in REPORT_FILES if (out / f).exists()]
        if clash and not args.overwrite:
            raise FileExistsError(f"--out {out} already holds a report ({', '.join(clash[:3])}); "
                                  "pass --overwrite to replace it")
        if not args.no_figures:  # before the cases are read
            from longiseg.utils.plotting import require_matplotlib

            require_matplotlib("the box plot (boxplot.png)", "pass --no-figures for the tables only")
    if args.min_lesion_volume is not None and not 0 <= args.min_lesion_volume < float("inf"):
        raise ValueError(f"--min-lesion-volume must be a finite volume in mm^3 >= 0, got {args.min_lesion_volume}")
    if args.iou_threshold is not None and not 0 <= args.iou_threshold < 1:
        raise ValueError(f"--iou-threshold must lie in [0, 1), got {args.iou_threshold}")
    overrides = {k: v for k, v in (("min_lesion_volume_mm3", args.min_lesion_volume), ("matching", args.matching),
                                   ("iou_threshold", args.iou_threshold)) if v is not None}
    prot = get_protocol(args.protocol).with_overrides(**overrides)
    results = [evaluate_folder(p, gt, protocol=prot, model=n, progress=not args.no_progress)
               for p, n in zip(preds, names)]
    if args.out:
        text = write_report(results, args.out, overwrite=args.overwrite, figures=not args.no_figures)
    else:
        text = format_paper_table([r.table for r in results], reference=names[0] if len(names) > 1 else None)
    print(text)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from longiseg.workflows.demo import run_demo

    kw = {"output_dir": args.output, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.quick:
        kw.update(num_patients=8, num_test=2, epochs=2, steps_per_epoch=5)
    for key in _DEMO_FLAGS:
        val = getattr(args, key)  # threads: `longiseg --threads N demo` (the demo sets each stage's own count)
        if val is not None:
            kw[key] = val
    cfg = _demo_config(args, **kw)  # every setting is checked here, before the cohort is written
    check_output_folder(cfg.output_dir, "--output")
    summary = run_demo(cfg)
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


def _benchmark_folders() -> list[Path]:
    """Where ``longiseg bench`` looks for the ``benchmarks/`` folder of a source checkout, in order.

    The checkout this package was imported from (an editable install), then ``./benchmarks``. A wheel does not
    ship the benchmarks.
    """
    return [Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]


def _cmd_bench(args: argparse.Namespace) -> int:
    searched = _benchmark_folders()
    script = next((d / "bench_mixers.py" for d in searched if (d / "bench_mixers.py").is_file()), None)
    if script is None:
        raise FileNotFoundError(
            "the benchmarks are not part of the installed package; in a source checkout of longiseg run "
            "'make bench' or 'python benchmarks/bench_mixers.py --quick' (looked in "
            + ", ".join(str(d) for d in searched) + ")")
    if args.plot is not None:
        _check_writable_file(args.plot, "--plot")  # before the benchmark's minutes, not after them
    cmd = [sys.executable, str(script), *(["--quick"] if args.quick else []),
           *(["--plot", args.plot] if args.plot else []),
           *(["--threads", str(args.threads)] if args.threads is not None else [])]  # longiseg --threads N bench
    child = subprocess.Popen(cmd)
    try:
        return child.wait()
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated): the benchmark ends with this process
        _stop_child(child, forward=isinstance(err, Terminated))
        raise


def _stop_child(child: subprocess.Popen, *, forward: bool, grace_s: float = 5.0) -> None:
    """End ``child`` when this process is interrupted or terminated: wait up to ``grace_s`` for it to end on the
    Ctrl-C it received too (not when ``forward``: it has received nothing), then terminate it, then kill it."""
    if not forward:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)
    for stop in (child.terminate, child.kill):
        if child.poll() is not None:
            return
        stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)


def _check_writable_file(path: str, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless a file can be written at ``path``; nothing is created (the
    writer creates a missing folder: a run that fails first leaves none behind)."""
    import tempfile

    if not path.strip():  # "" was taken as no file: the benchmark ran its minutes and wrote nothing
        raise ValueError(f"{name} must be a file name, got {path!r}")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{name} {path} is a folder; give a file name")
    try:
        folder = check_output_folder(target.parent, name)
        if folder.is_dir():
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as err:
        raise ValueError(f"{name} {path} cannot be written ({err.strerror or err})") from None


def import_user_modules(modules: Sequence[str]) -> None:
    """Import the modules of ``--import`` (e.g. ones that register models), looked up as ``python -m`` would:
    the current folder, then installed packages and ``PYTHONPATH``.

    Raises:
        ValueError: a module that cannot be found (naming it and where it was looked for), or one that imports a
            missing module.
    """
    import importlib

    cwd = os.getcwd()
    if modules and cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        if not module.strip() or module.startswith(".") or "/" in module or "\\" in module:
            raise ValueError(f"--import takes a module name such as my_models or pkg.models, got {module!r}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is None or not (err.name == module or module.startswith(err.name + ".")):
                raise ValueError(f"--import {module}: {err} (a module it imports is missing)") from err
            raise ValueError(f"--import {module}: no module named {err.name!r} in the current folder ({cwd}), the "
                             "installed packages or PYTHONPATH") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``longiseg`` command."""
    import platform

    import torch

    from longiseg._version import __version__

    parser = _Parser(prog="longiseg", description="Longitudinal lesion segmentation (SegMaST and baselines).")
    parser.add_argument("--version", action="version", help="show the versions of longiseg, torch and Python",
                        version=f"longiseg {__version__} (torch {torch.__version__}, Python "
                                f"{platform.python_version()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="show longiseg's debug records")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (results on the CPU are bit-identical for one thread count)")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also LONGISEG_DEBUG=1)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): a module of yours that registers models with "
                             "register_model, found in the current folder, an installed package or PYTHONPATH")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("pattern", nargs="?", default="", help="wildcard, e.g. 'segmast*'")
    p.add_argument("--dim", choices=["2.5D", "3D", "2D"], default=None,
                   help="only the models of this input kind (2.5D slices, 3D patches, or 2D)")
    p.add_argument("--no-params", action="store_true", help="do not build models to count parameters")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model from an experiment config (YAML/JSON)")
    p.add_argument("config", type=expand_home, nargs="?", default=None,
                   help="experiment config file (longiseg demo writes some to OUTPUT/configs; a source checkout "
                        "has more in examples/configs)")
    p.add_argument("--data", type=expand_home, default=None, help="cohort folder (overrides data.root)")
    p.add_argument("--output", type=expand_home, default=None, help="run folder (overrides trainer.output_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/last.pt (a fresh start when OUTPUT holds none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUTPUT that already holds a run (its checkpoints and tuning are removed "
                        "when the new run starts: train into another folder to keep them until it is done)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (trainer.progress_bar=false)")
    _add_overrides(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="choose a run's progression threshold on its validation patients "
                                    "(recorded in the checkpoint; predict uses it)")
    p.add_argument("run", type=expand_home, help="run folder written by 'longiseg train'")
    p.add_argument("--checkpoint", type=expand_home, default="best.pt",
                   help="checkpoint of the run to tune (default best.pt)")
    p.add_argument("--data", type=expand_home, default=None,
                   help="folder of the validation cases (default: the run's data root)")
    p.add_argument("--objective", default=None, choices=["balanced", "lesion_f1"],
                   help="what the threshold maximises on the validation patients: balanced (the default: "
                        "progression lesion F1 and stable patients left clear, equally weighted) or lesion_f1 "
                        "(progression lesion F1 alone, the default up to 0.3.1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in a batch job's log)")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("cohort", help="write the demo cohort and its train/test split (the demo's first stage)")
    p.add_argument("output", type=expand_home, metavar="OUT", help="folder for cohort/, train/ and test/")
    p.add_argument("--num-patients", dest="num_patients", type=int, default=None,
                   help="number of patients (default: the demo's, 32)")
    p.add_argument("--num-test", dest="num_test", type=int, default=None,
                   help="held-out test patients, half progressing (default: the demo's, 10)")
    p.add_argument("--spacing", type=int, default=2, choices=range(1, 5), metavar="{1,2,3,4}",
                   help="isotropic voxel size in whole mm, 1 to 4 (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort and its split (default 0)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in a batch job's log)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="generator settings other than the demo's (DemoCohortConfig fields), e.g. "
                        "shrinking_lesions=[0,2] max_translation=1.0 new_lesions=[1,3]")
    p.set_defaults(func=_cmd_cohort)

    p = sub.add_parser("predict", help="predict a folder of cases with a checkpoint (NIfTI masks, probabilities, entropy)")
    p.add_argument("--checkpoint", type=expand_home, required=True,
                   help="checkpoint written by 'longiseg train' (last.pt / best.pt)")
    p.add_argument("--input", type=expand_home, required=True, help="folder of cases in the longiseg layout")
    p.add_argument("--output", type=expand_home, required=True, help="prediction folder")
    p.add_argument("--config", type=expand_home, default=None,
                   help="experiment config whose data/inference settings replace the checkpoint's own (needed only "
                        "for checkpoints of longiseg < 0.2, which do not describe themselves)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-existing", action="store_true", help="skip cases that already have outputs")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--native", type=expand_home, nargs="?", const="", default=None, metavar="REGISTERED",
                   help="also write each case's masks on the original grids of its raw scans into OUT/CASE/native/, "
                        "with the transforms 'longiseg register' saved in REGISTERED/CASE/registration/ (default: "
                        "the --input folder); needs longiseg[register]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in a batch job's log)")
    _add_overrides(p, "inference settings replacing the checkpoint's, e.g. inference.progression_threshold=0.4 "
                      "min_lesion_mm3=10 (a key without a section is an inference.* one; with --config, the "
                      "config's keys but model.*)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="evaluate prediction folder(s) against a reference folder",
                       description="Evaluate prediction folder(s), one per model, against the reference folder "
                                   "(the last argument): paper-style table, t-tests, box plots.")
    p.add_argument("folders", type=expand_home, nargs="*", metavar="PRED_DIR",
                   help="prediction folder(s), one per model, then the reference folder (GT_DIR)")
    p.add_argument("--out", "--output", dest="out", type=expand_home, default=None,
                   help="write per-case/summary CSV+JSON, table and box plot here")
    p.add_argument("--overwrite", action="store_true", help="replace a report that --out already holds")
    p.add_argument("--no-figures", action="store_true", help="tables only, no box plot (no matplotlib needed)")
    p.add_argument("--protocol", default="segmast", choices=["segmast", "tdw"],
                   help="the evaluation protocol whose rules apply (default segmast; docs/metrics.md)")
    p.add_argument("--min-lesion-volume", "--min-volume", dest="min_lesion_volume", type=float, default=None,
                   help="override the protocol's minimum lesion volume (mm^3)")
    p.add_argument("--matching", default=None, choices=["iou", "iou_global", "overlap"],
                   help="override the protocol's lesion matching rule")
    p.add_argument("--iou-threshold", type=float, default=None, help="override the protocol's IoU threshold")
    p.add_argument("--names", nargs="+", default=None, help="model names (default: prediction folder names)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in a batch job's log)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="the main job: the whole pipeline on the embedded demo cohort")
    p.add_argument("--output", type=expand_home, default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, about a minute)")
    p.add_argument("--num-patients", dest="num_patients", type=int, default=None, help="default 32")
    p.add_argument("--num-test", dest="num_test", type=int, default=None,
                   help="held-out test patients, half progressing (default 10)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 48)")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=None,
                   help="optimizer steps per epoch (default 25)")
    p.add_argument("--seed", type=int, default=None, help="seed of the cohort, the split and training (default 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="models trained at the same time, one process each (default: one per model where the "
                        "machine has a core for each); the results do not depend on it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in a batch job's log)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="Mamba (MaST) vs attention mixer benchmark: time and memory vs tokens",
                       description="Run benchmarks/bench_mixers.py of a source checkout of longiseg (the benchmarks "
                                   "are not installed with the package; 'make bench' runs all of them).")
    p.add_argument("--quick", action="store_true", help="small sizes only (about a minute on a 2-core CPU)")
    p.add_argument("--plot", type=expand_home, default=None, help="write the time/memory plot (PNG) here")
    p.set_defaults(func=_cmd_bench)
    from longiseg.workflows import lesions, register  # sub-commands that own their parser and handler
    lesions.add_parser(sub)
    register.add_parser(sub)
    return parser


def _debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` among ``argv``, or ``LONGISEG_DEBUG`` on (``ValueError`` for a value that is neither on nor off)."""
    return "--debug" in argv or env_flag("LONGISEG_DEBUG")


#: How torch re-raises an exception of a DataLoader worker (or pin-memory thread): its type with the worker's
#: formatted traceback as the message.
_WORKER_ERROR = re.compile(r"Caught \w+ in [^\n]*\nOriginal Traceback \(most recent call last\):\n")
_EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*)(?:: (.*))?\Z", re.S)


def _worker_message(text: str) -> str | None:
    """The original exception's message inside torch's re-raised DataLoader worker error (``None`` for other
    messages): the last exception of the traceback text, with its type name only where the message alone is bare
    (a ``KeyError``'s key, no message)."""
    if not _WORKER_ERROR.match(text):
        return None
    lines = text.rsplit("Traceback (most recent call last):\n", 1)[-1].split("\n")
    start = next((i for i, line in enumerate(lines) if line and not line[0].isspace()), None)
    if start is None:
        return None
    exc = "\n".join(lines[start:]).strip()
    found = _EXCEPTION_LINE.match(exc)
    if found is None:
        return exc
    name, message = found.groups()
    return message if message and name.rsplit(".", 1)[-1] != "KeyError" else exc


def _one_line(err: BaseException) -> str:
    original = _worker_message(str(err))
    if original is not None:  # an error in a DataLoader worker: its own message, not the worker's traceback
        return " ".join(original.split())
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        text = f"no space left on device ({text}); free space and run again (finished outputs are complete)"
    return text


def _usable_standard_streams() -> Callable[[], None]:
    """Standard streams a command can write to: a closed one (``2>&-``: Python's ``sys.stderr`` is ``None``, and
    the progress bars failed, so nothing was done) is replaced by ``os.devnull``, and text that the stream's encoding
    cannot hold (a path in ``PYTHONIOENCODING=ascii``) is escaped as on stderr, not an error after the work is done.
    Returns what puts the streams back as they were (for a caller of :func:`main` in its own process)."""
    undo: list[Callable[[], None]] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed by the undo
            setattr(sys, name, devnull)
            undo.append(lambda name=name, devnull=devnull: (setattr(sys, name, None), devnull.close()))
        elif getattr(stream, "errors", None) == "strict" and callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors="backslashreplace")
            undo.append(lambda stream=stream: stream.reconfigure(errors="strict"))

    def restore() -> None:
        for put_back in reversed(undo):
            put_back()

    return restore


def _stdout_broken() -> bool:
    """Whether stdout's reader went away (what it holds cannot be written: ``BrokenPipeError``), as opposed to a
    broken pipe of something else the command wrote to (a child process, a socket), which is a failure."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a file (a caller's buffer): not where a pipe broke
        return False
    if not hasattr(select, "poll"):  # (Windows) the common case: the output piped into `head`
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))  # no reader: POLLERR


def _discard_stdout() -> None:
    """Point stdout at ``os.devnull`` after its reader went away, so that the interpreter's flush at exit does not
    report the broken pipe again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _interrupted(name: str, err: KeyboardInterrupt) -> int:
    """Report Ctrl-C or SIGTERM (:class:`Terminated`) in one line; the exit code (130, 143)."""
    terminated = isinstance(err, Terminated)
    print(f"{name}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``longiseg`` console script.

    Returns:
        The exit code: 0 on success, 2 for usage and input errors, 1 for other failures, 130 on Ctrl-C, 143 on
        SIGTERM, 141 (silently) when the reader of the output went away (``longiseg models | head -1``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    restore_streams = _usable_standard_streams()
    try:
        return _main(argv)
    finally:
        with contextlib.suppress(OSError, ValueError):  # (a broken stdout was pointed at os.devnull)
            restore_streams()


def _main(argv: list[str]) -> int:
    """:func:`main` once the standard streams are usable."""
    try:
        debug = _debug_requested(argv)
        env_flag(DEBUG_CHECKS_ENV)  # a typo there fails now, not at the first training step
    except ValueError as err:
        print(f"longiseg: error: {err}", file=sys.stderr)
        return 2
    argv = [a for a in argv if a != "--debug"]
    name = "longiseg"  # "longiseg COMMAND" once the arguments are parsed
    # SIGTERM raises Terminated (a KeyboardInterrupt) while main runs, unless someone else chose what it does
    in_main = threading.current_thread() is threading.main_thread()  # (only there may signal handlers be set)
    on_term = signal.getsignal(signal.SIGTERM) if in_main else None
    if on_term == signal.SIG_DFL:
        under_torchrun = ("TORCHELASTIC_RUN_ID" in os.environ
                          and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"))
        signal.signal(signal.SIGTERM, _exit_terminated if under_torchrun else _raise_terminated)
    finalizers = sys.unraisablehook = _FinalizerInterrupts(sys.unraisablehook)
    try:
        parser = build_parser()  # imports workflow modules: seconds, in which Ctrl-C is handled like later on
        args = parser.parse_args(argv)  # usage errors: _Parser prints one line and exits with 2
        name = f"longiseg {args.command}"
        from longiseg.engine.distributed import launch_rank
        from longiseg.utils.logging import show_log_records

        # under torchrun the ranks but the first show warnings and errors only: rank 0 reports the run
        show_log_records(logging.WARNING if launch_rank() != 0 else logging.DEBUG if args.verbose else logging.INFO)
        if args.threads is not None:
            if not 1 <= args.threads <= MAX_THREADS:  # torch overflows or allocates a pool per thread beyond
                raise ValueError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        if args.command in _RUNS_MODELS:  # an unknown name: said now, not after the demo wrote its cohort
            from longiseg.ssm import environment_backend

            environment_backend()  # whether the named backend runs depends on the device: checked where it is known
        import_user_modules(args.imports)
        code = args.func(args)
        gc.collect()  # finalizers still pending (in reference cycles) run while an interrupt in them is heard
        if finalizers.interrupt is not None:
            raise finalizers.interrupt
        return code
    except KeyboardInterrupt as err:
        finalizers.ending = True
        if debug:
            raise
        return _interrupted(name, err)
    except Exception as err:  # noqa: BLE001 - the one place that turns any failure into a message
        if debug:
            raise
        if finalizers.interrupt is not None:  # the failure followed an interrupt (its clean-up, say): report that
            finalizers.ending = True
            return _interrupted(name, finalizers.interrupt)
        if isinstance(err, BrokenPipeError) and _stdout_broken():  # the reader went away (| head): nothing to say
            _discard_stdout()
            return EXIT_BROKEN_PIPE
        if isinstance(err, _INPUT_ERRORS):
            print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{name}: error: {_one_line(err)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        # the command is over and reported: a second Ctrl-C (or SIGTERM) during the clean-up below (a DataLoader's
        # workers ending) ended it in a traceback; now it is ignored until the clean-up is done
        on_int = signal.getsignal(signal.SIGINT) if in_main else None
        try:
            if on_int is not None:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if on_term == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            gc.collect()  # what the error's traceback held (a DataLoader iterator and its workers) ends under the hook
        except KeyboardInterrupt:  # one that was pending as the clean-up began (signal.signal runs it)
            pass
        finally:
            if on_int is not None:
                signal.signal(signal.SIGINT, on_int)
            finalizers.active = False  # passes everything on from now on (a hook the command chained to it keeps)
            if sys.unraisablehook is finalizers:  # (not one that the command installed meanwhile)
                sys.unraisablehook = finalizers.previous
            if on_term == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
