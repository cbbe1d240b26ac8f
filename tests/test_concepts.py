"""Concept Relevance Propagation (issue 29 items 2-4): relevance conditioned on channels of a layer.

Independent references: LRP is linear in the relevance at a layer, so the conditional heatmaps of all channels
of a layer sum to the full heatmap (Achtibat et al., "From attribution maps to human-understandable explanations
through Concept Relevance Propagation", Nature Machine Intelligence 2023, eq. 6); on a bias-free ReLU net LRP-0
is gradient x input (Montavon et al., "Layer-wise relevance propagation: an overview", 2019, sec. 10.2.1), so
conditioning on channel c at layer L is x * J^T (g * m_c), the gradient of the output at L masked to c and
pulled back to the input by hand with autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lrpcli.engine.explainer import explain
from lrpcli.errors import UsageError


def _conv_net(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1, bias=bias), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 10, bias=bias), nn.ReLU(), nn.Linear(10, 4, bias=bias),
    ).double().eval()


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("layer", ["0", "2", "3", "6"])
def test_concept_maps_of_all_channels_sum_to_the_full_heatmap(layer):
    model, x = _conv_net(), _x(1)
    full = explain(model, x, "epsilon_plus_flat", target=2, layers=[layer])
    channels = full.layer_maps[layer].shape[1]
    conditioned = explain(
        model, x.repeat(channels, 1, 1, 1), "epsilon_plus_flat", target=2, condition={layer: torch.eye(channels, dtype=x.dtype)}, layers=[layer]
    )
    total = conditioned.relevance.sum(0)
    assert torch.allclose(total, full.relevance[0], rtol=1e-5, atol=1e-5 * full.relevance.abs().max().item())
    # what arrived at the layer is reported unmasked; the rows differ (the condition was applied)
    assert torch.allclose(conditioned.layer_maps[layer][0], full.layer_maps[layer][0])
    assert not torch.allclose(conditioned.relevance[0], conditioned.relevance[1])


def test_one_channel_equals_a_hand_written_masked_backward_on_a_bias_free_relu_net():
    model, x = _conv_net(bias=False), _x(2)
    channel, target = 3, torch.tensor([1, 2])
    result = explain(model, x, "lrp_0", target=target, condition={"2": [channel]})

    inputs = x.clone().requires_grad_(True)
    at_layer = model[:3](inputs)  # the output of module "2" (a conv)
    top = model[3:](at_layer)
    picked = top[torch.arange(2), target].sum()
    (g,) = torch.autograd.grad(picked, at_layer, retain_graph=True)
    mask = torch.zeros_like(g)
    mask[:, channel] = 1
    (pulled,) = torch.autograd.grad(at_layer, inputs, g * mask)
    expected = x * pulled
    assert expected.abs().max() > 0
    assert torch.allclose(result.relevance, expected, rtol=1e-8, atol=1e-10)


def test_per_row_masks_equal_one_run_per_channel_and_cost_nothing_unconditioned():
    model, x = _conv_net(), _x(1)
    rows = torch.zeros(3, 5, dtype=x.dtype)
    rows[0, 1] = rows[1, 4] = 1
    rows[2, [0, 2]] = 1
    batched = explain(model, x.repeat(3, 1, 1, 1), target=0, condition={"2": rows}).relevance
    for row, channels in enumerate([[1], [4], [0, 2]]):
        alone = explain(model, x, target=0, condition={"2": channels}).relevance[0]
        assert torch.allclose(batched[row], alone, rtol=1e-10, atol=1e-12)
    everything = explain(model, x, target=0, condition={"2": list(range(5))}).relevance
    assert torch.equal(everything, explain(model, x, target=0).relevance)


@pytest.mark.parametrize(
    "condition, words",
    [
        ({"2": [5]}, "out of range"),
        ({"nope": [0]}, "no layer 'nope'"),
        ({"2": torch.ones(3, 5, dtype=torch.float64)}, "(batch, channels)"),
        ({"2": "first"}, "channel indices"),
        ([0, 1], "mapping"),
    ],
)
def test_bad_conditions_are_named(condition, words):
    with pytest.raises(UsageError, match=None) as caught:
        explain(_conv_net(), _x(2), target=0, condition=condition)
    assert words in caught.value.message


# --------------------------------------------------------------------------- the Python API


def test_api_concepts_of_every_channel_sum_to_the_heatmap_and_the_table_holds_every_channel():
    import lrpcli

    model, x = _conv_net(), _x(2)
    found = lrpcli.concepts(model, x, "2", top=5, batch_size=4)  # 10 conditions in batches of 4
    assert isinstance(found, lrpcli.Concepts) and "concepts" in dir(lrpcli)
    full = explain(model, x, "epsilon_plus_flat", layers=["2"])
    assert found.maps.shape == (2, 5, 3, 8, 8) and found.channels.shape == (2, 5)
    assert torch.allclose(torch.from_numpy(found.maps.sum(1)), full.relevance, rtol=1e-5, atol=1e-5 * full.relevance.abs().max().item())
    expected = full.layer_maps["2"].sum((2, 3)).numpy()
    assert (found.relevance == expected).all()
    # top channels come most relevant first
    for i in range(2):
        assert list(found.channels[i]) == sorted(range(5), key=lambda c: -expected[i, c])
    # activation: the layer's largest value per channel (module "2" is the conv's output)
    assert torch.allclose(torch.from_numpy(found.activation), model[:3](x).amax((2, 3)).detach())
    rows = found.table(["a", "b"])
    assert len(rows) == 10 and rows[0]["input"] == "a" and rows[0]["layer"] == "2" and rows[7]["channel"] == 2
    named = lrpcli.concepts(model, x, "2", channels=[4, 1])
    assert (named.channels == [[4, 1], [4, 1]]).all()
    assert torch.allclose(torch.from_numpy(named.maps[:, 0]), explain(model, x, condition={"2": [4]}).relevance)


def test_api_concepts_errors():
    import lrpcli

    with pytest.raises(UsageError, match="out of range"):
        lrpcli.concepts(_conv_net(), _x(1), "2", channels=[9])
    with pytest.raises(UsageError, match="no layer"):
        lrpcli.concepts(_conv_net(), _x(1), "features.9")


# --------------------------------------------------------------------------- relevance maximisation


def test_top_k_equals_a_brute_force_ranking_and_survives_shards_merged():
    from lrpcli.runs.concepts import TopK

    generator = np.random.default_rng(0)
    values = generator.integers(0, 5, size=(40, 6)).astype(float)  # many ties, broken by name
    names = [f"img{i:02d}" for i in range(40)]
    whole = TopK(5, 6)
    for start in reversed(range(0, 40, 7)):  # names arriving out of order
        whole.add(values[start : start + 7], names[start : start + 7])
    brute = [sorted(((values[i, c], names[i]) for i in range(40)), key=lambda p: (-p[0], p[1]))[:5] for c in range(6)]
    for c in range(6):
        assert whole.ranking(c) == [(n, v) for v, n in brute[c]]
    shards = [TopK(5, 6) for _ in range(3)]
    for i in range(40):
        shards[(i * 7) % 3].add(values[i : i + 1], names[i : i + 1])  # another order, another split
    merged = shards[2].merge(shards[0]).merge(shards[1])
    assert [merged.ranking(c) for c in range(6)] == [whole.ranking(c) for c in range(6)]


def test_relevance_maximisation_ranks_inputs_by_the_channels_relevance_and_activation():
    from lrpcli.engine.explainer import Explainer
    from lrpcli.runs.concepts import relevance_maximisation

    model, x = _conv_net(), _x(9)
    names = [f"x{i}" for i in range(9)]
    explainer = Explainer(model)
    relevant, active = relevance_maximisation(explainer, [(names[:4], x[:4]), (names[4:], x[4:])], "2", 3)
    full = explain(model, x, layers=["2"])
    per_channel = full.layer_maps["2"].sum((2, 3))
    activation = model[:3](x).amax((2, 3)).detach()
    for c in range(5):
        assert [n for n, _ in relevant.ranking(c)] == [names[i] for i in per_channel[:, c].argsort(descending=True)[:3]]
        assert [n for n, _ in active.ranking(c)] == [names[i] for i in activation[:, c].argsort(descending=True)[:3]]


def test_api_references_equal_a_brute_force_ranking_with_each_crop_from_its_own_conditional_map():
    import lrpcli
    from lrpcli.runs.concepts import crop_box

    model, x = _conv_net(), _x(9)
    found = lrpcli.references(model, x, "2", k=3, batch_size=4)  # 9 inputs ranked in batches of 4
    assert isinstance(found, lrpcli.References) and "references" in dir(lrpcli)
    full = explain(model, x, layers=["2"])
    per_channel = full.layer_maps["2"].sum((2, 3))
    activation = model[:3](x).amax((2, 3)).detach()
    assert (found.channels == range(5)).all() and (found.targets == full.targets.numpy()).all()
    for c in range(5):
        for index, values, boxes, truth in (
            (found.relevant, found.relevance, found.relevant_boxes, per_channel),
            (found.active, found.activation, found.active_boxes, activation),
        ):
            assert list(index[c]) == truth[:, c].argsort(descending=True)[:3].tolist()
            np.testing.assert_allclose(values[c], truth[index[c], c].numpy(), rtol=1e-12)
            for rank, i in enumerate(index[c]):  # each crop from a walk of its own, not the batched one
                heat = explain(model, x[i : i + 1], target=full.targets[i : i + 1], condition={"2": [c]}).relevance[0]
                assert tuple(boxes[c, rank]) == crop_box(heat.numpy()), (c, rank)
    rows = found.table()
    assert len(rows) == 2 * 5 * 3 and rows[0] == {
        "layer": "2", "channel": 0, "kind": "relevance", "rank": 1, "input": found.names[found.relevant[0, 0]],
        "value": found.relevance[0, 0], **dict(zip(("top", "left", "bottom", "right"), found.relevant_boxes[0, 0].tolist())),
    }
    names = [f"img{i}" for i in range(9)]
    named = lrpcli.references(model, x, "2", k=12, channels=[4], names=names)
    assert named.relevant.shape == (1, 12) and (named.relevant[0, 9:] == -1).all()  # fewer inputs than k
    assert list(named.relevant[0, :3]) == list(found.relevant[4]) and len(named.table()) == 2 * 9
    assert {r["input"] for r in named.table()} == set(names)


@pytest.mark.parametrize(
    "options, words",
    [({"channels": [7]}, "out of range"), ({"names": ["a"]}, "1 names for 3 inputs"), ({"names": ["a", "a", "b"]}, "repeat"),
     ({"k": 0}, "at least 1"), ({"target": [0, 1]}, "2 targets for 3 inputs")],
)
def test_api_references_errors(options, words):
    import lrpcli

    with pytest.raises(UsageError) as caught:
        lrpcli.references(_conv_net(), _x(3), "2", **options)
    assert words in caught.value.message


def test_crop_box_holds_the_given_share_of_positive_relevance():
    from lrpcli.runs.concepts import crop_box

    heat = np.zeros((6, 8))
    heat[1, 2], heat[3, 5], heat[5, 0] = 5.0, 4.0, 1.0  # 80 % of 10: the two largest
    heat[0, 7] = -9.0  # negative: not counted
    assert crop_box(heat, 0.8) == (1, 2, 4, 6)
    assert crop_box(heat, 1.0) == (1, 0, 6, 6)
    assert crop_box(-np.ones((2, 3))) == (0, 0, 2, 3)
    assert crop_box(np.stack([heat, heat])) == (1, 2, 4, 6)  # channels summed


# --------------------------------------------------------------------------- lrp concepts


@pytest.fixture
def gray_world(tmp_path):
    from cli_support import save_torchscript, tiny_gray, write_image

    model = tiny_gray()
    save_torchscript(model, tmp_path / "m.ts")
    for i in range(5):
        write_image(tmp_path / "imgs" / f"i{i}.png", 40 + i, size=(8, 8), mode="L")
    return tmp_path, model


def test_cli_concepts_writes_every_channel_and_the_chosen_maps_which_sum_to_the_heatmap(gray_world):
    from cli_support import load_tensor, lrp, read_csv

    tmp, model = gray_world
    common = ["--mode", "l", "--mean", "0.5", "--std", "0.5", "-c", "epsilon", "--dtype", "float64", "-q"]
    run = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--layer", "conv", "--channels", "0,1,2,3", *common, out=tmp / "all")
    assert run.code == 0, run.describe()
    rows = read_csv(tmp / "all" / "concepts.csv")
    assert len(rows) == 5 * 4 and set(rows[0]) >= {"input", "layer", "channel", "relevance", "activation"}
    x = load_tensor(tmp / "imgs" / "i2.png", mode="L", mean=[0.5], std=[0.5]).double()[None]
    full = explain(model.double(), x, "epsilon", layers=["conv"])
    maps = [run.array(f"concepts/i2/conv/{c}.npy") for c in range(4)]
    assert np.allclose(sum(maps), full.relevance[0].numpy(), rtol=1e-5, atol=1e-9)
    per_channel = full.layer_maps["conv"][0].sum((1, 2)).numpy()
    assert np.allclose([float(r["relevance"]) for r in rows if r["input"] == "i2.png"], per_channel, rtol=1e-9)
    assert run.png("concepts/i2/conv/3.png").shape[2] == 3

    top = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--layer", "conv", "--top", "2", *common, out=tmp / "top")
    assert top.code == 0, top.describe()
    chosen = {p.stem for p in (tmp / "top" / "concepts" / "i2" / "conv").glob("*.npy")}
    assert chosen == {str(c) for c in np.argsort(-per_channel)[:2]}
    _page_shows_every_picture(tmp / "top", {f"concepts/i{i}/conv/{p.stem}.png" for i in range(5) for p in (tmp / "top" / "concepts" / f"i{i}" / "conv").glob("*.npy")})


def _page_shows_every_picture(out, pictures):
    import re

    html = (out / "concepts.html").read_text(encoding="utf-8")
    shown = set(re.findall(r'<img src="([^"]+)"', html))
    assert shown == pictures and all((out / p).is_file() for p in shown)
    assert "<script" not in html and "http" not in html.split("Content-Security-Policy")[1].split(">")[1]


def test_cli_reference_ranks_equal_the_ranking_of_concepts_csv(gray_world):
    from cli_support import lrp, read_csv

    tmp, _ = gray_world
    common = ["--mode", "l", "--mean", "0.5", "--std", "0.5", "-q"]
    assert lrp("concepts", tmp / "m.ts", tmp / "imgs", "--layer", "conv", "--channels", "0,1,2,3", *common, out=tmp / "c").code == 0
    run = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--layer", "conv", "--reference", "3", "-b", "2", *common, out=tmp / "r")
    assert run.code == 0, run.describe()
    concepts = read_csv(tmp / "c" / "concepts.csv")
    references = read_csv(tmp / "r" / "references.csv")
    assert len(references) == 2 * 4 * 3
    for kind in ("relevance", "activation"):
        for channel in range(4):
            brute = sorted((r for r in concepts if int(r["channel"]) == channel), key=lambda r: (-float(r[kind]), r["input"]))[:3]
            ranked = sorted((r for r in references if r["kind"] == kind and int(r["channel"]) == channel), key=lambda r: int(r["rank"]))
            assert [r["input"] for r in ranked] == [r["input"] for r in brute], (kind, channel)
            for r in ranked:
                assert 0 <= int(r["top"]) < int(r["bottom"]) <= 8 and 0 <= int(r["left"]) < int(r["right"]) <= 8
                assert run.png(r["crop"]).shape[2] == 3
    _page_shows_every_picture(tmp / "r", {r["crop"] for r in references})


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--layer", "conv", "--top", "2", "--channels", "1"], 2, "exclude each other"),
        (["--layer", "nope"], 2, "no layer 'nope'"),
        (["--layer", "conv", "--channels", "7"], 2, "out of range"),
        (["--layer", "conv", "--channels", "a,b"], 2, "channel indices"),
        (["--layer", "conv", "--target", "all"], 2, "one output per input"),
    ],
)
def test_cli_concepts_refuses_bad_options(gray_world, extra, code, words):
    from cli_support import lrp, refused

    tmp, _ = gray_world
    run = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--mode", "l", "-q", *extra, out=tmp / "o")
    refused(run, code, words)


def test_cli_reference_shards_merge_to_the_single_runs_references_exactly(gray_world):
    from cli_support import lrp, read_csv, refused, write_image

    tmp, _ = gray_world
    for i in range(5, 12):
        write_image(tmp / "imgs" / f"i{i}.png", 40 + i, size=(8, 8), mode="L")
    common = [tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--reference", "3", "-q"]
    single = lrp("concepts", *common, out=tmp / "one")
    assert single.code == 0, single.describe()
    for index in (1, 2, 3):
        shard = lrp("concepts", *common, "--shard", f"{index}/3", out=tmp / "parts")
        assert shard.code == 0, shard.describe()
    merged = lrp("merge", tmp / "parts")
    assert merged.code == 0, merged.describe()
    expected, joined = read_csv(tmp / "one" / "references.csv"), read_csv(tmp / "parts" / "references.csv")
    assert joined == expected
    for row in expected:
        assert (tmp / "parts" / row["crop"]).read_bytes() == (tmp / "one" / row["crop"]).read_bytes()
    (tmp / "parts" / "references.shard-2-of-3.json").unlink()
    refused(lrp("merge", tmp / "parts"), 5, "shard(s) 2/3 missing")
    refused(lrp("concepts", tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--shard", "1/2", out=tmp / "x"), 2, "--shard applies to --reference")


def test_cli_concepts_skips_a_bad_image_and_exits_5_or_stops_with_on_error_fail(gray_world):
    from cli_support import lrp, read_csv, refused

    tmp, _ = gray_world
    (tmp / "imgs" / "broken.png").write_bytes(b"not a png")
    skipped = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--top", "1", "-q", out=tmp / "s")
    refused(skipped, 5, "broken.png", "1 of 6 input(s) failed")
    assert {r["input"] for r in read_csv(tmp / "s" / "concepts.csv")} == {f"i{i}.png" for i in range(5)}
    stopped = lrp("concepts", tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--on-error", "fail", "-q", out=tmp / "f")
    refused(stopped, 5, "broken.png")
    assert not (tmp / "f" / "concepts.csv").exists()


class _Residual(nn.Module):
    """Bias-free ReLU net with a residual block: relu(conv1 x) -> conv3(relu(conv2 .)) + skip(.) -> relu, pool, linear.
    conv2 is not a cut of the graph (the skip goes around it); the block's output is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(5, 4, 3, padding=1, bias=False)
        self.skip = nn.Conv2d(4, 4, 1, bias=False)
        self.head = nn.Linear(16, 3, bias=False)

    def parts(self, x):
        a1 = torch.relu(self.conv1(x))
        a2 = self.conv2(a1)
        block = torch.relu(self.conv3(torch.relu(a2)) + self.skip(a1))
        return a2, block, self.head(nn.functional.adaptive_avg_pool2d(block, 2).flatten(1))

    def forward(self, x):
        return self.parts(x)[2]


def _masked_backward(model, x, target, which, channel):
    """x * (d a/dx)^T (g * m): the gradient of the target at layer output ``a`` masked to ``channel``, pulled back
    through what ``a`` is computed from only (autograd follows no path around it)."""
    inputs = x.clone().requires_grad_(True)
    parts = model.parts(inputs)
    (g,) = torch.autograd.grad(parts[2][:, target].sum(), parts[which], retain_graph=True)
    mask = torch.zeros_like(g)
    mask[:, channel] = 1
    (pulled,) = torch.autograd.grad(parts[which], inputs, g * mask)
    return x * pulled


@pytest.mark.parametrize("layer, which, channels", [("conv2", 0, 5), ("", 1, 4)])
def test_conditioning_a_layer_a_residual_goes_around_counts_only_relevance_through_it(layer, which, channels):
    """LRP-0 on the bias-free residual net = gradient x input; the conditional map of channel c is the masked
    backward through the layer; the maps of all channels sum to the heatmap only where the layer is a cut."""
    model = _Residual().double().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    name = layer or "relu_2"  # the block's output: the relu after the add (a node name)
    full = explain(model, x, "lrp_0", target=1)
    total = torch.zeros_like(full.relevance)
    for channel in range(channels):
        got = explain(model, x, "lrp_0", target=1, condition={name: [channel]}).relevance
        expected = _masked_backward(model, x, 1, which, channel)
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-10), (name, channel)
        total += got
    through = _masked_backward(model, x, 1, which, list(range(channels)))
    assert torch.allclose(total, through, rtol=1e-8, atol=1e-10)
    assert torch.allclose(total, full.relevance, rtol=1e-8, atol=1e-10) == (layer == "")


@pytest.mark.parametrize("layer", ["layer1.0", "layer2.0", "conv1"])
def test_concept_maps_sum_to_the_heatmap_through_residual_joins_and_folded_batch_norm(small_resnet, layer):
    model = small_resnet.double()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = explain(model, x, "epsilon_plus_flat", layers=[layer])
    channels = full.layer_maps[layer].shape[1]
    conditioned = explain(model, x.repeat(channels, 1, 1, 1), "epsilon_plus_flat", target=full.targets[0], condition={layer: torch.eye(channels, dtype=x.dtype)})
    scale = full.relevance.abs().max().item()
    assert scale > 0 and torch.allclose(conditioned.relevance.sum(0), full.relevance[0], rtol=1e-5, atol=1e-5 * scale)


def test_cli_reference_resumes_an_interrupted_ranking_to_the_same_result(gray_world, monkeypatch):
    from cli_support import lrp, read_csv, refused

    import lrpcli.runs.concepts as runs

    tmp, _ = gray_world
    common = [tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--reference", "2", "-b", "2", "-q"]
    assert lrp("concepts", *common, out=tmp / "whole").code == 0
    add, calls = runs.Ranking.add, []

    def interrupted(self, explainer, names, *args):
        if len(calls) == 2:
            raise runs.InputError("interrupted here")
        calls.append(list(names))
        add(self, explainer, names, *args)

    monkeypatch.setattr(runs.Ranking, "add", interrupted)
    refused(lrp("concepts", *common, out=tmp / "cut"), 5, "interrupted here")
    assert (tmp / "cut" / "references.partial.json").exists() and not (tmp / "cut" / "references.csv").exists()
    monkeypatch.setattr(runs.Ranking, "add", lambda self, explainer, names, *args: (calls.append(list(names)), add(self, explainer, names, *args)))
    resumed = lrp("concepts", *common, "--resume", out=tmp / "cut")
    assert resumed.code == 0, resumed.describe()
    assert sorted(sum(calls, [])) == [f"i{i}.png" for i in range(5)]  # each input ranked once, over both runs
    assert read_csv(tmp / "cut" / "references.csv") == read_csv(tmp / "whole" / "references.csv")
    assert not (tmp / "cut" / "references.partial.json").exists()
    refused(lrp("concepts", tmp / "m.ts", tmp / "imgs", "--mode", "l", "--layer", "conv", "--resume", out=tmp / "x"), 2, "--resume applies to --reference")
