"""The timm-style registry: decorator forms, wildcard listing, clear errors."""

from __future__ import annotations

import pytest
import torch.nn as nn

import longiseg
from longiseg import build_model, list_models, register_model
from longiseg.registry import model_info, unregister_model


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
