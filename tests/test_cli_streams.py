"""The command line's manners towards its streams, signals and the rest of the process: a reader that goes away,
closed or narrow standard streams, a second Ctrl-C during the clean-up, log levels that leave other libraries'
debug records hidden, and global options that reach every command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from longiseg import cli
from longiseg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}  # type: ignore[dict-item]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, **kwargs)


def test_a_reader_that_goes_away_ends_the_command_silently() -> None:
    # `longiseg models | head -1`: "error: [Errno 32] Broken pipe (run with --debug ...)" and exit 1
    code = "import sys; from longiseg.cli import main; sys.exit(main(['models']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, cli.EXIT_BROKEN_PIPE)  # 0: everything fitted in the pipe's buffer
    assert "error" not in err and "Broken pipe" not in err and "Traceback" not in err


def test_a_broken_pipe_is_exit_141_without_a_message(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def reader_gone(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_models", reader_gone)
    monkeypatch.setattr(cli, "_discard_stdout", lambda: None)  # (pytest's captured stdout has no pipe to replace)
    monkeypatch.setattr(cli, "_stdout_broken", lambda: True)  # as when stdout's reader went away
    assert main(["models"]) == cli.EXIT_BROKEN_PIPE == 141
    assert capsys.readouterr().err == ""
    # a broken pipe of something else the command wrote to (a child process) is a failure, said as one
    monkeypatch.setattr(cli, "_stdout_broken", lambda: False)
    assert main(["models"]) == cli.EXIT_FAILURE
    assert "longiseg models: error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_a_closed_stderr_does_not_stop_the_work() -> None:
    # `longiseg cohort DIR 2>&-`: the progress bars wrote to None, "error: 'NoneType' object has no attribute
    # 'write'" and nothing was done
    code = ("import sys; sys.stderr = None; from longiseg import cli; from tqdm.auto import tqdm; "
            "cli._cmd_models = lambda args: sum(1 for _ in tqdm(range(3))) - 3; print('rc', cli.main(['models']))")
    proc = _run(code)
    assert proc.returncode == 0 and b"rc 0" in proc.stdout


def test_main_puts_the_streams_back_as_it_found_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a caller of main in its own process: a stream main replaced or made lenient is as it was afterwards."""
    import io

    strict = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", strict)
    monkeypatch.setattr(sys, "stderr", None)
    monkeypatch.setattr(cli, "_cmd_models", lambda args: print("r\u00fan") or 0)
    assert main(["models"]) == 0
    assert sys.stdout is strict and strict.errors == "strict" and sys.stderr is None
    strict.flush()
    assert strict.buffer.getvalue() == b"r\\xfan\n"


def test_text_the_output_encoding_cannot_hold_is_escaped_not_an_error_after_the_work(tmp_path: Path) -> None:
    # PYTHONIOENCODING=ascii and an output folder "rún": the run finished, then "error: 'ascii' codec can't
    # encode" and exit 2 (an input error) stopped the `train && predict` that followed
    code = ("import sys; from longiseg import cli; cli._cmd_models = lambda args: print('r\\u00fan') or 0; "
            "sys.exit(cli.main(['models']))")
    proc = _run(code, env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"r\\xfan"


def test_a_second_ctrl_c_during_the_clean_up_is_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # the first Ctrl-C was reported ("interrupted"), a second one while the DataLoader's workers ended (the
    # clean-up's gc.collect) escaped main as a KeyboardInterrupt traceback
    calls = []

    def collect() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the first Ctrl-C, during the command
        signal.raise_signal(signal.SIGINT)  # the second, during the clean-up
        return 0

    monkeypatch.setattr(cli, "gc", types.SimpleNamespace(collect=collect))
    monkeypatch.setattr(cli, "_cmd_models", lambda args: 0)
    before = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["models"])
    except KeyboardInterrupt:
        pytest.fail("the second interrupt escaped main")
    assert rc == cli.EXIT_INTERRUPTED and capsys.readouterr().err == "longiseg models: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is heard again afterwards


def test_verbose_shows_longisegs_debug_records_not_other_libraries() -> None:
    # -v set the root logger to DEBUG: 30,761 "DEBUG numba.core..." lines in one predict
    code = ("import logging; from longiseg.cli import main; main(['-v', 'models']); "
            "logging.getLogger('numba.core.ssa').debug('numba detail'); "
            "logging.getLogger('matplotlib.font_manager').info('font detail'); "
            "logging.getLogger('nibabel').warning('nibabel warning'); "
            "logging.getLogger('longiseg.x').debug('longiseg detail')")
    err = _run(code).stderr.decode()
    assert "longiseg detail" in err and "nibabel warning" in err
    assert "numba detail" not in err and "font detail" not in err


def test_global_threads_reach_the_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `longiseg --threads 2 demo`: the demo's stages set their own count from DemoConfig.threads (default 1)
    import longiseg.workflows.demo as demo

    seen = []

    def run_demo(cfg: object) -> dict:
        seen.append(cfg)
        raise KeyboardInterrupt  # (enough: the config is what is checked)

    monkeypatch.setattr(demo, "run_demo", run_demo)
    import torch

    threads = torch.get_num_threads()
    try:
        assert main(["--threads", "2", "demo", "--output", str(tmp_path / "d")]) == cli.EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)
    assert seen and seen[0].threads == 2


def test_a_global_option_after_the_command_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    # `longiseg models -v`: "unrecognized arguments: -v (see longiseg models --help)", a page that lists no -v
    with pytest.raises(SystemExit) as exc:
        main(["models", "-v"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "-v, --threads N and --import MODULE go before the command (longiseg OPTION models ...)" in \
        capsys.readouterr().err


def test_report_commands_take_output_and_both_names_of_the_minimum_volume() -> None:
    # --output in train/predict/demo but only --out in evaluate/lesions; --min-lesion-volume in evaluate,
    # --min-volume in lesions
    parser = cli.build_parser()
    for command in (["evaluate", "p", "g"], ["lesions", "m"]):
        for out in ("--out", "--output"):
            for volume in ("--min-volume", "--min-lesion-volume"):
                args = parser.parse_args([*command, out, "r", volume, "5"])
                assert str(args.out) == "r"
                assert 5.0 in (getattr(args, "min_volume", None), getattr(args, "min_lesion_volume", None))
