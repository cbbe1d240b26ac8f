"""The public API after the move to one folder per layer (issue 25): what `dir(lrpcli)` and `help(lrpcli)`
show, and the doors that take a path as well as a model object."""

from __future__ import annotations

import pydoc

import torch

import lrpcli

from cli_support import minivgg, save_torchscript


def test_dir_lists_the_public_api_and_every_name_resolves():
    names = dir(lrpcli)
    assert names == sorted(lrpcli.__all__) and "explain" in names and "Explainer" in names and "load_model" in names
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(names)
    for name in names:
        assert getattr(lrpcli, name) is not None, name


def test_help_shows_the_api():
    text = pydoc.render_doc(lrpcli, renderer=pydoc.plaintext)
    assert "explain" in text and "Explainer" in text and "load_composite" in text


def test_a_path_and_the_loaded_model_explain_alike(tmp_path):
    """lrpcli.explain / lrpcli.Explainer load a path (the engine itself takes loaded models only)."""
    from lrpcli.engine.explainer import Explainer as EngineExplainer
    from lrpcli.errors import ModelError

    model = minivgg()
    path = save_torchscript(model, tmp_path / "m.ts")
    x = torch.rand(2, 3, 32, 32)
    from_path = lrpcli.explain(str(path), x, "epsilon")
    from_object = lrpcli.explain(torch.jit.load(str(path)), x, "epsilon")
    torch.testing.assert_close(from_path.relevance, from_object.relevance, rtol=0, atol=0)
    explainer = lrpcli.Explainer(path, "epsilon")
    assert isinstance(explainer, EngineExplainer)
    torch.testing.assert_close(explainer.explain(x).relevance, from_path.relevance, rtol=0, atol=0)
    try:
        EngineExplainer(str(path), "epsilon")
    except ModelError as exc:
        assert "path to lrpcli.explain" in (exc.hint or "")
    else:
        raise AssertionError("the engine's Explainer took a path")
