"""Smoke tests of the benchmark tooling in ``benchmarks/`` and of ``longiseg bench`` (no timing assertions: the
machine may be loaded)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_helpers import running, wait_for

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # what ``python benchmarks/bench_x.py`` does for the scripts

import bench_metrics  # noqa: E402, F401 - found in sys.modules by the tests
import bench_mixers  # noqa: E402
import bench_models  # noqa: E402
import bench_registration  # noqa: E402, F401
import bench_selective_scan  # noqa: E402
import bench_triplanar  # noqa: E402, F401 - found in sys.modules by the tests
import longiseg_bench as lb  # noqa: E402
import run_all  # noqa: E402, F401

from longiseg import cli  # noqa: E402


def test_time_interleaved_runs_round_robin_and_returns_measurements() -> None:
    order: list[str] = []
    measured = lb.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                   rounds=3, min_run_time=0.001)
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == ["a", "b"] * 3  # one block of calls per callable and round, interleaved
    assert list(measured) == ["a", "b"]
    assert all(m.times and m.median > 0 for m in measured.values())


def test_time_interleaved_keeps_the_thread_count() -> None:
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lb.time_interleaved({"x": lambda: seen.append(torch.get_num_threads())}, rounds=1, min_run_time=0.0)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {2}  # torch's Timer defaults to one thread; the benchmarks must not


def test_time_interleaved_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        lb.time_interleaved({})
    with pytest.raises(TypeError, match="callable"):
        lb.time_interleaved({"x": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="rounds"):
        lb.time_interleaved({"x": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="min_run_time"):
        lb.time_interleaved({"x": lambda: None}, min_run_time=-1.0)


def test_header_prints_machine_torch_backend_threads(capsys: pytest.CaptureFixture[str]) -> None:
    info = lb.print_header("cpu", {"benchmark": "smoke"})
    out = capsys.readouterr().out
    for key in ("date", "cpu", "nproc", "load_average", "torch", "threads", "scan_backend", "benchmark"):
        assert f"{key}: " in out and key in info
    assert torch.__version__ in out
    assert any(k in info["scan_backend"] for k in ("PyTorch", "mamba-ssm", "compiled CPU kernel", "Triton"))


def test_format_table_and_row_length_check() -> None:
    table = lb.format_table(["a", "b"], [[1, 0.123456], ["x", None]])
    lines = table.splitlines()
    assert lines[0].startswith("| a") and "0.123" in table and "-" in lines[-1]
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        lb.format_table(["a", "b"], [[1]])


def test_peak_memory_sees_a_large_temporary_buffer() -> None:
    if not lb.enable_cpu_memory_tracking():
        pytest.skip("CPU peak memory needs Linux + glibc")
    nbytes = 64 * 2**20

    def alloc() -> None:
        x = torch.ones(nbytes // 4)  # written, so resident
        del x

    peak = lb.peak_memory(alloc)
    assert peak is not None and 0.9 * nbytes <= peak <= 1.5 * nbytes
    with pytest.raises(TypeError, match="callable"):
        lb.peak_memory(42)  # type: ignore[arg-type]


def test_find_crossing_interpolates_in_log_log() -> None:
    tokens = [100, 400, 1600]
    linear = [1.0, 4.0, 16.0]
    quadratic = [0.1, 1.6, 25.6]  # equals linear at 100 * 10**(1/1) = 1000 tokens
    assert math.isclose(bench_mixers.find_crossing(tokens, quadratic, linear), 1000.0, rel_tol=1e-9)
    assert bench_mixers.find_crossing(tokens, linear, [0.5, 2.0, 8.0]) is None
    assert bench_mixers.find_crossing(tokens, [None, 1.6, 25.6], linear) is not None
    with pytest.raises(ValueError, match="same length"):
        bench_mixers.find_crossing(tokens, linear, [1.0])


def test_build_mixer_shapes_and_unknown_name() -> None:
    x = torch.randn(1, 2, 8, 8, 16)
    for name in bench_mixers.MIXERS:
        assert bench_mixers.build_mixer(name, 16)(x).shape == x.shape
    with pytest.raises(ValueError, match="unknown mixer"):
        bench_mixers.build_mixer("conv", 16)


def test_run_mixer_benchmark_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "mixers.png"
    records = bench_mixers.run_mixer_benchmark(sizes=(8, 16), dim=8, rounds=1, min_run_time=0.0, progress=False,
                                               out_png=png, json_path=tmp_path / "mixers.json")
    out = capsys.readouterr().out
    assert len(records) == 2 * 2 * len(bench_mixers.MIXERS)
    assert all(r.times and r.median > 0 for r in records)
    assert "scan_backend" in out and "forward+backward" in out and "tokens" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "mixers.json").exists()
    with pytest.raises(ValueError, match="unknown mixer"):
        bench_mixers.run_mixer_benchmark(mixers=("nope",))


def test_run_mixer_benchmark_skips_hopeless_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    records = bench_mixers.run_mixer_benchmark(sizes=(4, 8), dim=8, rounds=1, min_run_time=0.0,
                                               mixers=("global_attn",), max_call_seconds=0.0, measure_memory=False,
                                               progress=False)
    big = [r for r in records if r.size == 8]
    assert all(r.skipped and not r.times for r in big)
    assert "skipped" in capsys.readouterr().out


def test_scan_benchmark_interleaved_times_every_method_in_one_process() -> None:
    methods = ["chunked", "reference", "sdpa"]
    medians = bench_selective_scan.interleaved(methods, seqlen=32, dim=8, rounds=2, device="cpu")
    assert list(medians) == methods
    assert all(math.isfinite(t) and t > 0 for t in medians.values())


def test_model_batch_shapes_and_errors() -> None:
    model = torch.nn.Conv2d(2, 2, 1)
    model.in_channels = 2
    images, base, prog = bench_models.model_batch(model, batch=4, patch=(8, 8), timepoints=3)
    assert images.shape == (4, 3, 2, 8, 8) and base.shape == (4, 1, 8, 8) and prog.shape == (4, 2, 1, 8, 8)
    assert prog[:2].sum() == 0 and set(base.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="patch"):
        bench_models.model_batch(model, batch=1, patch=(8,))
    with pytest.raises(ValueError, match="timepoints"):
        bench_models.model_batch(model, batch=1, patch=(8, 8), timepoints=1)


def test_run_model_benchmark_validates_names() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        bench_models.run_model_benchmark(["no_such_model"], 32, 1, 32, 1, reference="no_such_model")
    with pytest.raises(ValueError, match="reference"):
        bench_models.run_model_benchmark(["segmast_ms"], 32, 1, 32, 1, reference="segformer_ms")


def test_matrix_product_flops_counts_products_only() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    layer = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16, requires_grad=True)
    assert lb.matrix_product_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    assert lb.matrix_product_flops(lambda: torch.relu(a).sum()) == 0
    # a linear layer forward (addmm) and backward (input and weight gradients: two mm)
    assert lb.matrix_product_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 16 * 4
    with pytest.raises(TypeError, match="fn must be callable"):
        lb.matrix_product_flops(3)


def test_run_model_benchmark_demo_configurations(capsys: pytest.CaptureFixture[str]) -> None:
    records = bench_models.run_model_benchmark(
        ["demo:SegMaST", "demo:SegFormer"], 32, 1, 32, 1, rounds=1, min_run_time=0.0, reference="demo:SegMaST",
        measure_memory=False, progress=False,
    )
    assert [r.model for r in records] == ["demo:SegMaST", "demo:SegFormer"]
    assert all(not r.error and r.dim == "2.5D" and r.times and r.matmul_flops > 0 for r in records)
    assert records[0].input_shape == (1, 2, 2, 32, 32)
    out = capsys.readouterr().out
    assert "matmul GFLOP" in out and "matmul FLOP/sample vs demo:SegMaST" in out
    with pytest.raises(ValueError, match="demo:SegMaST"):
        bench_models.build_benchmark_model("demo:Nothing")


def test_longiseg_bench_runs_the_checkout_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    argv_file = tmp_path / "argv.txt"
    (folder / "bench_mixers.py").write_text(
        f"import sys\nopen({str(argv_file)!r}, 'w').write(' '.join(sys.argv[1:]))\nraise SystemExit(3)\n")
    monkeypatch.setattr(cli, "_benchmark_folders", lambda: [tmp_path / "absent", folder])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick", "--plot", "x.png"]) == 3  # the script's exit code
    assert argv_file.read_text(encoding="utf-8") == "--quick --plot x.png"
    assert cli.main(["--threads", "1", "bench", "--quick"]) == 3  # longiseg --threads reaches the benchmark
    assert argv_file.read_text(encoding="utf-8") == "--quick --threads 1"


def test_longiseg_bench_without_a_checkout_says_where_the_benchmarks_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_benchmark_folders", lambda: [tmp_path / "benchmarks"])
    assert cli.main(["bench", "--quick"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("longiseg bench: error:") and "\n" not in err
    assert "not part of the installed package" in err and "make bench" in err


def test_the_checkout_has_the_benchmark_longiseg_bench_runs() -> None:
    assert (cli._benchmark_folders()[0] / "bench_mixers.py").is_file()




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("signum", "code", "line"), [
    (signal.SIGTERM, 143, "terminated"),  # kill PID, a scheduler's time limit
    (signal.SIGINT, 130, "interrupted"),  # to longiseg alone, so the benchmark does not see it
])
def test_longiseg_bench_ends_its_benchmark_when_it_is_stopped(tmp_path: Path, signum: int, code: int,
                                                              line: str) -> None:
    """The benchmark process ends with longiseg bench (it ran on on its own): exit 128 + signal, one line."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    pid_file = tmp_path / "bench.pid"
    (folder / "bench_mixers.py").write_text(  # a benchmark that runs until it is stopped
        f"import os, time\nopen({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
        f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\nwhile True:\n    time.sleep(0.05)\n")
    # Ctrl-C raises KeyboardInterrupt as in a terminal, also where the test session was started with SIGINT
    # ignored (a shell's background job inherits SIG_IGN, and Python then leaves SIGINT ignored)
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from pathlib import Path; from longiseg import cli; "
              "cli._benchmark_folders = lambda: [Path(sys.argv[1])]; sys.exit(cli.main(['bench']))")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.DEVNULL, stderr=err)
    child = None
    try:
        wait_for(pid_file.exists, 300, "benchmark process")
        child = int(pid_file.read_text())
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=120) == code
        assert (tmp_path / "stderr.txt").read_text() == f"longiseg bench: {line}\n"
        wait_for(lambda: not running(child), 60, "end of the benchmark process")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


def test_bench_mixers_ctrl_c_is_exit_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(**kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_mixers, "run_mixer_benchmark", interrupted)
    try:
        rc = bench_mixers.main(["--quick"])
    except KeyboardInterrupt:  # (left to itself it would end the test session)
        pytest.fail("Ctrl-C escaped bench_mixers.main as a traceback")
    assert rc == 130 and capsys.readouterr().err == ""


def _fake_scan_runs(monkeypatch: pytest.MonkeyPatch, failing: set[str]) -> None:
    def run(method: str, seqlen: int, *args: object) -> dict:
        return {"error": f"{method} broke"} if method in failing else {"wall": 0.01, "cpu": 0.02, "peak": 1024.0}

    monkeypatch.setattr(bench_selective_scan, "_run", run)


def test_scan_benchmark_exit_status_names_failed_measurements(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # a failed reference crashed the extrapolation with TypeError; all-failed runs exited 0
    _fake_scan_runs(monkeypatch, {"reference"})
    assert bench_selective_scan.main(["--quick", "--device", "cpu", "--lengths", "512",
                                      "--methods", "chunked,reference"]) == 1
    captured = capsys.readouterr()
    assert "reference  error: reference broke" in captured.out
    assert captured.err.strip().endswith("1 measurement(s) failed: reference at L=256: reference broke")
    _fake_scan_runs(monkeypatch, {"mambapy"})  # an optional backend that is not installed: reported, not failed
    assert bench_selective_scan.main(["--quick", "--device", "cpu", "--lengths", "64"]) == 0
    out = capsys.readouterr().out  # shown, but said not to count (it does not fail the run)
    assert "mambapy  error (optional, not counted): mambapy broke" in out and " error:" not in out
    assert "load_average:" in out and "scan_backend:" in out  # the header every benchmark prints
    _fake_scan_runs(monkeypatch, set(bench_selective_scan.METHODS))  # nothing measured at all
    assert bench_selective_scan.main(["--quick", "--device", "cpu", "--lengths", "64"]) == 1
    assert "chunked at L=64: chunked broke" in capsys.readouterr().err


@pytest.mark.parametrize(("script", "args", "message"), [
    ("bench_selective_scan", ["--lengths", "abc"], "argument --lengths: expected comma-separated ints >= 1"),
    ("bench_selective_scan", ["--lengths", "0"], "argument --lengths: expected comma-separated ints >= 1"),
    ("bench_selective_scan", ["--threads", "0"], "argument --threads: expected an int >= 1, got '0'"),
    ("bench_mixers", ["--sizes", "0"], "argument --sizes: expected an int >= 1, got '0'"),
    ("bench_mixers", ["--threads", "0"], "argument --threads: expected an int >= 1, got '0'"),
    ("bench_triplanar", ["--repeats", "0"], "argument --repeats: expected an int >= 1, got '0'"),
    ("bench_models", ["--patch-2d", "0"], "argument --patch-2d: expected an int >= 1, got '0'"),
    ("bench_models", ["--threads", "x"], "argument --threads: expected an int >= 1, got 'x'"),
    ("bench_metrics", ["--repeats", "0"], "argument --repeats: expected an int >= 1, got '0'"),
    ("bench_metrics", ["--lesions", "-1"], "argument --lesions: expected an int >= 1, got '-1'"),
    ("bench_registration", ["--threads", "0"], "argument --threads: expected an int >= 1, got '0'"),
    ("bench_registration", ["--repeats", "0"], "argument --repeats: expected an int >= 1, got '0'"),
    ("bench_mixers", ["--device", "cpux"], "argument --device: expected cpu, cuda or cuda:N, got 'cpux'"),
    ("bench_models", ["--device", "mps"], "argument --device: expected cpu, cuda or cuda:N, got 'mps'"),
    ("bench_triplanar", ["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N, got 'gpu'"),
    ("run_all", ["--device", "cuda:x"], "argument --device: expected cpu, cuda or cuda:N, got 'cuda:x'"),
    ("bench_triplanar", ["--scan-backends", "chunked", "fast"],
     "argument --scan-backends: unknown selective-scan backend 'fast'"),
    ("bench_triplanar", ["--model-kwargs", "[1]"], "argument --model-kwargs: expected a JSON object, got '[1]'"),
])
def test_benchmark_scripts_reject_bad_arguments(script: str, args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sys.modules[script].main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f": error: {message}" in err.strip().splitlines()[-1]


def _run_gpu_checks(tmp_path: Path, python_rules: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run gpu_checks.sh with a fake ``python`` (it logs its arguments to the returned file, then applies the bash
    ``python_rules``, else exits 0) and a fake ``nvidia-smi``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n{python_rules}exit 0\n')
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho fake gpu\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    res = subprocess.run(["bash", str(BENCHMARKS / "gpu_checks.sh"), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=120, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": "python"})
    return res, log


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_checks_records_and_reports_a_failed_step(tmp_path: Path) -> None:
    # a fake interpreter: every step passes but the scan benchmark (all of its measurements failed); no mamba-ssm,
    # no MONAI
    res, log = _run_gpu_checks(tmp_path, '[[ "$*" == *cuda_scan_available* || "$*" == *"import monai"* ]] && exit 1\n'
                                         '[[ "$1" == benchmarks/bench_selective_scan.py ]] && exit 1\n')
    summary = {line.split()[0]: line.split()[1] for line in (tmp_path / "out" / "summary.txt").read_text(encoding="utf-8")
               .splitlines()[1:]}
    assert summary["scan_fwd_bwd"] == "1" and summary["scan_forward"] == "1" and summary["gpu"] == "0"
    assert res.returncode == 1 and "2 step(s) failed (exit code): scan_fwd_bwd(1) scan_forward(1)" in res.stderr
    assert "--methods triton,chunked,sdpa" in log.read_text(encoding="utf-8")  # mamba-ssm only requested where installed
    assert "models_paper_cuda" not in summary
    # without MONAI (an optional extra, absent from some GPU images) DynUNet is left out, not the whole model step
    assert "--models segmast_ms segformer_ms --no-inference" in log.read_text(encoding="utf-8")
    assert "dynunet_2d_ms is left out" in res.stdout and summary["models_paper_triton"] == "0"


def test_gpu_check_models_need_no_io_or_monai_packages(tmp_path: Path) -> None:
    """A lent GPU image may lack nibabel, cc3d and MONAI (and cannot install them): the models that
    gpu_checks.sh times, and the model benchmark's helpers, must import, build and train a step without them
    (an eager cc3d import once made every GPU step fail)."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'nibabel', 'cc3d', 'monai', 'SimpleITK', 'nilearn'}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, _Block())\n", encoding="utf-8")
    code = (
        "import torch, longiseg, bench_models\n"
        "for name in ('segmast_ms', 'segformer_ms'):\n"
        "    model = longiseg.build_model(name, in_channels=2, num_timepoints=2)\n"
        "    out = model(torch.randn(1, 2, 2, 32, 32))\n"
        "    (out.baseline.sum() + out.progression.sum()).backward()\n"
        "try:\n"
        "    longiseg.build_model('dynunet_2d_ms', in_channels=2, num_timepoints=2)\n"
        "except ImportError as err:\n"
        "    print('monai:', err)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(BENCHMARKS), str(BENCHMARKS.parent)]),
               LONGISEG_SCAN_BACKEND="chunked")  # the packages matter here, not the scan backend
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "monai: the MONAI baselines" in res.stdout  # refused with the install hint, not a traceback


def test_an_output_file_that_cannot_be_written_is_refused_before_the_benchmark(tmp_path: Path) -> None:
    # bench_mixers.py --json /proc/x.json timed everything, then failed with a traceback
    import argparse

    from longiseg_bench import output_file

    assert output_file(str(tmp_path / "new" / "deeper" / "x.json")) == str(tmp_path / "new" / "deeper" / "x.json")
    assert not (tmp_path / "new").exists()  # nothing made before the benchmark writes
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        output_file(str(tmp_path))
    if Path("/proc/self").is_dir():
        with pytest.raises(argparse.ArgumentTypeError, match="cannot write"):
            output_file("/proc/x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the probe file leaves nothing behind


@pytest.mark.parametrize("script", ["bench_selective_scan", "bench_mixers", "bench_models", "bench_triplanar", "run_all"])
def test_a_cuda_device_is_refused_up_front_on_a_machine_without_one(script: str, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # it was a traceback once the first model moved to the device (after the header and, for some, minutes of work)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        sys.modules[script].main(["--device", "cuda"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(
        "error: argument --device: 'cuda' is not available on this machine (no CUDA device)")


def test_torch_device_spells_devices_as_torch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    assert lb.torch_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert lb.torch_device("cuda") == "cuda" and lb.torch_device("cuda:1") == "cuda:1"
    with pytest.raises(argparse.ArgumentTypeError, match="this machine has 2 CUDA device"):
        lb.torch_device("cuda:2")


def test_triplanar_json_records_the_channels_the_runs_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    def fake_run_config(cfg: dict) -> dict:
        return {"ok": True, "times": [1.0], "warmup_s": 0.0, "rss_before_mb": 1.0, "rss_peak_mb": 2.0,
                "gpu_peak_mb": None, "scan_backend": "chunked", "computed": 4, "skipped": 0, "brain_fraction": 0.2,
                "channels": 3, "params_m": 1.0, "out_shapes": []}

    monkeypatch.setattr(sys.modules["bench_triplanar"], "run_config", fake_run_config)
    out = tmp_path / "t.json"
    assert sys.modules["bench_triplanar"].main(["--quick", "--skip", "on", "--json", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["config"]["channels"] == 3  # was 0, the option's "use the model's" value
    assert record["environment"]["device"] == "cpu" and "load_average" in record["environment"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_checks_without_a_cuda_device_stops_with_one_line(tmp_path: Path) -> None:
    res, log = _run_gpu_checks(tmp_path, '[[ "$*" == *cuda.is_available* ]] && exit 1\n')
    assert res.returncode == 2
    assert res.stderr.strip() == ("gpu_checks: error: python sees no CUDA device (torch.cuda.is_available() is False, "
                                  "or torch is missing); nothing was run")
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1  # no step ran
    assert (tmp_path / "out" / "summary.txt").read_text(encoding="utf-8").splitlines()[-1] == "no-cuda-device 2 0"


@pytest.mark.parametrize("script", ["bench_mixers", "bench_models", "bench_triplanar"])
def test_a_scan_backend_variable_that_cannot_run_is_a_usage_error(script: str, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # LONGISEG_SCAN_BACKEND=bogus was a traceback from the header; triton on a CPU failed every Mamba model later
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "bogus")
    with pytest.raises(SystemExit) as exc:
        sys.modules[script].main(["--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "error: unknown selective-scan backend 'bogus' from the environment variable LONGISEG_SCAN_BACKEND" in err


def test_the_header_says_a_scan_backend_variable_is_not_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # benchmarks that run no scan (metrics, registration) print the header and go on; the header says so
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "bogus")
    assert lb.environment_info("cpu")["scan_backend"].startswith("not resolved: unknown selective-scan backend")


def test_scan_benchmark_says_an_optional_backend_is_not_available_rather_than_broken() -> None:
    label = bench_selective_scan.failure_label
    assert label("mambapy", "ModuleNotFoundError: No module named 'mambapy'", set()) == "not available"
    assert label("triton", "RuntimeError: selective-scan backend 'triton' ... but the tensors are on cpu", set()) \
        == "not available"
    assert label("numba", "RuntimeError: ... 'numba' requested by the backend argument but it is unavailable: x",
                 set()) == "not available"
    assert label("numba", "ValueError: kernel produced NaN", set()) == "error (optional, not counted)"
    assert label("numba", "ModuleNotFoundError: numba", {"numba"}) == "error"  # asked for: it fails the run


def test_torch_device_spells_every_cpu_device_cpu() -> None:
    # --device cpu:0 ran the CUDA-only methods on the CPU and left the CPU kernels out
    assert lb.torch_device("cpu:0") == "cpu"


def test_a_scan_backend_variable_does_not_concern_benchmarks_without_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    # LONGISEG_SCAN_BACKEND=triton on a CPU stopped a SegFormer-only model benchmark that runs no scan
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "triton")
    ran: list[list[str]] = []
    monkeypatch.setattr(bench_models, "run_model_benchmark", lambda models, **kwargs: ran.append(list(models)))
    assert bench_models.main(["--models", "segformer_ms", "--no-inference", "--device", "cpu"]) == 0
    assert ran == [["segformer_ms"]]
    with pytest.raises(SystemExit):  # a Mamba model (here the demo's SegMaST) needs it
        bench_models.main(["--models", "segformer_ms", "demo:SegMaST", "--no-inference", "--device", "cpu"])
