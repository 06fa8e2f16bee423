"""Tests of the SegMaST model: shapes, parameter counts, gradients, training, config and backend round trips,
input errors and the registry entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longiseg.networks.blocks.segformer_like import init_segformer_weights
from longiseg.networks.nets.segmast import SEGMAST_PRESETS, SegMaST, SegMaSTConfig
from longiseg.networks.output import LongitudinalOutput
from longiseg.registry import build_model, list_models, model_info
from longiseg.ssm import Mamba
from longiseg.utils.config import ConfigError
from longiseg.utils.validation import debug_checks
from tests.model_checks import (
    PAPER_PARAM_TARGETS_M,
    SEGFORMER_CANCELLED,
    assert_all_parameters_get_gradients,
    assert_output_shapes,
    assert_params_near,
    assert_training_reduces_loss,
    count_parameters,
    synthetic_batch,
)

TINY = SegMaSTConfig(widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16, d_state=4)


def tiny(**changes: object) -> SegMaST:
    return SegMaST(TINY.replace(**changes))


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("t", [2, 3])
@pytest.mark.parametrize("size", [(32, 32), (64, 32), (40, 56), (33, 17)])
def test_output_shapes(t: int, size: tuple[int, int]) -> None:
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, t, 2, *size))
    assert_output_shapes(out, batch=2, timepoints=t, k=1, spatial=size)


def test_same_model_handles_any_number_of_timepoints_and_k() -> None:
    model = tiny(out_channels=3).eval()
    with torch.no_grad():
        for t in (2, 3, 4):
            assert_output_shapes(
                model(torch.randn(1, t, 2, 32, 32)), batch=1, timepoints=t, k=3, spatial=(32, 32)
            )


def test_non_multiple_of_32_is_zero_padded_and_cropped() -> None:
    model = tiny().eval()
    x = torch.randn(1, 2, 2, 40, 50)
    padded = F.pad(x, (0, 64 - 50, 0, 64 - 40))
    with torch.no_grad():
        out, out_pad = model(x), model(padded)
    torch.testing.assert_close(out.baseline, out_pad.baseline[..., :40, :50])
    torch.testing.assert_close(out.progression, out_pad.progression[..., :40, :50])


def test_per_followup_heads_fix_the_number_of_timepoints() -> None:
    model = tiny(num_timepoints=3, shared_progression_head=False).eval()
    with torch.no_grad():
        assert_output_shapes(model(torch.randn(1, 3, 2, 32, 32)), 1, 3, 1, (32, 32))
    with pytest.raises(ValueError, match="num_timepoints=3"):
        model(torch.randn(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match="num_timepoints is required"):
        TINY.replace(shared_progression_head=False)


# ------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    "name,dataset,in_channels", [("segmast_ms", "ms", 2), ("segmast_glioma", "glioma", 4)]
)
def test_named_configs_match_paper_parameter_counts(name: str, dataset: str, in_channels: int) -> None:
    model = build_model(name)
    assert model.config.in_channels == in_channels
    assert model.config.depths == (4, 4, 4, 4)  # the paper's M = 4 ST blocks per stage
    assert_params_near(model, PAPER_PARAM_TARGETS_M[("2.5D", dataset)], rel_tol=0.15)


def test_share_mamba_roughly_halves_the_mixer_parameters() -> None:
    n_sep, n_shared = count_parameters(tiny()), count_parameters(tiny(share_mamba=True))
    mamba_params = sum(count_parameters(m) for m in tiny().modules() if isinstance(m, Mamba))
    assert n_sep - n_shared == mamba_params // 2


# ------------------------------------------------------------------------------------- gradients, training
@pytest.mark.parametrize(
    "changes",
    [{}, {"fusion": "linear", "difference_weighting": True, "bidirectional": True}, {"share_mamba": True}],
    ids=["default", "linear-dw-bidir", "shared"],
)
def test_gradients_reach_every_parameter(changes: dict) -> None:
    model = tiny(drop_path_rate=0.0, decoder_dropout=0.0, **changes)
    # difference weighting normalises over H*W: the deepest stage needs more than one token
    size = (64, 32) if changes.get("difference_weighting") else (32, 32)
    assert_all_parameters_get_gradients(model, torch.randn(2, 3, 2, *size), cancelled=SEGFORMER_CANCELLED)


def test_difference_weighting_rejects_single_token_maps() -> None:
    model = tiny(difference_weighting=True)
    with pytest.raises(ValueError, match=r"needs at least 2 voxels.*smallest inputs are \(64, 32\) or \(32, 64\)"):
        model(torch.randn(1, 2, 2, 32, 32))
    with torch.no_grad():
        assert_output_shapes(model.eval()(torch.randn(1, 2, 2, 64, 32)), 1, 2, 1, (64, 32))


def test_gradients_reach_per_followup_heads() -> None:
    model = tiny(drop_path_rate=0.0, num_timepoints=3, shared_progression_head=False)
    assert_all_parameters_get_gradients(model, torch.randn(2, 3, 2, 32, 32), cancelled=SEGFORMER_CANCELLED)


def test_swapping_timepoints_changes_the_output() -> None:
    model = tiny().eval()
    x = torch.randn(1, 2, 2, 32, 32)
    with torch.no_grad():
        out, swapped = model(x), model(x.flip(1))
    assert not torch.allclose(out.baseline, swapped.baseline, atol=1e-4)
    assert not torch.allclose(out.progression, swapped.progression, atol=1e-4)


def test_loss_decreases_on_a_tiny_synthetic_batch() -> None:
    model = tiny(drop_path_rate=0.0, decoder_dropout=0.0)
    images, baseline, progression = synthetic_batch(2, 2, 2, (32, 32))
    first, last = assert_training_reduces_loss(model, images, baseline, progression, steps=8, lr=3e-3)
    assert last < first


@pytest.mark.parametrize("name, extra", [("segmast", {}), ("segformer", {"num_heads": (1, 1, 1, 1)})])
def test_registered_shared_head_models_take_any_t_after_being_built_for_one(name: str, extra: dict) -> None:
    """``longiseg train`` passes the cohort's T to every factory: a model with one progression head for all
    follow-ups must still take another T afterwards (docs/baselines.md: "any")."""
    model = build_model(name, in_channels=1, num_timepoints=2, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1),
                        decoder_dim=8, **extra).eval()
    assert model.spec.num_timepoints is None
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 32, 32)).progression.shape == (1, 2, 1, 32, 32)
    with pytest.raises(ValueError, match="num_timepoints"):
        build_model(name, in_channels=1, num_timepoints=1, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1),
                    decoder_dim=8, **extra)
    fixed = build_model(name, in_channels=1, num_timepoints=2, shared_progression_head=False, widths=(8, 8, 8, 8),
                        depths=(1, 1, 1, 1), decoder_dim=8, **extra)
    assert fixed.spec.num_timepoints == 2  # one head per follow-up: the T it was built for


# ---------------------------------------------------------------------------------- config and backends
def test_config_round_trip_and_rebuild() -> None:
    cfg = TINY.replace(fusion="linear", bidirectional=True, num_timepoints=2)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["widths"] == [8, 16, 16, 32]
    back = SegMaSTConfig.from_dict(data)
    assert back == cfg
    assert "fusion='linear'" in repr(cfg)
    model = SegMaST(cfg)
    rebuilt = SegMaST.from_config(model.config.to_dict())
    sd, sd2 = model.state_dict(), rebuilt.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape for k in sd)
    rebuilt.load_state_dict(sd)
    # the dict doubles as registry kwargs (what a checkpoint's model_kwargs holds); the registry's SegMaST with
    # one shared progression head takes any T (its num_timepoints is checked, not enforced), one head per
    # follow-up keeps the T it was built for
    assert build_model("segmast", **cfg.to_dict()).config == cfg.replace(num_timepoints=None)
    per_followup = cfg.replace(shared_progression_head=False)
    assert build_model("segmast", **per_followup.to_dict()).config == per_followup
    x = torch.randn(1, 2, 2, 32, 32)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).baseline, rebuilt(x).baseline)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"'width' for SegMaSTConfig\. Did you mean 'widths'"):
        SegMaSTConfig.from_dict({"width": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="'drop_path_rate': expected a float"):
        SegMaSTConfig.from_dict({"drop_path_rate": "high"})
    with pytest.raises(ValueError, match="fusion must be one of"):
        SegMaSTConfig(fusion="concat")
    with pytest.raises(ValueError, match="4 entries"):
        SegMaSTConfig(widths=(8, 16, 32))
    with pytest.raises(ConfigError, match="'widths': expected a sequence"):  # built directly: converted as from_dict
        SegMaSTConfig(widths=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_timepoints must be >= 2"):
        SegMaSTConfig(num_timepoints=1)
    with pytest.raises(TypeError, match="config must be a SegMaSTConfig"):
        SegMaST({"in_channels": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown SegMaST argument"):
        build_model("segmast", in_chans=2)


def test_state_dict_loads_across_scan_backends() -> None:
    # in float64: two backends' float32 sums round differently, and a deep network can amplify that past any
    # fixed float32 tolerance on some machine (1.5e-5 absolute was seen); in float64 they agree to ~1e-12
    ref = tiny(mamba_backend="reference").double().eval()
    assert all(m.backend == "reference" for m in ref.modules() if isinstance(m, Mamba))
    default = tiny().double().eval()  # default backend: the compiled scan (chunked without numba) on CPU
    default.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 2, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        a, b = ref(x), default(x)
    torch.testing.assert_close(a.baseline, b.baseline, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(a.progression, b.progression, rtol=1e-7, atol=1e-9)
    default.set_scan_backend("reference")
    assert default.config.mamba_backend == "reference"
    with torch.no_grad():
        torch.testing.assert_close(default(x).baseline, a.baseline)


def test_init_skips_mamba_and_follows_segformer() -> None:
    model = tiny()
    for m in model.modules():
        if isinstance(m, Mamba):
            # Mamba keeps its own SSM init: dt bias is inverse-softplus of dt in [1e-3, 0.1], not zero
            dt = F.softplus(m.dt_proj.bias)
            assert (dt > 5e-4).all() and (dt < 0.2).all()
    fc = model.encoder.stages[3].blocks[0].ffn.fc1  # 32 -> 128: 4096 weights
    assert fc.bias.abs().max() == 0 and abs(fc.weight.std().item() - 0.02) < 0.002  # trunc_normal_(std=0.02)
    embed = model.encoder.stages[0].patch_embed.proj  # fan-out normal: std sqrt(2 / (7*7*8))
    assert abs(embed.weight.std().item() - (2 / (7 * 7 * 8)) ** 0.5) < 0.03
    conv = model.heads.baseline
    init_segformer_weights(conv)
    assert 0 < conv.bias.abs().max() < 0.1  # small random conv bias (see the next test)


@pytest.mark.parametrize("name", ["segmast", "segformer"])
def test_exactly_zero_background_keeps_gradients_bounded(name: str) -> None:
    """z-scored MR images have an exactly-zero background. With zero-bias patch embeddings every LayerNorm
    saw constant tokens there and the gradients reached 1e18; they must stay of order one."""
    torch.manual_seed(0)
    kw = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "decoder_dim": 16}
    if name == "segformer":
        kw["num_heads"] = (1, 1, 1, 2)
    model = build_model(name, in_channels=2, num_timepoints=2, **kw)
    x = torch.zeros(2, 2, 2, 64, 64)
    x[..., 16:48, 16:48] = torch.randn(2, 2, 2, 32, 32)  # brain in the middle, zero outside
    out = model(x)
    (out.baseline.mean() + out.progression.mean()).backward()
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert torch.isfinite(grad_norm) and grad_norm < 1e3


# ------------------------------------------------------------------------------------------ input errors
def test_clear_input_errors() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"5 dims \(B, T, C, H, W\)"):
        model(torch.randn(2, 2, 32, 32))
    with pytest.raises(ValueError, match="timepoints T.* must be >= 2"):
        model(torch.randn(1, 1, 2, 32, 32))
    with pytest.raises(ValueError, match="in_channels=2"):
        model(torch.randn(1, 2, 3, 32, 32))
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        x = torch.randn(1, 2, 2, 32, 32)
        x[0, 1, 0, 5, 5] = float("nan")
        model(x)
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(1, 2, 2, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_timepoints=2"):
        tiny(num_timepoints=2)(torch.randn(1, 3, 2, 32, 32))


# ----------------------------------------------------------------------------------------------- registry
def test_registry_entries() -> None:
    assert {"segmast", "segmast_ms", "segmast_glioma"} <= set(list_models("segmast*", tag="mamba"))
    for name in ("segmast", "segmast_ms", "segmast_glioma"):
        assert model_info(name).dim == "2.5D"
    model = build_model("segmast", widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16, in_channels=3)
    assert isinstance(model, SegMaST) and model.config.in_channels == 3
    # overriding a named config keeps its other fields
    glioma_t3 = SEGMAST_PRESETS["segmast_glioma"].replace(num_timepoints=3, depths=(1, 1, 1, 1))
    assert glioma_t3.widths == (64, 128, 224, 320) and glioma_t3.in_channels == 4
    out = tiny().eval()(torch.randn(1, 2, 2, 32, 32))
    assert isinstance(out, LongitudinalOutput)


def test_set_scan_backend_refuses_what_the_constructor_refuses() -> None:
    model = tiny(mamba_backend="reference")
    with pytest.raises(ValueError, match=r"mamba_backend must be None or one of \(") as built:
        tiny(mamba_backend="bogus")
    with pytest.raises(ValueError, match=r"mamba_backend must be None or one of \(") as switched:
        model.set_scan_backend("bogus")
    assert str(switched.value) == str(built.value)  # one check for both
    assert model.config.mamba_backend == "reference"  # nothing changed
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, Mamba))
    model.set_scan_backend(None)
    assert model.config.mamba_backend is None and all(m.backend is None for m in model.modules()
                                                       if isinstance(m, Mamba))


def test_set_scan_backend_is_what_the_spec_records() -> None:
    model = build_model("segmast", widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16, d_state=4)
    model.set_scan_backend("reference")
    assert model.spec.kwargs["mamba_backend"] == "reference"
    assert build_model(model.spec.name, **model.spec.kwargs).config == model.config  # the spec rebuilds it as it runs
    model.set_scan_backend(None)
    assert model.spec.kwargs["mamba_backend"] is None
    assert build_model(model.spec.name, **model.spec.kwargs).config == model.config


def test_config_built_directly_converts_like_from_dict() -> None:
    """Strings for bool fields are read as from_dict reads them, not counted as True."""
    fields = {"bidirectional": "false", "difference_weighting": "no", "share_mamba": "0",
              "shared_progression_head": "true"}
    direct = SegMaSTConfig(widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16, **fields)
    assert direct == SegMaSTConfig.from_dict({"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1],
                                              "decoder_dim": 16, **fields})
    assert (direct.bidirectional, direct.difference_weighting, direct.share_mamba) == (False, False, False)
    mixer = SegMaST(direct).encoder.stages[0].blocks[0].mixer
    assert not mixer.bidirectional and mixer.difference_weighting is None and mixer.mamba_spatial is not None
    with pytest.raises(ConfigError, match="'bidirectional': expected a bool, got 'maybe'"):
        SegMaSTConfig(bidirectional="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mlp_ratio must be a finite number > 0, got inf"):
        build_model("segmast", mlp_ratio=float("inf"))


def test_factory_accepts_numpy_numbers_like_the_other_models() -> None:
    model = build_model("segmast", in_channels=np.int64(1), num_timepoints=np.int64(2), widths=np.array([8, 8, 8, 8]),
                        depths=(1, 1, 1, 1), decoder_dim=8, mlp_ratio=np.float32(2.0))
    assert model.config.in_channels == 1 and model.config.widths == (8, 8, 8, 8) and model.num_timepoints is None
    assert model.spec.kwargs["widths"] == [8, 8, 8, 8] and type(model.spec.kwargs["in_channels"]) is int
