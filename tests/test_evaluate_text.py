"""Token deletion (lrp evaluate on texts), checked on an additive model where everything has a closed form.

For a bag of embeddings with a bias-free linear head, removing a token (zeroing its embedding)
lowers the logit by exactly that token's relevance R_t = E[id_t] . W[target]; so the MoRF curve
at step k is logit - (sum of the m_k largest R_t), removing by relevance is the best order
there is (its AOPC beats any other order's, random included), and LRP equals gradient x input.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lrpcli.cli import main
from lrpcli.evaluate import Settings, TokenEvaluator

from test_cli_text import Bag, _export, _tokenizer, text_setup  # noqa: F401  (the fixture too)


def _batch():
    ids = torch.tensor([[2, 4, 5, 6, 7, 3, 0, 0], [2, 8, 12, 10, 11, 9, 5, 3]])
    attention = (ids != 0).long()
    units = (ids != 0) & (ids != 2) & (ids != 3)
    return ids, attention, units


def test_token_deletion_curves_match_the_closed_form_of_an_additive_model():
    model = Bag().double().eval()
    ids, attention, units = _batch()
    evaluator = TokenEvaluator(model, {"lrp_0": "lrp_0"}, ["gradient_x_input", "random"], Settings(steps=4), dtype=torch.float64)
    evaluator.add(ids, attention, units, ["a", "b"])
    result = evaluator.result()
    with torch.no_grad():
        logits = model(ids).double()
    targets = logits.argmax(1)
    for i in range(2):
        contributions = torch.tensor(model.expected(ids[i].tolist(), int(targets[i])), dtype=torch.float64)[units[i]]
        ranked = contributions.sort(descending=True).values
        n = len(ranked)
        expected = [float(logits[i, targets[i]] - ranked[: int(k / 4 * n + 0.5)].sum()) for k in range(5)]
        got = result.methods["lrp_0"]["curves"]["morf"]["logit"][i]
        assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)
        lerf = result.methods["lrp_0"]["curves"]["lerf"]["logit"][i]
        ascending = contributions.sort().values
        assert lerf.tolist() == pytest.approx([float(logits[i, targets[i]] - ascending[: int(k / 4 * n + 0.5)].sum()) for k in range(5)], rel=1e-9, abs=1e-9)
    summary = {name: result.summary(name) for name in result.methods}
    assert summary["lrp_0"]["aopc_morf"] == pytest.approx(summary["gradient_x_input"]["aopc_morf"], rel=1e-9)
    assert summary["lrp_0"]["aopc_morf"] > summary["random"]["aopc_morf"]
    assert summary["lrp_0"]["gap"] > summary["random"]["gap"]


def test_planted_share_is_the_positive_relevance_on_planted_tokens():
    model = Bag().double().eval()
    ids, attention, units = _batch()
    planted = torch.zeros_like(units)
    planted[0, 4] = planted[1, 1] = planted[1, 2] = True
    evaluator = TokenEvaluator(model, {"lrp_0": "lrp_0"}, [], Settings(steps=2), dtype=torch.float64)
    evaluator.add(ids, attention, units, ["a", "b"], planted)
    result = evaluator.result()
    targets = model(ids).argmax(1)
    for i in range(2):
        r = torch.tensor(model.expected(ids[i].tolist(), int(targets[i])), dtype=torch.float64).clamp(min=0) * units[i]
        assert result.methods["lrp_0"]["mass"][i] == pytest.approx(float((r * planted[i]).sum() / r.sum()))
    assert result.mask_area.tolist() == pytest.approx([1 / 4, 2 / 6])


def test_pad_replacement_equals_zero_embeddings_on_a_model_that_masks_padding():
    model = Bag().double().eval()
    ids, attention, units = _batch()
    curves = {}
    for replace in ("zero", "pad"):
        evaluator = TokenEvaluator(model, {"lrp_0": "lrp_0"}, [], Settings(steps=3, replace=replace), dtype=torch.float64)
        evaluator.add(ids, attention, units, ["a", "b"])
        curves[replace] = evaluator.result().methods["lrp_0"]["curves"]["morf"]["logit"]
    for zero, pad in zip(curves["zero"].tolist(), curves["pad"].tolist()):
        assert zero == pytest.approx(pad, rel=1e-12)


def test_cli_evaluates_texts_with_planted_words(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    data = tmp_path / "heldout.jsonl"
    data.write_text(
        json.dumps({"id": "x", "text": "the film was good", "planted": ["good"]}) + "\n"
        + json.dumps({"id": "y", "text": "a bad plot, bad film", "planted": "bad"}) + "\n"
    )
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", str(spec), str(data), "--text-col", "text", "--id-col", "id", "--planted-col", "planted", "-c", "lrp_0", "--steps", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert report["input_kind"] == "text" and report["names"] == ["x", "y"]
    assert set(report["methods"]) == {"lrp_0", "gradient_x_input", "random"}
    assert report["methods"]["lrp_0"]["aopc"]["morf"] == pytest.approx(report["methods"]["gradient_x_input"]["aopc"]["morf"], rel=1e-5)
    assert "mass on planted" in result.output and (out / "evaluation.png").is_file()
    for bad in (["--replace", "blur"], ["--patch", "2"], ["--sanity"], ["--planted-col", "nope"]):
        refused = CliRunner().invoke(main, ["evaluate", str(spec), str(data), "--text-col", "text", *bad, "-o", str(out)])
        assert refused.exit_code in (2, 5), (bad, refused.output)
