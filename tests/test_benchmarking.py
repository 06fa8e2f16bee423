"""Smoke tests of the benchmark helpers (no timing assertions: the machine may be loaded)."""

from __future__ import annotations

import math

import pytest
import torch

from longiseg import benchmarking as bm


def test_time_interleaved_runs_round_robin_and_returns_repeats() -> None:
    order: list[str] = []
    times = bm.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                repeats=3, warmup=1)
    assert order == ["a", "b"] * 4  # warm-up round + 3 timed rounds, interleaved
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_median_is_the_median() -> None:
    assert bm.median([5.0, 1.0, 3.0]) == 3.0
    assert bm.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError, match="empty"):
        bm.median([])


def test_time_interleaved_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bm.time_interleaved({})
    with pytest.raises(TypeError, match="callable"):
        bm.time_interleaved({"x": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="repeats"):
        bm.time_interleaved({"x": lambda: None}, repeats=0)


def test_header_prints_machine_torch_backend_threads(capsys: pytest.CaptureFixture[str]) -> None:
    info = bm.print_header("cpu", {"benchmark": "smoke"})
    out = capsys.readouterr().out
    for key in ("date", "cpu", "nproc", "load_average", "torch", "threads", "scan_backend", "benchmark"):
        assert f"{key}: " in out and key in info
    assert torch.__version__ in out
    assert any(k in info["scan_backend"] for k in ("PyTorch", "mamba-ssm", "compiled CPU kernel"))


def test_format_table_and_row_length_check() -> None:
    table = bm.format_table(["a", "b"], [[1, 0.123456], ["x", None]])
    lines = table.splitlines()
    assert lines[0].startswith("| a") and "0.123" in table and "-" in lines[-1]
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        bm.format_table(["a", "b"], [[1]])


def test_peak_memory_sees_a_large_temporary_buffer() -> None:
    if not bm.enable_cpu_memory_tracking():
        pytest.skip("CPU peak memory needs Linux + glibc")
    nbytes = 64 * 2**20

    def alloc() -> None:
        x = torch.ones(nbytes // 4)  # written, so resident
        del x

    peak = bm.peak_memory(alloc)
    assert peak is not None and 0.9 * nbytes <= peak <= 1.5 * nbytes
    with pytest.raises(TypeError, match="callable"):
        bm.peak_memory(42)  # type: ignore[arg-type]


def test_find_crossing_interpolates_in_log_log() -> None:
    tokens = [100, 400, 1600]
    linear = [1.0, 4.0, 16.0]
    quadratic = [0.1, 1.6, 25.6]  # equals linear at 100 * 10**(1/1) = 1000 tokens
    assert math.isclose(bm.find_crossing(tokens, quadratic, linear), 1000.0, rel_tol=1e-9)
    assert bm.find_crossing(tokens, linear, [0.5, 2.0, 8.0]) is None
    assert bm.find_crossing(tokens, [None, 1.6, 25.6], linear) is not None
    with pytest.raises(ValueError, match="same length"):
        bm.find_crossing(tokens, linear, [1.0])


def test_build_mixer_shapes_and_unknown_name() -> None:
    x = torch.randn(1, 2, 8, 8, 16)
    for name in bm.MIXERS:
        assert bm.build_mixer(name, 16)(x).shape == x.shape
    with pytest.raises(ValueError, match="unknown mixer"):
        bm.build_mixer("conv", 16)


def test_run_mixer_benchmark_tiny(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "mixers.png"
    records = bm.run_mixer_benchmark(quick=True, out_png=png, sizes=(8, 16), dim=8, repeats=1, progress=False,
                                     json_path=tmp_path / "mixers.json")
    out = capsys.readouterr().out
    assert len(records) == 2 * 2 * len(bm.MIXERS)
    assert all(r.times and r.median > 0 for r in records)
    assert "scan_backend" in out and "forward+backward" in out and "tokens" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "mixers.json").exists()
    with pytest.raises(ValueError, match="unknown mixer"):
        bm.run_mixer_benchmark(mixers=("nope",))


def test_run_mixer_benchmark_skips_hopeless_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    records = bm.run_mixer_benchmark(sizes=(4, 8), dim=8, repeats=1, mixers=("global_attn",),
                                     max_call_seconds=0.0, measure_memory=False, progress=False)
    big = [r for r in records if r.size == 8]
    assert all(r.skipped and not r.times for r in big)
    assert "skipped" in capsys.readouterr().out


def test_model_batch_shapes_and_errors() -> None:
    model = torch.nn.Conv2d(2, 2, 1)
    model.in_channels = 2
    images, base, prog = bm.model_batch(model, batch=4, patch=(8, 8), timepoints=3)
    assert images.shape == (4, 3, 2, 8, 8) and base.shape == (4, 1, 8, 8) and prog.shape == (4, 2, 1, 8, 8)
    assert prog[:2].sum() == 0 and set(base.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="patch"):
        bm.model_batch(model, batch=1, patch=(8,))
    with pytest.raises(ValueError, match="timepoints"):
        bm.model_batch(model, batch=1, patch=(8, 8), timepoints=1)


def test_run_model_benchmark_validates_names() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        bm.run_model_benchmark(["no_such_model"], 32, 1, 32, 1, reference="no_such_model")
    with pytest.raises(ValueError, match="reference"):
        bm.run_model_benchmark(["segmast_ms"], 32, 1, 32, 1, reference="segformer_ms")
