"""The model zoo: does lrpcli explain real architectures, in every form a user hands it?

    python benchmarks/zoo.py                         # everything, writes benchmarks/zoo_results.md
    python benchmarks/zoo.py --list                  # the model keys
    python benchmarks/zoo.py --only torchvision:swin_t --only hf:gpt2 --out /tmp/zoo.md
    python benchmarks/zoo.py --source timm --forms eager,pt2

Needs torchvision (and, for their rows, timm and transformers) beside lrpcli. torchvision
0.29.1 imports only beside torch 2.14.1, so the zoo runs in a venv of its own, outside the
repository (the project's .venv stays on torch 2.13)::

    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /tmp/zoo-constraints.txt
    python3 -m venv /work/zoo-venv
    /work/zoo-venv/bin/pip install -c /tmp/zoo-constraints.txt torch==2.14.1 torchvision==0.29.1
    /work/zoo-venv/bin/pip install -c /tmp/zoo-constraints.txt timm 'transformers>=4.51' \\
        numpy pyyaml click rich pillow matplotlib safetensors pytest
    /work/zoo-venv/bin/pip install --no-deps -e .
    /work/zoo-venv/bin/python benchmarks/zoo.py

Models: every classification model of ``torchvision.models.list_models(module=torchvision.models)``,
one timm model per family and small Hugging Face classifiers (BERT, DistilBERT, RoBERTa, GPT-2,
ViT, DeiT, Swin); random weights (seeded, batch-norm statistics randomised so folding
matters; a Linear or conv weight the builder leaves all zero, such as torchvision ViT's head, drawn
from N(0, 0.02), else every logit is 0), eval mode, a batch of 2 at a small input size (64x64 for CNNs; ViTs are built for
two patches a side where the builder takes an image size; 8 token ids for the text models).

Forms: ``eager`` (the nn.Module), ``torchscript`` (``torch.jit.trace``, saved and loaded back
as a file) and ``pt2`` (``torch.export.export`` with a dynamic batch, else a static one,
``torch.export.save``, then lrpcli loads the file). A form that torch cannot trace or export
fails at stage ``trace``/``export`` (a torch limitation); one that lrpcli cannot capture or
explain fails at stage ``lrpcli``.

Per form: the outcome, whether the relevance is finite, the conservation ledger of
``explain(..., layer_relevance=True)`` (the input relevance total against the target logit,
and what the per-node ledger does not explain: gap - (bias + stabiliser + rule share)),
how far the relevance is from the eager form's, whether the captured graph's logits are the
eager module's (flagged where they differ by more than 1e-4 of the largest logit), and time and peak memory of one
``explain`` call against the plain gradient (``x.grad * x`` of the target logit on the eager
module, parameters frozen; for token ids the gradient x input at the word-embedding output,
summed over the hidden dimension). Times are medians of interleaved calls after a warm-up
(lrpcli captures its graph there); peak memory is the resident set's high-water mark
during one call (``/proc/self/clear_refs``) above the resident set before it, in a child
process started with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed tensors leave the resident set.

Composites: ``epsilon_plus_flat`` for CNNs (SE nets and ConvNeXt included), ``attnlrp`` for
models with attention (ViT, Swin, MaxViT, MobileViT, LeViT and the Hugging Face models).

Every model runs in a child process of its own (``--child KEY``), which prints one JSON
line per form; a crash or a time-out costs that model's remaining forms only.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "zoo_results.md"
FORMS = ("eager", "torchscript", "pt2")
#: the order a child runs the forms in: torch.jit.trace and a failed TorchScript conversion can leave
#: state behind that makes a later torch.export of the same module fail (seen on HF Swin), so TorchScript last
RUN_ORDER = ("eager", "pt2", "torchscript")
#: lrpcli's wording when torch.export or torch's TorchScript converter refused the model
TORCH_CAPTURE_ERRORS = ("ModelError: torch.export could not capture", "ModelError: could not convert the TorchScript model")
BATCH = 2
CNN, ATTN = "epsilon_plus_flat", "attnlrp"


@dataclass(frozen=True)
class Entry:
    key: str  # source:name
    family: str
    composite: str
    input_desc: str  # e.g. "3x64x64" or "8 ids"
    build: Callable[[], Any]  # () -> nn.Module returning (batch, classes)
    make_input: Callable[[Any], Any]  # torch.Generator -> input batch
    tokens: bool = False

    @property
    def source(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(":", 1)[1]


def _images(size: int) -> Callable[[Any], Any]:
    def make(generator):
        import torch

        return torch.randn(BATCH, 3, size, size, generator=generator)

    return make


def _ids(vocab: int, length: int = 8, low: int = 2) -> Callable[[Any], Any]:
    def make(generator):
        import torch

        return torch.randint(low, vocab, (BATCH, length), generator=generator)

    return make


# --------------------------------------------------------------------------- torchvision

TV_ATTENTION = ("vit", "swin", "swin_v2", "maxvit")
TV_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
#: sizes where 64x64 does not work or the builder fixes the size
TV_SIZES = {"inception_v3": 80, "maxvit_t": 224}  # inception: at least 75; maxvit_t: partition 7 at stride 32


def tv_family(name: str) -> str:
    match = re.match(r"(wide_resnet|mobilenet_v\d|efficientnet_v2|swin_v2|regnet_[xy]|[a-z]+)", name)
    return match.group(1) if match else name


def torchvision_entries() -> list[Entry]:
    try:
        import torchvision
    except Exception:
        return []
    entries = []
    for name in torchvision.models.list_models(module=torchvision.models):
        family = tv_family(name)
        kwargs: dict[str, Any] = {}
        size = TV_SIZES.get(name, 64)
        if name in TV_VIT_PATCH:
            size = 2 * TV_VIT_PATCH[name]  # two patches a side
            kwargs["image_size"] = size

        def build(name=name, kwargs=kwargs):
            import torchvision

            return torchvision.models.get_model(name, weights=None, **kwargs)

        composite = ATTN if family in TV_ATTENTION else CNN
        entries.append(Entry(f"torchvision:{name}", family, composite, f"3x{size}x{size}", build, _images(size)))
    return entries


# --------------------------------------------------------------------------- timm: one per family

TIMM_MODELS = [  # (family, name, create_model kwargs, image size, composite)
    ("resnet", "resnet18", {}, 64, CNN),
    ("efficientnet", "efficientnet_b0", {}, 64, CNN),
    ("mobilenetv3", "mobilenetv3_small_100", {}, 64, CNN),
    ("regnet", "regnety_002", {}, 64, CNN),
    ("convnext", "convnext_atto", {}, 64, CNN),
    ("vit/deit", "deit_tiny_patch16_224", {"img_size": 32}, 32, ATTN),
    ("swin", "swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}, 64, ATTN),
    ("maxvit", "maxvit_tiny_tf_224", {"img_size": 64}, 64, ATTN),
    ("mobilevit", "mobilevit_xxs", {}, 64, ATTN),
    ("levit", "levit_128s", {"img_size": 64}, 64, ATTN),
]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # not installed, or built against another torch
        return False
    return True


def timm_entries() -> list[Entry]:
    if not _importable("timm"):
        return []
    entries = []
    for family, name, kwargs, size, composite in TIMM_MODELS:

        def build(name=name, kwargs=kwargs):
            import timm

            return timm.create_model(name, pretrained=False, **kwargs)

        entries.append(Entry(f"timm:{name}", f"timm {family}", composite, f"3x{size}x{size}", build, _images(size)))
    return entries


# --------------------------------------------------------------------------- Hugging Face: small configs

HF_VOCAB = 100
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)


def _hf_module():
    """A module class that wraps a Hugging Face classifier so that forward(x) returns its logits."""
    import torch

    class HFLogits(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, key: str):
            super().__init__()
            self.model, self.key = model, key

        def forward(self, x):
            return self.model(**{self.key: x}).logits

    return HFLogits


def _hf_build(name: str):
    import transformers as tf

    if name == "bert":
        model, key = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=HF_VOCAB, max_position_embeddings=32, **HF_SMALL)), "input_ids"
    elif name == "distilbert":
        config = tf.DistilBertConfig(vocab_size=HF_VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=3)
        model, key = tf.DistilBertForSequenceClassification(config), "input_ids"
    elif name == "roberta":
        config = tf.RobertaConfig(vocab_size=HF_VOCAB, max_position_embeddings=40, pad_token_id=1, **HF_SMALL)
        model, key = tf.RobertaForSequenceClassification(config), "input_ids"
    elif name == "gpt2":
        config = tf.GPT2Config(
            vocab_size=HF_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=1
        )
        model, key = tf.GPT2ForSequenceClassification(config), "input_ids"
    elif name == "vit":
        model, key = tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, **HF_SMALL)), "pixel_values"
    elif name == "deit":
        model, key = tf.DeiTForImageClassification(tf.DeiTConfig(image_size=32, patch_size=8, num_channels=3, **HF_SMALL)), "pixel_values"
    elif name == "swin":
        config = tf.SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3)
        model, key = tf.SwinForImageClassification(config), "pixel_values"
    else:  # pragma: no cover
        raise KeyError(name)
    return _hf_module()(model, key)


HF_MODELS = [  # (name, input description, input maker, tokens?)
    ("bert", "8 ids", _ids(HF_VOCAB), True),
    ("distilbert", "8 ids", _ids(HF_VOCAB), True),
    ("roberta", "8 ids", _ids(HF_VOCAB), True),  # ids from 2: 1 is RoBERTa's padding id
    ("gpt2", "8 ids", _ids(HF_VOCAB), True),  # no padding: the last token pools
    ("vit", "3x32x32", _images(32), False),
    ("deit", "3x32x32", _images(32), False),
    ("swin", "3x32x32", _images(32), False),
]


def hf_entries() -> list[Entry]:
    if not _importable("transformers"):
        return []
    return [
        Entry(f"hf:{name}", "hf " + name, ATTN, desc, (lambda name=name: _hf_build(name)), make, tokens)
        for name, desc, make, tokens in HF_MODELS
    ]


SOURCES = {"torchvision": torchvision_entries, "timm": timm_entries, "hf": hf_entries}


def all_entries(sources: tuple[str, ...] = tuple(SOURCES)) -> list[Entry]:
    """The models of ``sources`` whose library imports (a child imports only its model's)."""
    return [entry for source in sources for entry in SOURCES[source]()]


# --------------------------------------------------------------------------- the child: one model, three forms


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mib(run: Callable[[], Any]) -> float | None:
    """The resident set's high-water mark during ``run()`` above the resident set before it."""
    gc.collect()
    try:
        held = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    out = run()
    peak = (_rss_kib("VmHWM") - held) / 1024
    del out
    return max(peak, 0.0)


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    return f"{type(exc).__name__}: {text}"[:300]


def randomize_batchnorm(model, seed: int = 0) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def randomize_zero_weights(model, seed: int = 0) -> list[str]:
    """Weights a builder sets to zero (torchvision ViT's head) get N(0, 0.02): a zero head gives zero logits."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and not bool(weight.any()):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
                changed.append(name)
    return changed


def make_gradient(entry: Entry, model, x, targets) -> Callable[[], Any]:
    """The plain gradient x input of the target logit (per token for token ids)."""
    import torch

    if not entry.tokens:

        def gradient():
            leaf = x.clone().requires_grad_()
            model(leaf).gather(1, targets[:, None]).sum().backward()
            return leaf.grad * leaf

        return gradient
    embeddings = model.model.get_input_embeddings()
    held: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        held["e"] = output.detach().requires_grad_()
        return held["e"]

    def token_gradient():
        handle = embeddings.register_forward_hook(hook)  # only while the gradient runs: lrpcli must not see it
        try:
            model(x).gather(1, targets[:, None]).sum().backward()
        finally:
            handle.remove()
        e = held.pop("e")
        return (e.grad * e).sum(-1)

    return token_gradient


def prepare_form(form: str, model, x, folder: Path) -> tuple[Any, str]:
    """What lrpcli is handed for ``form`` (a module or a file path) and a note."""
    import torch

    if form == "eager":
        return model, ""
    if form == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (x,), check_trace=False)
        path = folder / "model.torchscript.pt"
        torch.jit.save(traced, str(path))
        return str(path), ""
    if form == "pt2":
        note = "dynamic batch"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            except Exception:
                program, note = torch.export.export(model, (x,)), "static batch"
        path = folder / "model.pt2"
        torch.export.save(program, str(path))
        return str(path), note
    raise ValueError(form)


def time_pair(lrp: Callable[[], Any], gradient: Callable[[], Any], budget_s: float = 1.5) -> tuple[float, float]:
    """Median seconds of lrp() and gradient(), interleaved: rounds until ``budget_s`` is spent (1 to 9)."""
    lrp_times, grad_times = [], []
    rounds, start = 0, time.perf_counter()
    while rounds < 1 or (rounds < 9 and time.perf_counter() - start < budget_s):
        for run, times in ((gradient, grad_times), (lrp, lrp_times)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        rounds += 1
    return statistics.median(lrp_times), statistics.median(grad_times)


def ledger(result, x) -> dict[str, float]:
    """Sample 0's logit and input relevance, and over the batch the largest relative gap and unexplained part."""
    import torch

    batch = x.shape[0]
    initial = result.initial.reshape(batch, -1).sum(1).double()
    reached = result.relevance.reshape(batch, -1).sum(1).double()
    scale = torch.maximum(initial.abs(), result.relevance.reshape(batch, -1).abs().sum(1).double()).clamp_min(1e-30)
    explained = torch.zeros(batch, dtype=torch.float64)
    for layer in (result.layers or {}).values():
        for part in (layer.bias, layer.stabilizer, layer.rule_share):
            if part is not None:
                explained += part.double().cpu()
    gap = initial - reached
    return {
        "logit": float(initial[0]),
        "relevance_sum": float(reached[0]),
        "gap_rel": float((gap.abs() / scale).max()),
        "unexplained_rel": float(((gap - explained).abs() / scale).max()),
        "nodes": len(result.layers or {}),
    }


def run_child(key: str, forms: list[str], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from lrpcli import Explainer

    entry = next((e for e in all_entries((key.split(":", 1)[0],)) if e.key == key), None)
    if entry is None:
        raise SystemExit(f"unknown model {key}")

    def emit(record: dict[str, Any]) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record["cpu_s"] = usage.ru_utime + usage.ru_stime  # this child's CPU time so far (imports included)
        print("ZOO " + json.dumps({"key": key, **record}), flush=True)

    t = time.perf_counter()
    torch.manual_seed(0)
    try:
        model = entry.build().eval().requires_grad_(False)
        randomize_batchnorm(model)
        zeroed = randomize_zero_weights(model)
        x = entry.make_input(torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(x)
        targets = logits.argmax(1)
    except Exception as exc:
        for form in forms:
            emit({"form": form, "outcome": "failed", "stage": "build", "error": first_line(exc)})
        return
    params = sum(p.numel() for p in model.parameters())
    gradient = make_gradient(entry, model, x, targets)
    gradient()  # warm-up
    grad_mib = peak_mib(gradient)
    build_s = time.perf_counter() - t
    eager_relevance = None
    with tempfile.TemporaryDirectory(prefix="lrp-zoo-") as folder:
        for form in sorted(forms, key=RUN_ORDER.index):
            record: dict[str, Any] = {"form": form, "params": params, "build_s": build_s, "grad_mib": grad_mib}
            if zeroed:
                record["reinitialised"] = zeroed
            stage = {"eager": "lrpcli", "torchscript": "trace", "pt2": "export"}[form]
            try:
                t = time.perf_counter()
                handed, note = prepare_form(form, model, x, Path(folder))
                record["prepare_s"], record["note"] = time.perf_counter() - t, note
                stage = "lrpcli"
                t = time.perf_counter()
                explainer = Explainer(handed, entry.composite)
                try:
                    result = explainer.explain(x, targets, layer_relevance=True)
                except Exception as exc:  # the per-node ledger failed: is the explanation itself fine?
                    record["ledger_error"] = first_line(exc)
                    result = explainer.explain(x, targets)
                record["first_s"] = time.perf_counter() - t  # capture + prepare + one explanation
                relevance = result.relevance.detach()
                record["finite"] = bool(torch.isfinite(relevance).all())
                record.update(ledger(result, x))
                if "ledger_error" in record:
                    record["unexplained_rel"] = None
                scale = logits.abs().max().clamp_min(1e-30)
                record["outputs_rel"] = float((result.outputs.detach().to(logits.dtype) - logits).abs().max() / scale)
                if not torch.equal(result.targets, targets):
                    record["note"] = (note + "; " if note else "") + "targets differ from eager"
                if form == "eager":
                    eager_relevance = relevance
                elif eager_relevance is not None and eager_relevance.shape == relevance.shape:
                    scale = eager_relevance.abs().max().clamp_min(1e-30)
                    record["vs_eager"] = float((relevance - eager_relevance).abs().max() / scale)
                del result

                def lrp():
                    return explainer.explain(x, targets).relevance

                record["lrp_s"], record["grad_s"] = time_pair(lrp, gradient)
                record["lrp_mib"] = peak_mib(lrp)
                record["outcome"] = "ok"
            except Exception as exc:
                error = first_line(exc)
                if stage == "lrpcli" and error.startswith(TORCH_CAPTURE_ERRORS):
                    stage = "capture (torch)"  # lrpcli's capture ran torch.export / TS2EPConverter and torch refused
                record.update(outcome="failed", stage=stage, error=error)
            emit(record)
            explainer = handed = None  # noqa: F841  (free this form's graph and weights)
            gc.collect()


# --------------------------------------------------------------------------- the parent: run and report


def run_model(entry: Entry, forms: list[str], threads: int, timeout: float) -> list[dict[str, Any]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", entry.key, "--forms", ",".join(forms), "--threads", str(threads)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        stdout, code, why = proc.stdout, proc.returncode, None
        stderr = proc.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, code, why = "", None, f"timed out after {timeout:.0f} s"
    records = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ZOO ")]
    done = {r["form"] for r in records}
    for form in forms:
        if form not in done:
            if why is None:
                tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [""]
                why = f"child exited with code {code}" + (f": {tail[0][:200]}" if code not in (0, None) else "")
                if code is not None and code < 0:
                    why = f"child killed by signal {-code} (out of memory?)"
            records.append({"key": entry.key, "form": form, "outcome": "failed", "stage": "crash", "error": why})
    for record in records:
        record.update(family=entry.family, composite=entry.composite, input=entry.input_desc)
    records.sort(key=lambda r: forms.index(r["form"]))
    records[0]["wall_s"] = time.perf_counter() - start
    records[0]["model_cpu_s"] = max((r.get("cpu_s") or 0.0) for r in records)
    return records


def _fmt(value: Any, spec: str = ".3g", missing: str = "") -> str:
    if value is None:
        return missing
    return format(value, spec)


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None or b <= 0:
        return ""
    return f"{a / b:.2f}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    try:
        found["lrpcli commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "?"
    except Exception:
        found["lrpcli commit"] = "?"
    for name in ("torch", "torchvision", "timm", "transformers", "lrpcli"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except Exception:
            found[name] = "not installed"
    return found


def run_meta(args: argparse.Namespace, forms: list[str], wall_s: float) -> dict[str, Any]:
    return {
        "argv": args.argv,
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "jobs": args.jobs,
        "forms": forms,
        "wall_s": wall_s,
    }


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    forms = meta["forms"]
    lines = [
        "# Model zoo: lrpcli on real architectures, three forms each",
        "",
        f"Written by `python benchmarks/zoo.py{' ' + ' '.join(meta['argv']) if meta['argv'] else ''}` on "
        f"{meta['date']}: " + ", ".join(f"{k} {val}" for k, val in meta["versions"].items())
        + f"; {meta['cores']} cores, torch threads per model {meta['threads']}, {meta['jobs']} model(s) at once; the whole run took"
        f" {meta['wall_s'] / 60:.1f} min wall and {sum(r.get('model_cpu_s', 0.0) for r in records) / 60:.1f} min CPU"
        " (the children's user + system time; wall exceeds CPU / jobs where other work shares the cores).",
        "Random weights (seeded), eval mode, batch 2. Method, forms and columns: the docstring of `benchmarks/zoo.py`.",
        "Reproduce one row: `python benchmarks/zoo.py --only KEY --out /tmp/zoo.md` (in the zoo venv).",
        "",
        "## Summary",
        "",
    ]
    by_family: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    models_in: dict[str, set] = defaultdict(set)
    for r in records:
        by_family[r["family"]][r["form"]][r["outcome"]] += 1
        models_in[r["family"]].add(r["key"])
    header = "| family | models | composite | " + " | ".join(f"{f} ok / failed" for f in forms) + " |"
    lines += [header, "|" + "---|" * (3 + len(forms))]
    totals: dict[str, Counter] = defaultdict(Counter)
    composites = {r["family"]: r["composite"] for r in records}
    for family in sorted(by_family, key=lambda f: (f.split(" ")[0] in ("timm", "hf"), f)):
        cells = []
        for f in forms:
            c = by_family[family][f]
            totals[f].update(c)
            cells.append(f"{c['ok']} / {c['failed']}")
        lines.append(f"| {family} | {len(models_in[family])} | {composites[family]} | " + " | ".join(cells) + " |")
    n_models = len({r["key"] for r in records})
    lines.append(f"| **all** | **{n_models}** | | " + " | ".join(f"**{totals[f]['ok']} / {totals[f]['failed']}**" for f in forms) + " |")
    ok = [r for r in records if r["outcome"] == "ok"]
    if ok:
        t_ratios = [r["lrp_s"] / r["grad_s"] for r in ok if r.get("grad_s")]
        m_ratios = [r["lrp_mib"] / r["grad_mib"] for r in ok if _measurable(r)]
        nonfinite = [f"{r['key']} ({r['form']})" for r in ok if not r.get("finite")]
        lines += [
            "",
            f"Explained rows: {len(ok)}; relevance finite in {len(ok) - len(nonfinite)}"
            + (f" (not finite: {', '.join(nonfinite)})" if nonfinite else "")
            + f". Time / plain gradient: median {statistics.median(t_ratios):.2f}x, range {min(t_ratios):.2f}-{max(t_ratios):.2f}x."
            + (
                f" Peak memory / plain gradient, over the {len(m_ratios)} rows whose gradient peaks at {MIN_MIB} MiB or more"
                f" (below that the resident set's granularity decides): median {statistics.median(m_ratios):.2f}x,"
                f" range {min(m_ratios):.2f}-{max(m_ratios):.2f}x."
                if m_ratios
                else ""
            ),
        ]
        differ = [f"{r['key']} ({r['form']}, {r['outputs_rel']:.2g})" for r in ok if (r.get("outputs_rel") or 0.0) > OUTPUT_TOL]
        lines.append(
            f"The captured graph's logits equal the eager module's (to {OUTPUT_TOL:g} of max |logit|) in "
            f"{len(ok) - len(differ)} of {len(ok)} explained rows" + (f"; they differ in {', '.join(differ)}." if differ else ".")
        )
        residues = [r["unexplained_rel"] for r in ok if r.get("unexplained_rel") is not None]
        if residues:
            lines.append(
                "Largest ledger residue (|gap - (bias + stabiliser + rule share)| / max(|logit|, sum|R|)) over the "
                f"{len(residues)} rows whose ledger ran: {max(residues):.2g}."
            )
        no_ledger = [r for r in ok if r.get("ledger_error")]
        if no_ledger:
            lines += ["", "## Explained, but `layer_relevance=True` failed", "", "| error (first line) | rows |", "|---|---|"]
            groups: dict[str, list[str]] = defaultdict(list)
            for r in no_ledger:
                groups[r["ledger_error"]].append(f"{r['key']} ({r['form']})")
            for error, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                lines.append(f"| {_cell(error)} | {', '.join(rows)} |")
    failed = [r for r in records if r["outcome"] == "failed"]
    if failed:
        lines += ["", "## Failures, by cause", "", "| stage | error (first line) | rows |", "|---|---|---|"]
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in failed:
            groups[(r["stage"], _generalise(r["error"]))].append(f"{r['key']} ({r['form']})")
        for (stage, error), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
            lines.append(f"| {stage} | {_cell(error)} | {', '.join(rows)} |")
    lines += [
        "",
        "## Every model and form",
        "",
        "Columns: outcome (or the stage and error's first line); finite relevance; sample 0's target logit and input"
        " relevance total; the largest relative gap (logit - sum R) and ledger residue over the batch; the largest"
        " difference from the eager form's relevance (relative to its max |R|); one explain call in ms and its ratio to"
        " the plain gradient; peak MiB of one call and its ratio to the gradient's; the first call (capture + prepare)"
        " and the trace/export time in s.",
        "",
        "| model | composite | input | params (M) | form | outcome | finite | logit | sum R | gap | residue | vs eager |"
        " LRP ms | x grad | LRP MiB | x grad | first s | prep s |",
        "|" + "---|" * 18,
    ]
    for r in records:
        common = f"| {r['key']} | {r['composite']} | {r['input']} | {_fmt(r.get('params', 0) / 1e6 if r.get('params') else None, '.1f')} | {r['form']} |"
        if r["outcome"] != "ok":
            lines.append(common + f" **failed ({r['stage']})**: {_cell(r['error'])} |" + " |" * 12)
            continue
        notes = [r["note"]] if r.get("note") else []
        if r.get("reinitialised"):
            notes.append(f"zero-initialised {', '.join(r['reinitialised'])} given N(0, 0.02)")
        if r.get("logit") == 0.0:
            notes.append("**target logit 0**")
        if (r.get("outputs_rel") or 0.0) > OUTPUT_TOL:
            notes.append(f"**the graph's logits differ from the module's by {r['outputs_rel']:.2g}**")
        if r.get("ledger_error"):
            notes.append("ledger failed")
        outcome = "ok" + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(
            common
            + f" {outcome} | {'yes' if r['finite'] else '**no**'} | {r['logit']:.4g} | {r['relevance_sum']:.4g} | {r['gap_rel']:.2g} |"
            f" {_fmt(r.get('unexplained_rel'), '.1e', 'n/a')} | {_fmt(r.get('vs_eager'), '.1e', '—')} | {r['lrp_s'] * 1e3:.1f} | {_ratio(r['lrp_s'], r['grad_s'])} |"
            f" {_fmt(r.get('lrp_mib'), '.1f')} | {_ratio(r.get('lrp_mib'), r.get('grad_mib')) if _measurable(r) else ''} | {r['first_s']:.1f} | {_fmt(r.get('prepare_s'), '.1f')} |"
        )
    return "\n".join(lines) + "\n"


MIN_MIB = 4.0  # memory ratios only where the gradient's peak is at least this
OUTPUT_TOL = 1e-4  # the captured graph's logits against the eager module's, relative to max |logit|


def _measurable(r: dict[str, Any]) -> bool:
    return r.get("lrp_mib") is not None and (r.get("grad_mib") or 0.0) >= MIN_MIB


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _generalise(error: str) -> str:
    """Group errors that differ only in numbers, node names or shapes."""
    error = re.sub(r"0x[0-9a-f]+", "0x…", error)
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="a model key (repeatable); see --list")
    parser.add_argument("--source", action="append", default=[], choices=("torchvision", "timm", "hf"), help="only these sources")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset of eager,torchscript,pt2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1: steadier timings)")
    parser.add_argument("--jobs", type=int, default=1, help="models run at once (each in its own process)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model before its child is killed")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the markdown report (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--json", type=Path, help="also write every record as JSON lines (JSON.partial while the run goes on)")
    parser.add_argument("--list", action="store_true", help="print the model keys and exit")
    parser.add_argument("--render", type=Path, metavar="JSONL", help="only write --out again from a --json file of an earlier run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    forms = [f for f in args.forms.split(",") if f]
    if any(f not in FORMS for f in forms):
        parser.error(f"--forms takes {', '.join(FORMS)}")
    if args.child:
        run_child(args.child, forms, args.threads)
        return 0
    if args.render:
        lines = [json.loads(line) for line in args.render.read_text().splitlines() if line.strip()]
        meta = next(line["meta"] for line in lines if "meta" in line)
        args.out.write_text(markdown([line for line in lines if "meta" not in line], meta))
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    sources = tuple(args.source) or tuple({key.split(":", 1)[0]: None for key in args.only}) or tuple(SOURCES)
    entries = all_entries(sources)
    if args.only:
        unknown = set(args.only) - {e.key for e in entries}
        if unknown:
            parser.error(f"unknown model(s): {', '.join(sorted(unknown))} (see --list)")
        entries = [e for e in entries if e.key in args.only]
    if args.list:
        print("\n".join(f"{e.key}\t{e.family}\t{e.composite}\t{e.input_desc}" for e in entries))
        return 0
    if not entries:
        print("no models: is torchvision (or timm / transformers) installed?", file=sys.stderr)
        return 1
    start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}

    partial = args.json.with_name(args.json.name + ".partial") if args.json else None
    if partial:  # each model's records as they come, so that a killed run can still be rendered (--render)
        partial.write_text(json.dumps({"meta": run_meta(args, forms, 0.0)}) + "\n")

    def one(entry: Entry) -> None:
        records = run_model(entry, forms, args.threads, args.timeout)
        results[entry.key] = records
        if partial:
            with partial.open("a") as stream:
                stream.write("".join(json.dumps(r) + "\n" for r in records))
        summary = " ".join(f"{r['form']}={r['outcome'] if r['outcome'] == 'ok' else r['stage']}" for r in records)
        print(f"[{len(results)}/{len(entries)}] {entry.key}: {summary} ({records[0]['wall_s']:.0f} s, {records[0]['model_cpu_s']:.0f} s CPU)", file=sys.stderr, flush=True)

    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, entries))
    else:
        for entry in entries:
            one(entry)
    records = [r for e in entries for r in results[e.key]]
    wall_s = time.perf_counter() - start
    meta = run_meta(args, forms, wall_s)
    args.out.write_text(markdown(records, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta}) + "\n" + "".join(json.dumps(r) + "\n" for r in records))
        partial.unlink()
    print(f"wrote {args.out} ({wall_s / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
