"""Validation helpers, atomic I/O and the output structure."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from longiseg import LongitudinalOutput
from longiseg.data import layout
from longiseg.utils import (
    atomic_save_nifti,
    atomic_torch_save,
    atomic_write_json,
    check_binary,
    check_finite,
    check_ndim,
    check_positive_int,
    check_probability,
    check_same_shape,
    check_tensor,
    check_timepoints,
    csv_text,
)
from longiseg.utils.io import atomic_path


def test_check_helpers_raise_named_errors():
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        check_tensor("images", np.zeros(3))
    with pytest.raises(ValueError, match=r"images must have 5 dims \(B, T, C, H, W\), got shape \(2, 3\)"):
        check_ndim("images", torch.zeros(2, 3), 5, "(B, T, C, H, W)")
    check_ndim("x", torch.zeros(1, 2), (2, 3))
    with pytest.raises(ValueError, match="logits contains NaN"):
        check_finite("logits", torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="image contains NaN"):
        check_finite("image", np.array([np.inf]))
    check_finite("ints", torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"mask must be a binary mask.*0.5"):
        check_binary("mask", torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="mask must be a binary mask.*2"):
        check_binary("mask", np.array([0, 2]))
    check_binary("m", torch.tensor([True, False]))
    check_binary("m", np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        check_same_shape("pred", np.zeros(2), "target", np.zeros(3))
    with pytest.raises(TypeError):
        check_positive_int("n", 1.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        check_positive_int("n", 0)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        check_probability("p", 1.5)
    with pytest.raises(ValueError, match="num_timepoints must be >= 2"):
        check_timepoints("num_timepoints", 1)


def test_longitudinal_output_validates_and_maps():
    out = LongitudinalOutput(torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 1, 8, 8))
    assert out.num_followups == 3
    probs = out.map(torch.sigmoid)
    assert torch.all(probs.baseline == 0.5)  # exact: sigmoid(0) = 1 / (1 + 1)
    b, p = out
    assert b.shape == (2, 1, 8, 8) and p.shape == (2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="disagree"):
        LongitudinalOutput(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 1, 8, 4))
    with pytest.raises(ValueError, match="one more dim"):
        LongitudinalOutput(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    # no follow-up or no output channel: built without a word, refused only later (inside the loss)
    for base, prog in ((torch.zeros(2, 1, 4, 4), torch.zeros(2, 0, 1, 4, 4)),
                       (torch.zeros(2, 0, 4, 4), torch.zeros(2, 1, 0, 4, 4))):
        with pytest.raises(ValueError, match=r"needs T-1 >= 1 follow-ups and K >= 1 channels"):
            LongitudinalOutput(base, prog)
    with pytest.raises(ValueError, match=r"baseline must be \(B, K, \*S\)"):
        LongitudinalOutput(torch.zeros(2), torch.zeros(2, 1))


def test_longitudinal_output_compares_by_identity_and_keeps_its_checked_fields() -> None:
    """The dataclass's generated ``==`` compared the tensors inside a tuple ("Boolean value of Tensor with more than
    one value is ambiguous"), and a field could be replaced by one the checks never saw."""
    import dataclasses

    a = LongitudinalOutput(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 1, 4, 4))
    copy = LongitudinalOutput(a.baseline.clone(), a.progression.clone())
    assert a == a and a != copy and len({a, copy}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.baseline = torch.randn(7)
    leaves, spec = torch.utils._pytree.tree_flatten(a)
    rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert rebuilt.baseline is a.baseline and rebuilt.progression is a.progression


def test_atomic_writes_never_leave_partial_files(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.ones(2)}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(2))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash while writing")
    assert torch.equal(torch.load(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    with pytest.raises(FileExistsError):
        atomic_torch_save({}, target, overwrite=False)
    atomic_write_json(tmp_path / "r.json", {"x": np.float32(1.5), "a": np.arange(2)})
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == {"x": 1.5, "a": [0, 1]}


def test_csv_text_one_cell_format():
    import csv
    import io

    assert csv_text([{"x": np.float32(0.1), "y": np.float16(-0.3), "z": np.float32("inf")}]) == "x,y,z\n0.1,-0.3,inf\n"
    rows = [{"a": float("nan"), "b": np.float32(0.25), "c": 1.23456},
            {"a": np.float64("nan"), "c": float("inf"), "d": np.int64(3), "e": True}]
    text = csv_text(rows, decimals=3)
    # NaN and a missing key are empty cells (read as missing, not as the text "nan"); NumPy numbers as values
    assert text == "a,b,c,d,e\n,0.25,1.235,,\n,,inf,3,True\n"
    assert list(csv.DictReader(io.StringIO(text)))[0]["a"] == ""
    assert csv_text(rows[:1], ["c", "a", "b"], header=False) == "1.23456,,0.25\n"
    assert csv_text([]) == "\n"
    with pytest.raises(ValueError, match=r"rows\[1\] has column\(s\) \['d', 'e'\]"):
        csv_text(rows, ["a", "b", "c"])
    with pytest.raises(TypeError, match=r"rows\[0\] must be a mapping"):
        csv_text([[1, 2]])
    with pytest.raises(ValueError, match="decimals"):
        csv_text(rows, decimals=-1)


def test_every_table_writer_writes_nan_as_an_empty_cell(tmp_path):
    from longiseg.engine.trainer import _CsvLog
    from longiseg.metrics import write_csv

    write_csv(tmp_path / "r.csv", [{"dice": float("nan"), "n": 2}])
    assert (tmp_path / "r.csv").read_text(encoding="utf-8") == "dice,n\n,2\n"
    log = _CsvLog(tmp_path / "metrics.csv")
    history = [{"epoch": 1, "train_loss": 0.5, "val_dice": float("nan"), "time_s": 1.0}]
    log.append(history[0], history)
    history.append({"epoch": 2, "train_loss": 0.25, "val_dice": np.float32(0.5), "time_s": 2.0})
    log.append(history[1], history)
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8") == (
        "epoch,train_loss,val_dice,time_s\n1,0.5,,1.0\n2,0.25,0.5,2.0\n")


def test_atomic_nifti_roundtrip(tmp_path):
    arr = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    aff = np.diag([1.0, 2.0, 3.0, 1.0])
    path = atomic_save_nifti(arr, aff, tmp_path / "x.nii.gz")
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    np.testing.assert_array_equal(img.affine, aff)
    with pytest.raises(FileExistsError):
        atomic_save_nifti(arr, aff, path)
    with pytest.raises(ValueError, match="affine must be a"):
        atomic_save_nifti(arr, np.eye(3), tmp_path / "y.nii.gz")


def test_layout_names():
    assert layout.image_filename(1, "FLAIR") == "t1_flair.nii.gz"
    assert layout.parse_image_filename("t12_t1ce.nii.gz") == (12, "t1ce")
    assert layout.parse_image_filename("baseline_mask.nii.gz") is None
    assert layout.progression_filename(2, "_prob") == "progression_t2_prob.nii.gz"
    names = layout.prediction_filenames(3)
    assert names["mask"] == ["baseline_mask.nii.gz", "progression_t1.nii.gz", "progression_t2.nii.gz"]
    with pytest.raises(ValueError):
        layout.progression_filename(0)


def test_check_spatial_dims_and_widths() -> None:
    from longiseg.utils.validation import check_spatial_dims, check_widths

    assert check_spatial_dims("spatial_dims", 3) == 3
    for bad in (1, 4, True, "3", 2.0):
        with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
            check_spatial_dims("spatial_dims", bad)
    assert check_widths("features", [8, 16]) == (8, 16)
    with pytest.raises(ValueError, match="features must list at least 2 stage widths"):
        check_widths("features", (8,))
    with pytest.raises(ValueError, match=r"filters\[1\] must be >= 1"):
        check_widths("filters", (8, 0))
    with pytest.raises(TypeError, match="features must be a sequence"):
        check_widths("features", 8)  # type: ignore[arg-type]


def test_check_shape_names_the_layout_and_sizes() -> None:
    from longiseg.utils.validation import check_shape

    x = torch.zeros(2, 3, 4, 5, 6)
    assert check_shape("x", x, "(B, T, H, W, C)", C=6) is x
    assert check_shape("x", x, "(*, H, W, C)", C=6) is x  # any number of leading dims
    check_shape("x", torch.zeros(4, 5, 6), "(*, H, W, C)", C=6)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        check_shape("x", np.zeros((2, 3, 4, 5, 6)), "(B, T, H, W, C)")
    # a wrong rank says so (the message read as if C were wrong)
    with pytest.raises(ValueError, match=r"^x must be \(B, T, H, W, C\) with C=6, got shape \(2, 3\) \(2 dims, not 5\)$"):
        check_shape("x", torch.zeros(2, 3), "(B, T, H, W, C)", C=6)
    with pytest.raises(ValueError, match=r"feats must be \(N, C, H, W\) with C=3, H=5, got shape \(1, 3, 4, 4\)"):
        check_shape("feats", torch.zeros(1, 3, 4, 4), "(N, C, H, W)", C=3, H=5)
    with pytest.raises(ValueError, match=r"\(\*, H, W, C\) with C=6, got shape \(5, 6\) \(2 dims, not at least 3\)$"):
        check_shape("x", torch.zeros(5, 6), "(*, H, W, C)", C=6)
    with pytest.raises(ValueError, match=r"sizes \['K'\] are not dims"):
        check_shape("x", x, "(B, T, H, W, C)", K=6)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_check_shape_skips_sizes_while_tracing() -> None:
    """Traced sizes are tensors: the size is not compared (the graph follows the input), the rank still is."""
    from longiseg.utils.validation import check_shape

    def f(x: torch.Tensor) -> torch.Tensor:
        return check_shape("x", x, "(N, C)", C=3) * 2

    traced = torch.jit.trace(f, torch.zeros(2, 3))
    assert traced(torch.ones(4, 3)).shape == (4, 3)
    with pytest.raises(ValueError, match="x must be"):
        torch.jit.trace(f, torch.zeros(2, 3, 1))


def test_logging_setup_is_repeated_in_a_worker_process(monkeypatch) -> None:
    """A spawned worker shows log records like its parent: the parent's level where the parent shows them (the
    command line's set-up), nothing where it does not."""
    import logging

    from longiseg.utils.logging import LOG_FORMAT, apply_logging_setup, get_logger, logging_setup

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # restored afterwards, with the level basicConfig sets
    monkeypatch.setattr(root, "level", root.level)
    assert logging_setup() is None
    apply_logging_setup(None)
    assert root.handlers == []
    monkeypatch.setattr(get_logger(), "level", logging.WARNING)
    apply_logging_setup(logging.DEBUG)  # what a worker does with its parent's level
    try:
        assert len(root.handlers) == 1 and root.handlers[0].formatter._fmt == LOG_FORMAT
        assert get_logger().level == logging.DEBUG and logging_setup() == logging.DEBUG
        assert root.level == logging.WARNING  # other libraries' debug and info records stay hidden
        apply_logging_setup(logging.ERROR)  # records are shown already: unchanged
        assert len(root.handlers) == 1 and get_logger().level == logging.DEBUG
    finally:
        for handler in root.handlers:
            handler.close()


def test_check_separate_folders(tmp_path) -> None:
    """Same, inside, holding: refused, naming both; siblings with a common prefix and absent paths are fine;
    ``..`` and symbolic links are resolved."""
    from longiseg.utils.io import check_separate_folders

    data = tmp_path / "data"
    (data / "case").mkdir(parents=True)
    check_separate_folders(tmp_path / "data2", "--output", {"--input": data, "--other": None})
    check_separate_folders(tmp_path / "new" / "out", "--output", {"--input": data})
    for out, how in ((data, "is"), (data / "case" / "pred", "lies inside"), (tmp_path, "holds"),
                     (tmp_path / "x" / ".." / "data", "is")):
        with pytest.raises(ValueError, match=f"--output .* {how} the --input folder .*data"):
            check_separate_folders(out, "--output", {"--input": data})
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(ValueError, match="is the --input folder"):
        check_separate_folders(tmp_path / "link", "--output", {"--input": data})


def test_log_records_are_written_above_a_running_progress_bar() -> None:
    """The command line's handler clears the bar before a record and draws it again below (a plain stream
    handler appends the record to the bar's line)."""
    import io
    import logging

    from tqdm import tqdm

    from longiseg.utils.logging import ProgressAwareHandler

    stream = io.StringIO()
    bar = tqdm(total=3, file=stream, mininterval=0, desc="cases")
    bar.update(1)
    logger = logging.getLogger("longiseg.test_progress_aware")
    logger.propagate = False
    handler = ProgressAwareHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        logger.warning("wrote case p1")
    finally:
        logger.removeHandler(handler)
    bar.update(1)
    bar.close()
    text = stream.getvalue()
    before, after = text.split("wrote case p1\n")
    assert before.endswith("\r") and before.split("\r")[-2].strip() == ""  # the bar's line was cleared first
    assert "2/3" in after  # the bar goes on below the record


def test_nifti_functions_moved_from_io_still_import_with_a_warning() -> None:
    import longiseg.utils.io as io_module
    from longiseg.utils import nifti

    for name in ("load_nifti", "atomic_save_nifti"):
        with pytest.warns(DeprecationWarning, match=f"longiseg.utils.nifti.{name}"):
            assert getattr(io_module, name) is getattr(nifti, name)
    with pytest.raises(AttributeError, match="no attribute 'SpatialHeader'"):
        io_module.SpatialHeader  # noqa: B018 - new in utils.nifti, never in utils.io


def test_a_value_beyond_a_limit_is_printed_with_the_digits_that_show_it() -> None:
    from longiseg.utils.validation import beyond

    assert beyond(0.5, 1e-4) == "0.5"  # three digits where they suffice
    assert beyond(0.0123456, 0.01) == "0.0123"
    assert beyond(1.00002e-4, 1e-4) == "0.000100002"  # not "0.0001", the limit itself
    text = beyond(1e-4 * (1 + 1e-12), 1e-4)
    assert float(text) > 1e-4 and float(text) != 1e-4


def test_a_grid_refusal_never_prints_the_tolerance_as_the_difference(tmp_path) -> None:
    from longiseg.data.volumes import check_same_grid

    aff = np.eye(4)
    moved = aff.copy()
    moved[0, 3] = 1.00001e-4  # beyond the default tolerance of 1e-4 mm, by a hair
    with pytest.raises(ValueError, match=r"affines differ by up to 0\.000100001 mm, tolerance 0\.0001 mm"):
        check_same_grid(("b.nii.gz", (2, 2, 2), moved), ("a.nii.gz", (2, 2, 2), aff))


def test_a_seed_torch_cannot_take_is_refused_where_it_is_given() -> None:
    # TrainerConfig(seed=2**70) was accepted, wrote its files, then failed at the first batch inside torch
    # ("Overflow when unpacking long long"), naming no seed
    from longiseg.engine import TrainerConfig
    from longiseg.engine.config import ConfigError
    from longiseg.engine.seeding import seed_everything
    from longiseg.losses import ImbalanceAwareLoss
    from longiseg.utils.validation import MAX_SEED, check_seed

    assert check_seed("seed", np.int64(MAX_SEED)) == MAX_SEED
    for call in (lambda: seed_everything(2**70), lambda: ImbalanceAwareLoss(seed=2**63),
                 lambda: check_seed("seed", -1)):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 9223372036854775807\]"):
            call()
    with pytest.raises(ConfigError, match=r"trainer\.seed\) must be an int in \[0, 9223372036854775807\]"):
        TrainerConfig(seed=2**70)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        seed_everything(1.0)  # type: ignore[arg-type]
    torch.Generator().manual_seed(MAX_SEED + 1000)  # the largest seed leaves room for the epoch added to it


def test_seeds_that_differ_by_a_multiple_of_2_to_the_32_draw_different_numbers() -> None:
    """torch's CPU generator and NumPy's global one keep 32 bits of a seed: trainer.seed=0 and 2**32 gave the same
    initial weights, and ImbalanceAwareLoss(seed=1) and seed=1 + 2**32 the same draws; seeds below 2**32 are kept."""
    from longiseg.engine.seeding import seed_everything
    from longiseg.losses import ImbalanceAwareLoss
    from longiseg.utils.seeds import generator_seed
    from longiseg.utils.validation import MAX_SEED

    def draws(seed: int) -> tuple[torch.Tensor, np.ndarray]:
        seed_everything(seed)
        return torch.rand(4), np.random.rand(4)

    for seed in (0, 5, 2**32 - 1):
        assert generator_seed(seed) == seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        expected = torch.rand(4), np.random.rand(4)
        got = draws(seed)
        assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])  # unchanged below 2**32
    for low in (0, 1, 2**32 - 1):
        high = low + 2**32 * 97
        assert not torch.equal(draws(low)[0], draws(high)[0]) and not np.array_equal(draws(low)[1], draws(high)[1])
        assert not torch.equal(ImbalanceAwareLoss(seed=low).generator.get_state(),
                               ImbalanceAwareLoss(seed=high).generator.get_state())
    assert 0 <= generator_seed(MAX_SEED) < 2**32
    with pytest.raises(ValueError, match=r"trainer.seed must be an int in \[0, 9223372036854775807\], got -1"):
        generator_seed(-1, "trainer.seed")


def test_the_trainers_epoch_seeds_draw_what_they_drew() -> None:
    """The epoch seeds (63 bits, well mixed) are used as they were: folding them like a user's seed changed every
    training run's draws (dropout, workers' seeds, the loss's subset), whatever its seed."""
    import random

    from longiseg.engine.seeding import epoch_seed, seed_epoch

    for seed, epoch, rank in ((0, 0, 0), (np.int64(3), 7, 1), (2**40, 2, 0)):
        mixed = epoch_seed(seed, epoch, rank)
        random.seed(mixed)
        np.random.seed(mixed % 2**32)
        torch.manual_seed(mixed)
        want = random.random(), np.random.rand(3), torch.rand(3)
        seed_epoch(seed, epoch, rank)
        got = random.random(), np.random.rand(3), torch.rand(3)
        assert got[0] == want[0] and np.array_equal(got[1], want[1]) and torch.equal(got[2], want[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_ends_with_its_parent_also_when_the_parent_is_killed() -> None:
    # DataLoader workers of a demo training stayed alive (with their memory and shared memory) after the
    # training process was stopped; the trainer's worker_init_fn and the demo's workers call end_with_parent
    import signal
    import subprocess

    from process_helpers import running, wait_for

    grandchild = ("import os, sys, time; from longiseg.utils.io import end_with_parent; "
                  "end_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); time.sleep(120)")
    child = ("import os, subprocess, sys, time; "
             f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}, str(os.getpid())], stdout=sys.stdout); "
             "time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert running(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: not running(worker), 30, "end of the worker after its parent was killed")
    finally:
        parent.kill()
    # a parent that is not its parent (already gone): it ends at once (pid 1 was used, which is the parent where
    # pytest runs as process 1)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    late = subprocess.run([sys.executable, "-c", "import sys; from longiseg.utils.io import end_with_parent; "
                           "end_with_parent(int(sys.argv[1]))", gone.stdout.strip()], timeout=60)
    assert late.returncode == 1


def test_the_trainers_data_loader_workers_end_with_it() -> None:
    from test_engine_toys import SyntheticLongiData, TinyLongiNet

    from longiseg.engine import Trainer, TrainerConfig
    from longiseg.engine.trainer import _end_with_trainer
    from longiseg.losses import ImbalanceAwareLoss

    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8),
                      TrainerConfig(num_workers=1, batch_size=4, device="cpu", progress_bar=False, tensorboard=False),
                      loss_fn=ImbalanceAwareLoss())
    assert trainer.train_loader.worker_init_fn is _end_with_trainer


def test_a_file_given_as_an_input_folder_is_named_a_file(tmp_path) -> None:
    # "does not exist" was said of a file that exists; one check for every folder read from
    from longiseg.data.cohort import find_cases, find_mask_cases
    from longiseg.registration.cohort import register_folder
    from longiseg.utils.io import check_input_folder

    (tmp_path / "f.txt").write_text("x")
    assert check_input_folder(tmp_path, "cohort folder") == tmp_path
    for call, name in ((lambda p: find_cases(p), "cohort folder"), (lambda p: find_mask_cases(p), "mask folder"),
                       (lambda p: register_folder(p, tmp_path / "out"), "raw folder")):
        with pytest.raises(NotADirectoryError, match=f"{name} .*f.txt is a file, not a folder"):
            call(tmp_path / "f.txt")
        with pytest.raises(FileNotFoundError, match=f"{name} .*nope does not exist"):
            call(tmp_path / "nope")


def test_an_uncompressed_nifti_named_gz_is_told_to_be_renamed(tmp_path) -> None:
    """A valid .nii renamed to .nii.gz (common after tools rename files) read as "truncated, corrupt or not a NIfTI
    file (... is not a gzip file)"; the message now says what it is and the name to give it."""
    from longiseg.utils.nifti import load_nifti

    plain = tmp_path / "t1_t2.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4)), str(plain))
    renamed = plain.rename(tmp_path / "t1_t2.nii.gz")
    with pytest.raises(ValueError, match=r"t1_t2\.nii\.gz is an uncompressed NIfTI file although its name ends in "
                                         r"\.gz: rename it to t1_t2\.nii "):
        load_nifti(renamed)
    renamed.write_bytes(b"not a volume at all" * 10)  # neither gzip nor NIfTI: the message as before
    with pytest.raises(ValueError, match=r"t1_t2\.nii\.gz is truncated, corrupt or not a NIfTI file"):
        load_nifti(renamed)


def test_an_unreadable_nifti_is_reported_as_unreadable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nibabel turns the PermissionError of an unreadable file into "Cannot work out file type", which read as
    "truncated, corrupt or not a NIfTI file"; the docstring promised a PermissionError."""
    import builtins
    import os

    from longiseg.utils import nifti

    path = tmp_path / "baseline_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.uint8), np.eye(4)), str(path))

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    def nibabel_load(filename, **kwargs):  # nibabel's sniffing swallows the PermissionError
        try:
            refusing_open(filename, "rb").close()
        except PermissionError as err:
            raise ImageFileError(f"Cannot work out file type of \"{filename}\"") from err
        return loaded(filename, **kwargs)

    from nibabel.filebasedimages import ImageFileError

    loaded = nib.load
    with monkeypatch.context() as m:  # root reads any file: the refusal is simulated where nibabel would meet it
        m.setattr(nifti, "open", refusing_open, raising=False)
        m.setattr(nib, "load", nibabel_load)
        with pytest.raises(PermissionError, match=r"cannot read mask \S+baseline_mask\.nii\.gz: permission denied"):
            nifti.load_nifti(path, what="mask")
    if os.geteuid() != 0:  # the real thing
        path.chmod(0)
        try:
            with pytest.raises(PermissionError, match="permission denied"):
                nifti.load_nifti(path)
        finally:
            path.chmod(0o644)
    assert nifti.load_nifti(path).shape == (3, 4, 5)


def test_a_broken_matplotlib_is_not_reported_as_a_missing_one(monkeypatch) -> None:
    """An installed matplotlib that fails to import (a missing dependency, a NumPy it was not built for, an
    interrupted import) was reported as "need matplotlib: pip install ...", which it already was."""
    import importlib.abc

    from longiseg.utils.plotting import require_matplotlib

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib":
                raise ImportError("numpy.core.multiarray failed to import")
            return None

    for name in [m for m in sys.modules if m.partition(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(ImportError, match=r"^matplotlib is needed for the figures but fails to import "
                                          r"\(ImportError: numpy\.core\.multiarray failed to import\): repair it "
                                          r"\(pip install --force-reinstall matplotlib\), or pass --no-figures$"):
        require_matplotlib("the figures", "pass --no-figures")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    with pytest.raises(ImportError, match=r"^matplotlib is needed for the figures: pip install 'longiseg\[demo\]'"):
        require_matplotlib("the figures", "pass --no-figures")


@pytest.mark.parametrize("stored", [0.0, -2.0, float("nan")])
def test_a_voxel_size_readers_repair_differently_is_refused(tmp_path, stored: float) -> None:
    """A file without an sform whose pixdim[3] is 0 was read as 1 mm (nibabel's repair, a warning only): lesion
    volumes came out halved, silently. With an sform the affine is the file's own and the file is read."""
    import gzip
    import struct

    from longiseg.utils.nifti import load_nifti

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sform in (False, True):
        img = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine, dtype=np.uint8)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine if sform else None, code=1 if sform else 0)
        raw = tmp_path / f"m{sform}.nii"
        nib.save(img, raw)
        data = bytearray(raw.read_bytes())
        data[88:92] = struct.pack("<f", stored)  # pixdim[3]
        path = tmp_path / f"m{sform}.nii.gz"
        path.write_bytes(gzip.compress(bytes(data)))
        if sform:
            assert np.allclose(load_nifti(path).affine, affine)
        else:
            with pytest.raises(ValueError, match=r"stores the voxel size \[2\.0, 2\.0, .*\] \(pixdim\) and no sform: "
                                                 r"a voxel size must be a positive number of mm"):
                load_nifti(path, what="mask")


def test_records_of_a_library_with_its_own_handler_are_shown_once() -> None:
    """nibabel's 'nibabel.global' logger prints its records itself; the command line's handler printed them again."""
    import logging

    from longiseg.utils.logging import ProgressAwareHandler

    top, own = logging.getLogger("zz_top"), logging.getLogger("zz_top.thirdparty")
    handler = ProgressAwareHandler()
    top.addHandler(handler)  # as the command line's handler on the root logger
    own.addHandler(logging.StreamHandler())
    try:
        assert not handler.filter(own.makeRecord("zz_top.thirdparty.sub", logging.WARNING, __file__, 1, "x", (), None))
        assert handler.filter(top.makeRecord("zz_top.ours", logging.WARNING, __file__, 1, "ours", (), None))
    finally:
        own.handlers.clear()
        top.handlers.clear()


def test_a_singular_affine_is_not_called_a_shear() -> None:
    """Two voxel axes along one line were reported as 'a shear ... 90.00 degrees off'."""
    from longiseg.data.case import affine_spacing

    singular = np.eye(4)
    singular[:3, 1] = [2.0, 0.0, 0.0]  # the second axis along the first
    with pytest.raises(ValueError, match=r"^affine is singular: two of its voxel axes point along the same line"):
        affine_spacing(singular)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match=r"^affine has a shear"):
        affine_spacing(sheared)


def test_an_image_beyond_float32s_range_is_named_as_such(tmp_path) -> None:
    """A float64 image of values around 1e300 became infinite when read as float32 and was refused as holding
    'NaN or infinite values', which the file does not hold."""
    from longiseg.utils.nifti import load_nifti

    img = np.full((3, 3, 3), 1e300)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "big.nii.gz")
    with pytest.raises(ValueError, match=r"big\.nii\.gz holds values up to 1e\+300, beyond the range of float32"):
        load_nifti(tmp_path / "big.nii.gz", what="image", dtype=np.float32)
    assert load_nifti(tmp_path / "big.nii.gz").get_fdata().max() == 1e300  # as stored: fine
    img[0, 0, 0] = np.nan  # a NaN in the file is the callers' to name
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "nan.nii.gz")
    assert np.isnan(np.asarray(load_nifti(tmp_path / "nan.nii.gz", dtype=np.float32).dataobj)).any()


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), (" yes ", True), ("On", True), ("", False),
                                             ("0", False), ("false", False), ("No", False), ("off", False)])
def test_env_flag_reads_on_and_off(monkeypatch, value: str, expected: bool) -> None:
    from longiseg.utils.validation import debug_checks_enabled, env_flag

    monkeypatch.setenv("LONGISEG_DEBUG_CHECKS", value)
    assert env_flag("LONGISEG_DEBUG_CHECKS") is expected and debug_checks_enabled() is expected
    monkeypatch.delenv("LONGISEG_DEBUG_CHECKS")
    assert env_flag("LONGISEG_DEBUG_CHECKS") is False


@pytest.mark.parametrize("value", ["2", "enabled", "y", "tru"])
def test_env_flag_refuses_what_is_neither_on_nor_off(monkeypatch, capsys, value: str) -> None:
    """LONGISEG_DEBUG_CHECKS=2 or LONGISEG_DEBUG=enabled silently meant off."""
    from longiseg.cli import main
    from longiseg.utils.validation import debug_checks_enabled

    monkeypatch.setenv("LONGISEG_DEBUG_CHECKS", value)
    with pytest.raises(ValueError, match=rf"the environment variable LONGISEG_DEBUG_CHECKS must be one of "
                                         rf"1/true/yes/on \(on\) or 0/false/no/off \(off\), got '{value}'"):
        debug_checks_enabled()
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip().startswith("longiseg: error: the environment variable LONGISEG_DEBUG_CHECKS")
    monkeypatch.delenv("LONGISEG_DEBUG_CHECKS")
    monkeypatch.setenv("LONGISEG_DEBUG", value)
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip().startswith("longiseg: error: the environment variable LONGISEG_DEBUG must")
