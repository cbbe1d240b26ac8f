"""The peers' case families of issue 27 stay expressible and equal: ``benchmarks/peer_cases.py --toy``.

Each family (bias-free rules of zennit, captum and iNNvestigate; the ReLU-gradient rules and composites; batch-norm
after a transposed convolution; zennit's stabiliser modes; ``pass`` on a softmax; DeepTaylor's average pooling;
zennit's and LXT's start tensors; captum's several inputs) runs four of its cases through lrpcli and the peer side
by side (zennit 0.5.1, captum 0.9, LXT 2.1; iNNvestigate's stored reference attributions and its rule code written
out). The second test shows the comparison can fail: with ``zero_params`` dropped from lrpcli's lines, the
bias-free families differ from their peers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from . import zennit_support as zs
except ImportError:  # pragma: no cover
    import zennit_support as zs

pytest.importorskip("captum", reason="captum 0.9 not installed (the test extra)")
pytest.importorskip("lxt", reason="lxt 2.1 not installed: pip install --no-deps lxt==2.1")

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")  # captum

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_cases.py"
BIAS_FREE = ("bias_free_zennit", "bias_free_captum", "bias_free_innvestigate")


@pytest.fixture(scope="module")
def peer_cases():
    zs.require_zennit()
    spec = importlib.util.spec_from_file_location("peer_cases", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["peer_cases"] = module  # its dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["peer_cases"]
    return module


def _summary(done) -> str:
    return "\n".join(f"{r.case.family}: {r.case.name}: {r.status} {r.difference:.3g} {r.note}" for item in done for r in item.results
                     if r.status not in ("equal", "convention"))


def test_every_family_of_issue_27_is_expressible_and_equal_to_its_peer(peer_cases):
    issue = [family.key for family in peer_cases.FAMILIES if family.issue]
    assert len(issue) == 10
    done = peer_cases.run(toy=True, families=issue)
    assert [item.family.key for item in done] == issue
    for item in done:
        assert item.results, f"{item.family.key}: no cases"
        assert item.count("equal", "convention") == len(item.results), _summary(done)
    # the one convention: captum hands each summand the whole relevance of a sum
    conventions = {r.case.family for item in done for r in item.results if r.status == "convention"}
    assert conventions == {"captum_multi_input"}


def test_the_comparison_fails_when_lrpcli_ignores_zero_params(peer_cases, monkeypatch):
    monkeypatch.setattr(peer_cases, "bias_free", lambda entry: entry)  # the lines without zero_params: [bias]
    done = peer_cases.run(toy=True, families=list(BIAS_FREE))
    for item in done:
        differing = [r for r in item.results if r.status == "differ"]
        assert differing, f"{item.family.key}: nothing differs with the bias kept, the comparison proves nothing"
        assert min(r.difference for r in differing) > 1e-3
