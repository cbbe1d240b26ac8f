"""The language-model and GPU benchmarks run (issue 28 item 5): ``benchmarks/gpu.py --toy`` and
``benchmarks/llm_speed.py --toy`` at tiny sizes on the CPU, so that neither rots before a GPU is lent; and
``benchmarks/hf_zoo.py --toy`` (issue 27 item 6) on three of transformers' families, so the sweep does not rot.

Both run at once, each in a process of its own (they start LXT in processes of their own too). Their numbers
are not checked (tiny models on a shared CPU); that every method of every model printed a row without failing is.

The sweep's per-family settings (``FAMILY``, ``INPUTS``) are checked without lrpcli: each family they fix builds
and its forward runs on the input the sweep feeds it, one (batch, classes) row a sample (each was a ``model`` or
``build`` row before them); families transformers' own code breaks keep their outcome, with a cause that says so.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")

pytest.importorskip("transformers")

_spec = importlib.util.spec_from_file_location("hf_zoo", ROOT / "benchmarks" / "hf_zoo.py")
hf_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_zoo)

#: keys the per-family settings fix (each ran into a size mismatch, a wrong input or a config that does not build)
FIXED = [
    "image:cvt", "image:efficientformer", "image:hgnet_v2", "image:hiera", "image:imagegpt", "image:mobilevitv2",
    "image:pvt", "image:shieldgemma2", "image:siglip2", "audio:audio-spectrogram-transformer", "causal:aria_text",
    "causal:longcat_flash", "causal:xlstm", "causal:mllama", "causal:musicgen", "causal:musicgen_melody",
    "causal:phi4_multimodal", "causal:reformer", "image:bit", "image:efficientnet", "image:levit", "image:textnet",
]


@pytest.mark.parametrize("key", FIXED)
def test_hf_zoo_builds_and_runs_each_fixed_family(key):
    import torch

    config, model, size = hf_zoo.build(key)
    assert model is not None and size <= hf_zoo.MAX_PARAMETERS, size
    x, wrapper = hf_zoo.example(key.split(":")[0], config, model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = wrapper(x)
    assert logits.shape[0] == hf_zoo.BATCH and logits.dim() == 2 and torch.isfinite(logits).all(), logits.shape


@pytest.fixture
def run_child():
    """hf_zoo.run_child, with the thread count it sets for its child processes put back for this one."""
    import torch

    threads = torch.get_num_threads()
    yield hf_zoo.run_child
    torch.set_num_threads(threads)


@pytest.mark.parametrize("key", ["seq:transfo-xl", "causal:speech_to_text_2"])
def test_hf_zoo_names_transformers_own_faults(key, run_child):
    row = run_child(key)
    assert row["outcome"] in ("model", "build") and row["cause"].startswith("transformers 4."), row
    assert "bug:" in row["cause"] and ("type_as" in row["cause"] or ".weight" in row["cause"]), row


def test_hf_zoo_cause_names_a_missing_package(run_child):
    # transformers' ImportErrors start with a blank line: the cause was "ImportError: " alone
    row = run_child("seq:qdqbert")
    assert row["outcome"] == "build" and "requires the pytorch-quantization library" in row["cause"], row


# about a minute of subprocesses (LXT side by side): `.ci/run` runs it in its `-m slow` step
slow = pytest.mark.slow


def _rows(out: str) -> dict[tuple[str, ...], list[str]]:
    """Markdown table rows -> their cells, keyed by the cells before the numbers (model, dtype, method)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"} and cells[0] not in ("method", "model"):
            key = tuple(cells[:3]) if len(cells) >= 8 else (cells[0],)
            rows[key] = cells
    return rows


@pytest.fixture(scope="module")
def runs():
    started = {
        name: subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / name), "--toy"], cwd=str(ROOT), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("gpu.py", "llm_speed.py", "hf_zoo.py")
    }
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"benchmarks/{name} --toy failed:\n{err[-3000:]}"
        done[name] = out
    return done


@slow
def test_llm_speed_prints_each_method(runs):
    rows = _rows(runs["llm_speed.py"])
    assert "Llama-shaped" in runs["llm_speed.py"] and "12-token prompt, 3 generated tokens" in runs["llm_speed.py"]
    for method in ("gradient", "lrpcli", "lrpcli 1 seed/walk"):
        cells = rows[(method,)]
        assert float(cells[1]) > 0 and cells[2].endswith("x"), cells  # seconds per token and the ratio
    assert ("lxt",) in rows or ("lxt (does not import)",) in rows


@slow
def test_gpu_prints_every_model_and_method(runs):
    out = runs["gpu.py"]
    assert "lrpcli against the gradient and LXT on cpu" in out
    rows = _rows(out)
    failed = [cells for cells in rows.values() if cells[3].startswith("failed")]
    assert not failed, failed
    expected = [("VGG16 (toy)", "float32", "epsilon_plus_flat"), ("ResNet (toy)", "float32", "epsilon_plus_flat"),
                ("ViT (toy)", "float32", "attnlrp"), ("BERT (toy)", "float32", "cp_lrp"), ("BERT (toy)", "bfloat16", "attnlrp"),
                ("Llama (toy)", "float32", "attnlrp"), ("Llama (toy)", "bfloat16", "attnlrp")]
    for key in expected:
        assert key in rows, (key, sorted(rows))
        assert float(rows[key][3]) > 0  # ms
    # on the CPU the float32 rows are the CPU reference itself; bfloat16 differs from it, but not wildly
    assert float(rows[("ViT (toy)", "float32", "attnlrp")][7]) == 0
    assert 0 < float(rows[("BERT (toy)", "bfloat16", "attnlrp")][7]) < 0.5


@slow
def test_hf_zoo_explains_its_toy_families(runs):
    out = runs["hf_zoo.py"]
    assert "**3 of 3 buildable architectures explain** (3 with finite relevance" in out, out
    for key in ("seq:bert", "causal:llama", "image:vit"):
        cells = [c.strip() for c in next(line for line in out.splitlines() if line.startswith(f"| {key} |")).strip("|").split("|")]
        assert cells[2] == "explains" and cells[3] == "True" and float(cells[5]) <= 1e-4, cells
