"""The timm-style registry: decorator forms, wildcard listing, clear errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch.nn as nn

import longiseg
from longiseg import build_model, list_models, register_model
from longiseg.registry import is_model, model_info, unregister_model
from longiseg.spec import INPUT_LAYOUTS, ModelSpec


@pytest.fixture
def tmp_models():
    names = []

    def add(name, **kw):
        @register_model(name=name, **kw)
        def factory(**kwargs):
            """A tiny test model."""
            return nn.Linear(kwargs.get("n", 2), 1)

        names.append(name)
        return factory

    yield add
    for n in names:
        unregister_model(n)


def test_top_level_exports():
    assert callable(longiseg.build_model) and callable(longiseg.list_models) and callable(longiseg.register_model)


def test_register_build_and_kwargs(tmp_models):
    tmp_models("zz_test_lin", dim="3D", tags=("cnn",))
    m = build_model("zz_test_lin", n=5)
    assert isinstance(m, nn.Linear) and m.in_features == 5
    info = model_info("zz_test_lin")
    assert info.dim == "3D" and info.tags == ("cnn",) and info.description == "A tiny test model."


def test_bare_decorator_uses_function_name():
    @register_model
    def zz_bare_model(**kwargs):
        return nn.Identity()

    try:
        assert "zz_bare_model" in list_models("zz_bare*")
        assert isinstance(build_model("zz_bare_model"), nn.Identity)
    finally:
        unregister_model("zz_bare_model")


def test_wildcards_and_filters(tmp_models):
    tmp_models("zz_alpha_a", dim="2.5D", tags=("mamba",))
    tmp_models("zz_alpha_b", dim="3D")
    tmp_models("zz_beta", dim="3D")
    assert list_models("zz_alpha*") == ["zz_alpha_a", "zz_alpha_b"]
    assert list_models(["zz_beta", "zz_alpha_a"]) == ["zz_alpha_a", "zz_beta"]
    assert list_models("zz_*", dim="3D") == ["zz_alpha_b", "zz_beta"]
    assert list_models("zz_*", tag="mamba") == ["zz_alpha_a"]
    assert list_models() == sorted(list_models())


def test_unknown_model_names_closest(tmp_models):
    tmp_models("zz_segmentor")
    with pytest.raises(ValueError, match="Unknown model name 'zz_segmentr'.*zz_segmentor"):
        build_model("zz_segmentr")


def test_duplicate_and_bad_registration(tmp_models):
    tmp_models("zz_dup")
    with pytest.raises(ValueError, match="already registered"):
        tmp_models("zz_dup")
    with pytest.raises(ValueError, match="dim must be one of"):
        register_model(name="zz_bad_dim", dim="4D")
    with pytest.raises(TypeError, match="model name must be a str"):
        build_model(3)  # type: ignore[arg-type]


def test_registration_descriptions_and_names():
    def zz_blank_doc(**kwargs):
        """   """
        return nn.Identity()

    def zz_second_line(**kwargs):
        """
        Described on the second line.
        """
        return nn.Identity()

    try:
        register_model(zz_blank_doc)
        register_model(zz_second_line)
        assert model_info("zz_blank_doc").description == ""
        assert model_info("zz_second_line").description == "Described on the second line."
        with pytest.raises(TypeError, match=r"has no __name__ .*pass name="):
            register_model(functools.partial(zz_blank_doc))
        register_model(functools.partial(zz_second_line), name="zz_partial")
        assert model_info("zz_partial").description == "Described on the second line."  # the wrapped function's
        with pytest.raises(ValueError, match="name must be a non-empty str"):
            register_model(name="")
    finally:
        for n in ("zz_blank_doc", "zz_second_line", "zz_partial"):
            if is_model(n):
                unregister_model(n)
    assert not is_model(["segmast"])  # not a name: False rather than "unhashable type"


class _Fixed(nn.Module):
    def __init__(self, num_timepoints=None, **kwargs):
        super().__init__()
        self.num_timepoints, self.kwargs = num_timepoints, kwargs


def test_spec_holds_plain_kwargs_and_the_models_own_timepoints():
    @register_model(name="zz_fixed")
    def zz_fixed(**kwargs):
        """Takes a fixed T when given one."""
        return _Fixed(**kwargs)

    @register_model(name="zz_any_t")
    def zz_any_t(**kwargs):
        """Has no num_timepoints attribute: any T."""
        return nn.Identity()

    try:
        model = build_model("zz_fixed", num_timepoints=np.int64(3), sizes=np.array([4, 8]),
                            nested={"ratio": np.float32(0.5), "flags": (np.bool_(True), 2)})
        assert model.spec.kwargs == {"num_timepoints": 3, "sizes": [4, 8], "nested": {"ratio": 0.5, "flags": (True, 2)}}
        assert type(model.spec.kwargs["num_timepoints"]) is int and type(model.spec.num_timepoints) is int
        assert type(model.kwargs["nested"]["ratio"]) is float  # the factory got the plain values too
        assert build_model("zz_any_t", num_timepoints=3).spec.num_timepoints is None  # the model's, not the kwarg
        assert build_model("zz_fixed").spec.num_timepoints is None
        with pytest.raises(TypeError, match=r"build_model argument 'act'\[1\] must be plain data .*got type"):
            build_model("zz_fixed", act=("relu", nn.ReLU))
    finally:
        unregister_model("zz_fixed")
        unregister_model("zz_any_t")
    seg = build_model("segmast", num_timepoints=2.0, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1), decoder_dim=8,
                      in_channels=np.int64(1), shared_progression_head=False)  # one head per follow-up: fixed T
    assert seg.spec.num_timepoints == 2 and type(seg.spec.num_timepoints) is int
    assert seg.config.in_channels == 1 and seg.spec.in_channels == 1


def test_spec_layout_follows_dim_and_old_specs_still_load():
    assert ModelSpec(name="x", dim="3D").input_layout == INPUT_LAYOUTS["3D"] == "B T C D H W"
    assert ModelSpec(name="x").input_layout == "B T C H W"
    assert ModelSpec(name="x").replace(dim="3D").input_layout == "B T C D H W"
    with pytest.raises(ValueError, match=r"input_layout must be the layout of dim '2.5D', 'B T C H W'.*got 'B C H W'"):
        ModelSpec(name="x", input_layout="B C H W")
    with pytest.raises(ValueError, match=r"input_layout must be the layout of dim '3D'"):
        ModelSpec(name="x", dim="3D", input_layout="B T C H W")
    spec = build_model("dynunet_3d", filters=(4, 8, 8)).spec
    assert spec.input_layout == "B T C D H W" and ModelSpec.from_dict(spec.to_dict()) == spec
    # earlier versions stored the 2.5D layout for ModelSpec(name, dim="3D"): such a checkpoint still loads
    old = {**spec.to_dict(), "input_layout": "B T C H W"}
    assert ModelSpec.from_dict(old) == spec
    del old["input_layout"]
    assert ModelSpec.from_dict(old) == spec


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"modalities": "flair"}, TypeError, r"modalities must be a sequence of channel names .*not a single string"),
        ({"in_channels": -1}, ValueError, r"ModelSpec.in_channels must be >= 1, got -1"),
        ({"in_channels": 2.0}, TypeError, r"ModelSpec.in_channels must be an int"),
        ({"num_timepoints": 1}, ValueError, r"ModelSpec.num_timepoints must be >= 2"),
        ({"crop_size": -1}, ValueError, r"ModelSpec.crop_size must be >= 1, got -1"),
        ({"crop_size": (64, 0)}, ValueError, r"ModelSpec.crop_size\[1\] must be >= 1"),
        ({"crop_size": (64, 64, 64)}, ValueError, r"ModelSpec.crop_size must have 2 entries"),
        ({"crop_size": "64"}, TypeError, r"ModelSpec.crop_size must be an int"),
    ],
)
def test_spec_refuses_nonsense_fields(change, error, match):
    with pytest.raises(error, match=match):
        ModelSpec(name="x", **change)


def test_spec_keeps_valid_fields_as_plain_data():
    spec = ModelSpec(name="x", dim="3D", in_channels=np.int64(2), num_timepoints=np.int32(3),
                     crop_size=np.array([32, 32, 16]), modalities=["flair", "t2"])
    assert (spec.in_channels, spec.num_timepoints, spec.crop_size) == (2, 3, (32, 32, 16))
    assert type(spec.in_channels) is int and type(spec.crop_size[0]) is int and spec.modalities == ("flair", "t2")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec(name="x", crop_size=np.int64(64)).crop_size == 64


def test_spec_compares_by_value_and_is_unhashable_like_a_dict():
    spec = ModelSpec(name="x", kwargs={"widths": [8, 16]}, inference={"threshold": 0.5})
    assert spec == ModelSpec(name="x", kwargs={"widths": [8, 16]}, inference={"threshold": 0.5})
    assert spec != spec.replace(kwargs={"widths": [8, 32]})
    with pytest.raises(TypeError, match="unhashable type: 'ModelSpec'"):
        hash(spec)


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_registered_model_names_a_misspelt_argument_and_the_valid_ones(name):
    # SegFormer and the LongiUNets let Python's "__init__() got an unexpected keyword argument" through,
    # without the arguments they do take; MONAI's nets name theirs through their own signature
    with pytest.raises(TypeError, match=r"'widhts'") as err:
        build_model(name, widhts=(8, 16))
    assert "in_channels" in str(err.value)  # every model takes it: the valid names are listed
