"""The disk cache of captured graphs: a warm run skips the capture and explains exactly as a cold one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lrpcli import Explainer
from lrpcli.sources import cache as graph_cache
from lrpcli.engine import explainer as engine_module

from cli_support import lrp, minivgg, save_torchscript, write_image


class _Mixed(nn.Module):
    """Conv, batch-norm, attention, LayerNorm, an LSTM: most of what a graph can hold."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        x = self.embed(ids)
        x = self.norm(x + self.attention(x, x, x, need_weights=False)[0])
        return self.head(self.rnn(x)[0].mean(1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LRP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _counting_capture(monkeypatch):
    calls = []
    original = engine_module.capture

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "capture", counted)
    return calls


@pytest.mark.parametrize("case", ["minivgg", "mixed"])
def test_a_warm_run_loads_the_graph_and_explains_exactly_as_a_cold_one(case, cache, monkeypatch):
    torch.manual_seed(0)
    if case == "minivgg":
        model, x, composite = torch.jit.script(minivgg()), torch.rand(2, 3, 32, 32), "epsilon_plus_flat"
    else:
        model, x, composite = _Mixed().eval(), torch.randint(0, 20, (2, 5)), "attnlrp"
    calls = _counting_capture(monkeypatch)
    cold = Explainer(model, composite)
    cold.graph_store = graph_cache.DiskCache(f"test-{case}")
    first = cold.explain(x)
    assert len(calls) == 1 and len(list(cache.glob("*.json"))) == 1
    engine_module._CAPTURED.clear()
    warm = Explainer(model, composite)
    warm.graph_store = graph_cache.DiskCache(f"test-{case}")
    second = warm.explain(x)
    assert len(calls) == 1  # no capture the second time
    torch.testing.assert_close(second.outputs, first.outputs, rtol=0, atol=0)
    torch.testing.assert_close(second.relevance, first.relevance, rtol=0, atol=0)


def test_a_damaged_entry_is_a_miss_and_is_captured_again(cache, monkeypatch, tmp_path):
    torch.manual_seed(0)
    model, x = minivgg(), torch.rand(1, 3, 32, 32)
    explainer = Explainer(model, "epsilon")
    explainer.graph_store = graph_cache.DiskCache("damaged")
    explainer.explain(x)
    (entry,) = cache.glob("*.json")
    entry.write_text("{not json")
    with pytest.warns(UserWarning, match="is not used: it is damaged"):
        assert graph_cache.load(cache, entry.stem, model, x) is None
    calls = _counting_capture(monkeypatch)
    engine_module._CAPTURED.clear()
    again = Explainer(model, "epsilon")
    again.graph_store = graph_cache.DiskCache("damaged")
    again.explain(x)
    assert len(calls) == 1  # captured afresh, and the entry rewritten
    assert graph_cache.load(cache, entry.stem, model, x) is not None


def test_the_cli_caches_by_the_weights_and_no_cache_turns_it_off(cache, tmp_path):
    save_torchscript(minivgg(), tmp_path / "m.ts")
    write_image(tmp_path / "imgs" / "a.png", 1)
    assert lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", "--no-cache", out=tmp_path / "o0").code == 0
    assert not cache.exists() or not list(cache.glob("*.json"))
    assert lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", out=tmp_path / "o1").code == 0
    assert len(list(cache.glob("*.json"))) == 1
    save_torchscript(minivgg(seed=1), tmp_path / "m.ts")  # other weights, same file name: another entry
    assert lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", out=tmp_path / "o2").code == 0
    assert len(list(cache.glob("*.json"))) == 2


def test_lrp_evaluate_uses_the_cache_too(cache, tmp_path, monkeypatch):
    save_torchscript(minivgg(), tmp_path / "m.ts")
    for i in range(2):
        write_image(tmp_path / "imgs" / f"a{i}.png", 5 + i)
    args = ["evaluate", tmp_path / "m.ts", tmp_path / "imgs", "--steps", "2", "--baseline", "none", "-q"]
    assert lrp(*args, out=tmp_path / "e1").code == 0
    assert len(list(cache.glob("*.json"))) == 1
    calls = _counting_capture(monkeypatch)
    engine_module._CAPTURED.clear()
    assert lrp(*args, out=tmp_path / "e2").code == 0
    assert calls == []  # the second evaluation loaded the graph
    assert (tmp_path / "e1" / "evaluation.csv").read_text() == (tmp_path / "e2" / "evaluation.csv").read_text()


def test_every_engine_module_the_capture_imports_is_part_of_the_cache_key():
    """A change to the code that shapes a captured graph must miss the old cache entries: every engine module that
    capture.py and builder.py import is in the code hash (experts.py and state_space.py were not)."""
    import re
    from pathlib import Path

    from lrpcli.sources.cache import _GRAPH_CODE

    engine = Path(__file__).resolve().parents[1] / "lrpcli" / "engine"
    for source in ("capture.py", "builder.py"):
        text = (engine / source).read_text(encoding="utf-8")
        modules = re.findall(r"^from \.(\w+) import", text, re.M)
        modules += [name.strip() for names in re.findall(r"^from \. import ([\w, ]+)$", text, re.M) for name in names.split(",")]
        for module in modules:
            if (engine / f"{module}.py").is_file():
                assert f"engine/{module}.py" in _GRAPH_CODE, (source, module)
