"""`lrp explain` end to end: every model form, target mode, output and bad-input case.

Models and images are built here (tiny MiniVGG on 32x32 RGB, a one-channel 8x8 net),
expected values are computed independently (Pillow + numpy preprocessing, the original
nn.Module's logits, hashlib), and each error case checks its exit code and message
(design.md section 5). Runs are shared through a module-scoped cache to keep this fast.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_support import (
    ARCH,
    ARCH_KWARGS,
    CLASSES,
    Gated,
    Run,
    block,
    load_tensor,
    logits_of,
    lrp,
    minivgg,
    read_csv,
    reference_relevance,
    save_exported,
    save_safetensors,
    save_torchscript,
    sha256,
    softmax,
    tiny_gray,
    write_image,
    write_spec,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = ["a.png", "b.png", "sub/c.png"]  # the base image folder, as summary.csv names them
STEMS = {"a.png": "a", "b.png": "b", "sub/c.png": "sub/c"}
SUMMARY_REQUIRED = ("input", "prediction", "probability", "target", "logit", "relevance_sum", "conservation_gap")


# --------------------------------------------------------------------------- fixtures


class World:
    """Models in every form, images, and the expected values computed without the CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.model = minivgg()
        m = root / "models"
        m.mkdir()
        self.ts = save_torchscript(self.model, m / "model.ts")
        self.pt2 = save_exported(self.model, m / "model.pt2", torch.rand(2, 3, 32, 32))
        self.state_dict = m / "weights.pt"
        torch.save(self.model.state_dict(), self.state_dict)
        self.safetensors = save_safetensors(self.model, m / "weights.safetensors")
        self.pickled = m / "whole.pth"
        torch.save(self.model, self.pickled)
        self.nets = m / "nets.py"
        self.nets.write_text(
            "from lrpcli.architectures import MiniVGG\n\n\ndef Net(**kwargs):\n    return MiniVGG(**kwargs)\n", encoding="utf-8"
        )
        self.classes_file = m / "classes.txt"
        self.classes_file.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
        self.spec_ts = write_spec(m / "ts.yaml", model="model.ts", input={"mode": "RGB", "size": [32, 32]}, classes="classes.txt")
        self.spec_sd = write_spec(
            m / "sd.yaml",
            model="weights.pt",
            arch=ARCH,
            arch_kwargs={"num_classes": 4, "width": 4},
            input={"mode": "RGB", "size": [32, 32]},
            classes=CLASSES,
        )
        self.imgs = root / "imgs"
        for name, seed in zip(NAMES, (0, 2, 3)):
            write_image(self.imgs / name, seed)
        self.x = {name: load_tensor(self.imgs / name) for name in NAMES}
        self.logits = {name: logits_of(self.model, x)[0] for name, x in self.x.items()}
        self._refs: dict[tuple, np.ndarray] = {}
        self._runs: dict[str, Run] = {}

    def ref(self, name: str, target: int) -> np.ndarray:
        key = (name, target)
        if key not in self._refs:
            self._refs[key] = reference_relevance(self.model, self.x[name], target)
        return self._refs[key]

    def run(self, key: str, *args) -> Run:
        """``lrp explain ARGS -o root/out/KEY``, once per key for the whole module."""
        if key not in self._runs:
            self._runs[key] = lrp("explain", *args, out=self.root / "out" / key)
        return self._runs[key]

    def base(self) -> Run:
        return self.run("base", self.ts, self.imgs)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("cli"))


def ok(run: Run) -> Run:
    assert run.code == 0, run.describe()
    assert run.stdout == "", f"stdout must stay empty (messages go to stderr), got {run.stdout!r}"
    return run


def failed(run: Run, code: int, *fragments: str) -> Run:
    assert run.code == code, run.describe()
    assert not isinstance(run.result.exception, Exception) or isinstance(run.result.exception, SystemExit), run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    for fragment in fragments:
        assert fragment in run.stderr, f"{fragment!r} not in the message:\n{run.describe()}"
    assert run.stdout == "", run.stdout
    return run


def by_input(rows):
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(row["input"], []).append(row)
    return grouped


def assert_relevance(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = float(np.abs(expected).max())
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


# --------------------------------------------------------------------------- model forms


FORMS = {
    "torchscript": lambda w: [w.ts, w.imgs],
    "exported_pt2": lambda w: [w.pt2, w.imgs],
    "state_dict_arch": lambda w: [w.state_dict, "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS, w.imgs],
    "state_dict_arch_file": lambda w: [w.state_dict, "--arch", f"{w.nets}:Net", "--arch-kwargs", '{"num_classes": 4, "width": 4}', w.imgs],
    "safetensors": lambda w: [w.safetensors, "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS, w.imgs],
    "spec_torchscript": lambda w: [w.spec_ts, w.imgs],
    "spec_state_dict": lambda w: [w.spec_sd, w.imgs],
    "pickled_module_allowed": lambda w: [w.pickled, "--allow-pickle", w.imgs],
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_model_form_gives_the_same_relevance(world, form):
    run = ok(world.run("base" if form == "torchscript" else form, *FORMS[form](world)))
    rows = run.rows()
    assert [r["input"] for r in rows] == NAMES
    for row in rows:
        name = row["input"]
        expected_target = int(np.argmax(world.logits[name]))
        assert int(row["target"]) == expected_target
        actual = run.array(f"relevance/{STEMS[name]}.npy")
        assert_relevance(actual, world.ref(name, expected_target), f"{form}: {name}")
        # and the same file as the TorchScript run writes
        assert_relevance(actual, world.base().array(f"relevance/{STEMS[name]}.npy"), f"{form} vs torchscript: {name}")


def test_pickled_module_is_refused_without_allow_pickle(world, tmp_path):
    run = failed(lrp("explain", world.pickled, world.imgs, out=tmp_path / "out"), 4, "--allow-pickle", "whole.pth")
    assert not (tmp_path / "out" / "heatmaps").exists()
    assert "runs code" in run.stderr or "run code" in run.stderr


def test_state_dict_without_arch_asks_for_arch(world, tmp_path):
    failed(lrp("explain", world.state_dict, world.imgs, out=tmp_path / "out"), 4, "--arch", "state dict")


def test_state_dict_with_wrong_arch_kwargs(world, tmp_path):
    failed(
        lrp("explain", world.state_dict, "--arch", ARCH, "--arch-kwargs", "{num_classes: 5, width: 4}", world.imgs, out=tmp_path / "o"),
        4,
        "weights.pt",
        "do not fit",
    )


def test_arch_that_does_not_exist(world, tmp_path):
    failed(lrp("explain", world.state_dict, "--arch", "lrpcli.architectures:MiniVG", world.imgs, out=tmp_path / "o"), 4, "--arch", "'MiniVG'")
    failed(lrp("explain", world.state_dict, "--arch", "no_such_pkg.nets:Net", world.imgs, out=tmp_path / "o"), 4, "no_such_pkg")
    failed(lrp("explain", world.state_dict, "--arch", "MiniVGG", world.imgs, out=tmp_path / "o"), 4, "MODULE:CALLABLE")


def test_arch_typo_suggests_the_callable(world, tmp_path):
    failed(lrp("explain", world.state_dict, "--arch", "lrpcli.architectures:MiniVG", world.imgs, out=tmp_path / "o"), 4, "did you mean 'MiniVGG'")


# --------------------------------------------------------------------------- targets


def test_default_target_is_the_prediction(world):
    rows = ok(world.base()).rows()
    assert len(rows) == len(NAMES)  # one row per input
    for row in rows:
        predicted = int(np.argmax(world.logits[row["input"]]))
        assert int(row["prediction"]) == predicted
        assert int(row["target"]) == predicted
    assert len({r["target"] for r in rows}) > 1, "test images should not all get the same prediction"


def test_target_index_on_cpu_in_several_batches(world):
    run = ok(world.run("index", world.ts, world.imgs, "-t", "1", "--device", "cpu", "--batch-size", "2"))
    rows = run.rows()
    assert [r["input"] for r in rows] == NAMES
    for row in rows:
        name = row["input"]
        assert int(row["target"]) == 1
        assert float(row["logit"]) == pytest.approx(world.logits[name][1], rel=1e-4, abs=1e-5)
        prediction = int(np.argmax(world.logits[name]))
        assert int(row["prediction"]) == prediction  # the prediction (and its probability) stay the model's
        assert float(row["probability"]) == pytest.approx(softmax(world.logits[name])[prediction], rel=1e-4)
        assert_relevance(run.array(f"relevance/{STEMS[name]}.npy"), world.ref(name, 1), name)
    assert run.run_json()["device"] == "cpu"
    assert run.files() >= {f"heatmaps/{STEMS[n]}.png" for n in NAMES}  # one target: no class suffix


def test_target_class_name_from_the_spec(world):
    run = ok(world.run("spec_bird", world.spec_sd, world.imgs, "-t", "bird"))
    for row in run.rows():
        assert int(row["target"]) == 2 and row["target_label"] == "bird"
        assert row["prediction_label"] == CLASSES[int(np.argmax(world.logits[row["input"]]))]
        assert float(row["logit"]) == pytest.approx(world.logits[row["input"]][2], rel=1e-4, abs=1e-5)
        assert_relevance(run.array(f"relevance/{STEMS[row['input']]}.npy"), world.ref(row["input"], 2), row["input"])


def test_target_class_name_from_a_classes_file(world):
    run = ok(world.run("fish", world.ts, world.imgs, "--classes", world.classes_file, "-t", "fish"))
    for row in run.rows():
        assert int(row["target"]) == 3 and row["target_label"] == "fish"
        assert float(row["logit"]) == pytest.approx(world.logits[row["input"]][3], rel=1e-4, abs=1e-5)


def test_target_all_explains_every_class(world):
    run = ok(world.run("all", world.ts, world.imgs, "-t", "all"))
    grouped = by_input(run.rows())
    assert list(grouped) == NAMES
    for name, rows in grouped.items():
        assert sorted(int(r["target"]) for r in rows) == [0, 1, 2, 3]
        for row in rows:
            t = int(row["target"])
            assert float(row["logit"]) == pytest.approx(world.logits[name][t], rel=1e-4, abs=1e-5)
            assert row["heatmap"] == f"heatmaps/{STEMS[name]}.{t}.png"
            assert row["relevance"] == f"relevance/{STEMS[name]}.{t}.npy"
            assert_relevance(run.array(row["relevance"]), world.ref(name, t), f"{name} target {t}")
    assert len([f for f in run.files() if f.startswith("heatmaps/")]) == 4 * len(NAMES)


def test_top_k_two_with_class_names(world):
    run = ok(world.run("topk", world.ts, world.imgs, "--top-k", "2", "--classes", world.classes_file))
    grouped = by_input(run.rows())
    assert list(grouped) == NAMES
    for name, rows in grouped.items():
        expected = list(np.argsort(-world.logits[name])[:2])
        assert [int(r["target"]) for r in rows] == expected  # highest first
        for row, t in zip(rows, expected):
            assert row["target_label"] == CLASSES[t]
            assert float(row["logit"]) == pytest.approx(world.logits[name][t], rel=1e-4, abs=1e-5)
            assert int(row["prediction"]) == expected[0] and row["prediction_label"] == CLASSES[expected[0]]
            assert float(row["probability"]) == pytest.approx(softmax(world.logits[name])[expected[0]], rel=1e-4)
            assert row["heatmap"] == f"heatmaps/{STEMS[name]}.{CLASSES[t]}.png"
            assert (run.out / row["heatmap"]).is_file() and (run.out / row["relevance"]).is_file()
    assert not (run.out / "heatmaps" / "a.png").exists()


def test_target_index_out_of_range_is_a_usage_error(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "-t", "7", out=tmp_path / "o"), 2, "--target 7", "out of range", "0..3")


def test_unknown_class_name_suggests_one(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "--classes", world.classes_file, "-t", "dgo", out=tmp_path / "o"), 2, "dgo", "did you mean 'dog'")


def test_class_name_without_class_names_is_a_usage_error(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "-t", "dog", out=tmp_path / "o"), 2, "dog", "--classes")


@pytest.mark.parametrize(
    "args, fragment",
    [(["--top-k", "0"], "--top-k"), (["--size", "abc"], "--size"), (["--size", "0"], "size"), (["--batch-size", "0"], "--batch-size")],
    ids=["top-k 0", "size abc", "size 0", "batch-size 0"],
)
def test_bad_option_values_are_usage_errors(world, tmp_path, args, fragment):
    failed(lrp("explain", world.ts, world.imgs, *args, out=tmp_path / "o"), 2, fragment)


def test_target_and_top_k_exclude_each_other(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "-t", "1", "--top-k", "2", out=tmp_path / "o"), 2, "--target", "--top-k", "exclude")


# --------------------------------------------------------------------------- outputs


def test_summary_csv_columns_and_values(world):
    run = ok(world.base())
    rows = run.rows()
    header = (run.out / "summary.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert set(SUMMARY_REQUIRED) <= set(header), header
    for row in rows:
        name = row["input"]
        logits = world.logits[name]
        prediction = int(np.argmax(logits))
        logit = float(row["logit"])
        relevance_sum = float(row["relevance_sum"])
        assert logit == pytest.approx(logits[prediction], rel=1e-4, abs=1e-5)
        assert float(row["probability"]) == pytest.approx(softmax(logits)[prediction], rel=1e-4)
        assert float(row["conservation_gap"]) == pytest.approx(logit - relevance_sum, rel=1e-5, abs=1e-6)  # --init value
        # zero biases: LRP conserves, so the relevance adds up to the logit
        assert relevance_sum == pytest.approx(logit, rel=1e-3, abs=1e-4)


def test_relevance_arrays_sum_to_the_summary(world):
    run = ok(world.base())
    for row in run.rows():
        assert row["relevance"] == f"relevance/{STEMS[row['input']]}.npy"
        array = run.array(row["relevance"])
        assert array.shape == (3, 32, 32)
        assert np.issubdtype(array.dtype, np.floating)
        assert float(array.sum(dtype=np.float64)) == pytest.approx(float(row["relevance_sum"]), rel=1e-6, abs=1e-7)


def test_heatmaps_are_real_pngs_in_bwr(world):
    run = ok(world.base())
    for row in run.rows():
        assert row["heatmap"] == f"heatmaps/{STEMS[row['input']]}.png"
        png = run.png(row["heatmap"])
        assert png.shape[0] >= 128 and png.shape[1] >= 128
        assert png.reshape(-1, 3).std(axis=0).max() > 10, "heatmap is (nearly) constant"
        heat = run.array(row["relevance"]).sum(axis=0)
        i, j = np.unravel_index(np.abs(heat).argmax(), heat.shape)
        colour = block(png, heat.shape, i, j)
        # symmetric bwr: the strongest pixel is pure red (for) or pure blue (against)
        assert tuple(colour) == ((255, 0, 0) if heat[i, j] > 0 else (0, 0, 255))
        strong = np.abs(heat) > 0.05 * np.abs(heat).max()
        for (i, j) in zip(*np.nonzero(strong)):
            r, _, b = (int(v) for v in block(png, heat.shape, i, j))
            assert (r > b) if heat[i, j] > 0 else (b > r)


def test_run_json(world):
    run = ok(world.base())
    info = run.run_json()
    import lrpcli

    assert info["weights_sha256"] == sha256(world.ts)
    assert info["lrpcli"] == lrpcli.__version__ and info["torch"] == torch.__version__
    assert info["python"] == sys.version.split()[0]
    assert info["composite"]["name"] == "epsilon_plus_flat"
    assert info["composite"]["rules"] and "epsilon" in info["composite"]["params"]
    arguments = info["arguments"]
    assert arguments["inputs"] == [str(world.imgs)]
    assert arguments["cmap"] == "bwr" and arguments["top_k"] is None
    assert not list(run.out.rglob("*.tmp")), "temporary files left behind"
    assert not (run.out / "summary.partial.csv").exists()


def test_run_json_of_a_spec_hashes_the_weights(world):
    info = ok(world.run("spec_state_dict", *FORMS["spec_state_dict"](world))).run_json()
    assert info["weights_sha256"] == sha256(world.state_dict)
    assert info["weights_sha256"] != sha256(world.spec_sd)


def test_overlay_draws_on_the_input_in_its_own_colours(world):
    base, run = ok(world.base()), ok(world.run("overlay", world.ts, world.imgs, "--overlay"))
    for name in NAMES:
        overlay, plain = run.png(f"heatmaps/{STEMS[name]}.png"), base.png(f"heatmaps/{STEMS[name]}.png")
        assert overlay.shape == plain.shape and not np.array_equal(overlay, plain)
        heat = base.array(f"relevance/{STEMS[name]}.npy").sum(axis=0)
        colours = np.asarray(world.x[name].numpy().transpose(1, 2, 0) * 255)  # the input as decoded here
        weak = np.abs(heat) < 0.02 * np.abs(heat).max()
        assert weak.sum() > 10
        for (i, j) in zip(*np.nonzero(weak)):
            # where relevance is weak the input shows through in its own colours
            assert np.abs(block(overlay, heat.shape, i, j).astype(float) - colours[i, j]).max() <= 8
        assert np.ptp(colours[weak], axis=1).max() > 30  # the input is coloured there: a grey overlay would fail
        i, j = np.unravel_index(np.abs(heat).argmax(), heat.shape)
        assert tuple(block(overlay, heat.shape, i, j)) == ((255, 0, 0) if heat[i, j] > 0 else (0, 0, 255))  # max |R|: the colour map's colour
    assert run.run_json()["heatmaps"]["overlay"] == "colour"


def test_overlay_style_grey_draws_on_a_grey_input(world):
    base, run = ok(world.base()), ok(world.run("overlay-grey", world.ts, world.imgs, "--overlay", "--overlay-style", "grey"))
    for name in NAMES:
        overlay = run.png(f"heatmaps/{STEMS[name]}.png")
        heat = base.array(f"relevance/{STEMS[name]}.npy").sum(axis=0)
        grey = np.asarray(world.x[name].numpy().mean(axis=0) * 255)
        weak = np.abs(heat) < 0.02 * np.abs(heat).max()
        assert weak.sum() > 10
        for (i, j) in zip(*np.nonzero(weak)):
            assert np.abs(block(overlay, heat.shape, i, j).astype(float) - grey[i, j]).max() <= 8
    assert run.run_json()["heatmaps"]["overlay"] == "grey"


def _bwr(unit: np.ndarray) -> np.ndarray:
    """matplotlib's bwr, values clipped to [0, 1], as bytes: heatmap colours computed without lrpcli."""
    import matplotlib

    return (matplotlib.colormaps["bwr"](np.clip(unit, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def _centres(png: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    factor = png.shape[1] // shape[1]
    return png[factor // 2 : shape[0] * factor : factor, factor // 2 :: factor]


def test_scale_shared_draws_every_heatmap_at_the_run_s_largest_relevance(world, tmp_path):
    from lrpcli.render.heatmaps import legend_strip

    base = ok(world.base())
    maps = {name: base.array(f"relevance/{STEMS[name]}.npy").sum(axis=0) for name in NAMES}
    largest = max(float(np.abs(m).max()) for m in maps.values())  # over the whole run
    assert min(float(np.abs(m).max()) for m in maps.values()) < 0.9 * largest  # so shared differs from per-image
    run = ok(world.run("shared", world.ts, world.imgs, "--scale", "shared", "--legend"))
    info = run.run_json()["heatmaps"]["scale"]
    assert info["mode"] == "shared" and info["value"] == pytest.approx(largest, rel=1e-6)
    for name, heat in maps.items():
        png = run.png(f"heatmaps/{STEMS[name]}.png")
        np.testing.assert_array_equal(_centres(png, heat.shape), _bwr(0.5 + 0.5 * heat / largest))
        height = png.shape[1]  # square heatmaps; the legend strip below
        np.testing.assert_array_equal(png[height:], legend_strip(png.shape[1], "bwr", info["value"]))
    # a resumed run finds the scale over all inputs again, the done ones too
    out = tmp_path / "resumed"
    shutil.copytree(run.out, out)
    for heatmap in (out / "heatmaps").rglob("*.png"):
        heatmap.write_bytes(b"")  # stale: must be drawn again at the shared scale
    (out / "heatmaps" / "b.png").unlink()  # b.png is explained again, the others are done
    resumed = ok(lrp("explain", world.ts, world.imgs, "--scale", "shared", "--legend", "--resume", out=out))
    assert "2 already done" in resumed.stderr
    for name, heat in maps.items():
        png = np.asarray(Image.open(out / "heatmaps" / f"{STEMS[name]}.png").convert("RGB"))
        np.testing.assert_array_equal(_centres(png, heat.shape), _bwr(0.5 + 0.5 * heat / largest))


def test_scale_shared_value_and_percentile(world):
    base = ok(world.base())
    given = ok(world.run("shared-given", world.ts, world.imgs, "--scale", "shared:0.01", "--no-arrays"))
    clipped = ok(world.run("percentile", world.ts, world.imgs, "--scale", "percentile:90"))
    assert given.run_json()["heatmaps"]["scale"] == {"mode": "shared", "percentile": None, "value": 0.01}
    assert clipped.run_json()["heatmaps"]["scale"] == {"mode": "percentile", "percentile": 90.0, "value": None}
    for name in NAMES:
        heat = base.array(f"relevance/{STEMS[name]}.npy").sum(axis=0)
        png = given.png(f"heatmaps/{STEMS[name]}.png")
        np.testing.assert_array_equal(_centres(png, heat.shape), _bwr(0.5 + 0.5 * heat / 0.01))
        level = np.sort(np.abs(heat).ravel())  # the 90th percentile by hand (linear between ranks)
        rank = 0.9 * (level.size - 1)
        at = level[int(rank)] + (rank - int(rank)) * (level[int(rank) + 1] - level[int(rank)])
        png = clipped.png(f"heatmaps/{STEMS[name]}.png")
        np.testing.assert_array_equal(_centres(png, heat.shape), _bwr(0.5 + 0.5 * heat / at))
        assert (np.abs(heat) > at).sum() > 10  # a tenth of the pixels are clipped to the end colours


def test_scale_shared_without_arrays_or_misspelt_is_a_usage_error(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "--scale", "shared", "--no-arrays", out=tmp_path / "o"), 2, "--no-arrays", "shared:VALUE")
    failed(lrp("explain", world.ts, world.imgs, "--scale", "percentil", out=tmp_path / "o"), 2, "did you mean 'percentile'")
    assert not (tmp_path / "o").exists()


def test_cmap_coldnhot(world):
    run = ok(world.run("coldnhot", world.ts, world.imgs, "--cmap", "coldnhot"))
    for name in NAMES:
        png = run.png(f"heatmaps/{STEMS[name]}.png")
        heat = run.array(f"relevance/{STEMS[name]}.npy").sum(axis=0)
        scale = np.abs(heat).max()
        i, j = np.unravel_index(np.abs(heat).argmax(), heat.shape)
        # zennit's coldnhot: white at the positive end, cyan at the negative end, black at zero
        assert tuple(block(png, heat.shape, i, j)) == ((255, 255, 255) if heat[i, j] > 0 else (0, 255, 255))
        for (i, j) in zip(*np.nonzero(np.abs(heat) < 0.01 * scale)):
            assert int(block(png, heat.shape, i, j).astype(int).sum()) < 40


def test_cmap_gray(world):
    run = ok(world.run("gray", world.ts, world.imgs, "--cmap", "gray"))
    for name in NAMES:
        png = run.png(f"heatmaps/{STEMS[name]}.png")
        assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all()
        heat = run.array(f"relevance/{STEMS[name]}.npy").sum(axis=0)
        expected = 255 * (0.5 + 0.5 * heat / np.abs(heat).max())  # symmetric: 0 is mid-grey
        factor = png.shape[0] // heat.shape[0]
        actual = png[factor // 2 :: factor, factor // 2 :: factor, 0].astype(float)
        assert np.abs(actual - expected).max() <= 2


def test_unknown_cmap_suggests_one(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "--cmap", "colnhot", out=tmp_path / "o"), 2, "colnhot", "did you mean 'coldnhot'")
    assert not (tmp_path / "o").exists()


def test_no_heatmaps(world):
    run = ok(world.run("no_heatmaps", world.ts, world.imgs, "--no-heatmaps"))
    files = run.files()
    assert not [f for f in files if f.startswith("heatmaps/") or f.endswith(".png")]
    assert "no mean relevance maps per class drawn" in (run.out / "report.html").read_text(encoding="utf-8")
    assert {f"relevance/{STEMS[n]}.npy" for n in NAMES} <= files
    assert all(r["heatmap"] == "" for r in run.rows())


def test_no_arrays(world):
    run = ok(world.run("no_arrays", world.ts, world.imgs, "--no-arrays"))
    files = run.files()
    assert not [f for f in files if f.endswith(".npy")]
    assert {f"heatmaps/{STEMS[n]}.png" for n in NAMES} <= files
    rows = run.rows()
    assert all(r["relevance"] == "" for r in rows) and all(r["relevance_sum"] for r in rows)


# --------------------------------------------------------------------------- input collection


def test_folders_are_searched_recursively_and_names_nest(world):
    run = ok(world.base())
    assert [r["input"] for r in run.rows()] == NAMES
    assert {"heatmaps/a.png", "heatmaps/b.png", "heatmaps/sub/c.png", "relevance/sub/c.npy"} <= run.files()


def _glob_one_hot(world) -> Run:
    return world.run("glob_one_hot", world.ts, f"{world.imgs}/**/*.png", "--init", "one-hot")


def test_recursive_glob(world):
    run = ok(_glob_one_hot(world))
    assert [r["input"] for r in run.rows()] == NAMES
    assert "heatmaps/sub/c.png" in run.files()


def test_init_one_hot(world):
    run = ok(_glob_one_hot(world))
    for row in run.rows():
        relevance_sum = float(row["relevance_sum"])
        assert float(row["conservation_gap"]) == pytest.approx(1.0 - relevance_sum, rel=1e-5, abs=1e-6)
        assert relevance_sum == pytest.approx(1.0, rel=1e-3)  # zero biases: the seed of 1 is conserved
        name, target = row["input"], int(row["target"])
        expected = world.ref(name, target) / world.logits[name][target]
        assert_relevance(run.array(row["relevance"]), expected, name)


def test_glob_plus_folder_quietly(world):
    run = ok(world.run("glob_folder", world.ts, f"{world.imgs}/*.png", world.imgs / "sub", "--quiet"))
    assert [r["input"] for r in run.rows()] == NAMES
    assert run.stderr == ""


def test_folder_without_images(world, tmp_path):
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here", encoding="utf-8")
    failed(lrp("explain", world.ts, tmp_path / "empty", out=tmp_path / "o"), 5, "no images found")


def test_image_formats_decoded_in_worker_processes(world):
    folder = world.root / "formats"
    source = write_image(folder / "src.png", 7)
    with Image.open(source) as image:
        rgb = image.convert("RGB")
        for name in ("x.bmp", "x.tif", "x.webp", "x.jpeg"):
            rgb.save(folder / name, **({"lossless": True} if name.endswith(".webp") else {}))
        rgb.convert("P").save(folder / "palette.png")
        rgba = rgb.copy()
        rgba.putalpha(128)
        rgba.save(folder / "alpha.png")
    source.unlink()
    run = ok(world.run("formats", world.ts, folder, "--workers", "1"))
    rows = {r["input"]: r for r in run.rows()}
    assert sorted(rows) == sorted(["x.bmp", "x.tif", "x.webp", "x.jpeg", "palette.png", "alpha.png"])
    for name, row in rows.items():
        logits = logits_of(world.model, load_tensor(folder / name))[0]
        assert float(row["logit"]) == pytest.approx(logits.max(), rel=1e-4, abs=1e-5), name
        assert (run.out / row["heatmap"]).is_file()


def test_16_bit_grayscale_png_is_scaled_or_refused(world, tmp_path):
    folder = tmp_path / "deep"
    eight = write_image(folder / "eight.png", 8, mode="L")
    with Image.open(eight) as image:
        values = np.asarray(image, dtype=np.uint16)
    Image.fromarray(values * 257).save(folder / "sixteen.png")  # the same picture at 16 bits
    with Image.open(folder / "sixteen.png") as image:
        assert image.mode.startswith("I")
    run = lrp("explain", world.ts, folder, out=tmp_path / "o")
    if run.code == 5:  # refusing it clearly is fine too
        failed(run, 5, "sixteen.png")
        return
    rows = {r["input"]: r for r in ok(run).rows()}
    assert float(rows["sixteen.png"]["logit"]) == pytest.approx(float(rows["eight.png"]["logit"]), rel=1e-3)


def test_glob_without_matches(world, tmp_path):
    failed(lrp("explain", world.ts, f"{world.imgs}/*.jpeg", out=tmp_path / "o"), 5, "no files match", "*.jpeg")


def test_missing_input_path(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs / "nope.png", out=tmp_path / "o"), 5, "input not found", "nope.png")


@pytest.fixture(scope="module")
def mixed_folder(world) -> Path:
    """A corrupt and a truncated file (sorted first), a.png and a.jpg (same stem) and a grayscale image."""
    folder = world.root / "mixed"
    folder.mkdir()
    (folder / "0_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    whole = write_image(folder / "1_truncated.png", 9).read_bytes()
    (folder / "1_truncated.png").write_bytes(whole[: len(whole) // 2])
    write_image(folder / "a.png", 0)
    write_image(folder / "a.jpg", 2)
    write_image(folder / "gray.png", 3, mode="L")
    return folder


@pytest.fixture(scope="module")
def mixed(world, mixed_folder) -> Run:
    return world.run("mixed", world.ts, mixed_folder)


def test_corrupt_image_is_skipped_and_exits_5(world, mixed):
    failed(mixed, 5, "0_corrupt.png", "1_truncated.png", "cannot decode", "2 of 5 input(s) failed")
    assert [r["input"] for r in mixed.rows()] == ["a.jpg", "a.png", "gray.png"]
    assert [f["input"] for f in mixed.run_json()["failures"]] == ["0_corrupt.png", "1_truncated.png"]
    assert not [f for f in mixed.files() if "corrupt" in f or "truncated" in f]


def test_a_kept_suffix_does_not_collide_with_another_stem(world, tmp_path):
    folder = tmp_path / "clash"
    for name, seed in (("a.png", 0), ("a.jpg", 2), ("a.png.png", 3)):
        write_image(folder / name, seed)
    run = ok(lrp("explain", world.ts, folder, out=tmp_path / "o"))
    rows = run.rows()
    assert len(rows) == 3
    assert len({r["heatmap"] for r in rows}) == 3 and len({r["relevance"] for r in rows}) == 3


def test_inputs_with_the_same_stem_do_not_collide(world, mixed):
    rows = {r["input"]: r for r in mixed.rows()}
    assert rows["a.png"]["heatmap"] != rows["a.jpg"]["heatmap"]
    assert rows["a.png"]["relevance"] != rows["a.jpg"]["relevance"]
    for name in ("a.png", "a.jpg"):
        array = mixed.array(rows[name]["relevance"])
        assert float(array.sum(dtype=np.float64)) == pytest.approx(float(rows[name]["relevance_sum"]), rel=1e-6)
        x = load_tensor(world.root / "mixed" / name)
        assert float(rows[name]["logit"]) == pytest.approx(logits_of(world.model, x)[0].max(), rel=1e-4, abs=1e-5)
    assert not np.allclose(mixed.array(rows["a.png"]["relevance"]), mixed.array(rows["a.jpg"]["relevance"]))


def test_grayscale_image_into_an_rgb_model(world, mixed):
    row = {r["input"]: r for r in mixed.rows()}["gray.png"]
    x = load_tensor(world.root / "mixed" / "gray.png", mode="RGB")
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1])
    logits = logits_of(world.model, x)[0]
    assert int(row["prediction"]) == int(np.argmax(logits))
    assert float(row["logit"]) == pytest.approx(logits.max(), rel=1e-4, abs=1e-5)
    assert mixed.array(row["relevance"]).shape == (3, 32, 32)


def test_on_error_fail_stops_at_once(world, mixed_folder, tmp_path):
    run = failed(lrp("explain", world.ts, mixed_folder, "--on-error", "fail", out=tmp_path / "o"), 5, "0_corrupt.png", "cannot decode")
    out = tmp_path / "o"
    assert not (out / "summary.csv").exists()
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.npy"))
    assert "failed;" not in run.stderr  # not the end-of-run summary of a run that carried on


@pytest.fixture(scope="module")
def odd_folder(world) -> Path:
    folder = world.root / "odd"
    write_image(folder / "a.png", 0)
    write_image(folder / "b.png", 2)
    write_image(folder / "z_big.png", 4, size=(48, 40))
    return folder


def test_image_of_another_size_without_size(world, odd_folder):
    run = failed(world.run("odd", world.ts, odd_folder), 5, "z_big.png", "--size")
    assert [r["input"] for r in run.rows()] == ["a.png", "b.png"]
    assert not [f for f in run.files() if "z_big" in f]


def test_image_of_another_size_with_size_is_resized(world, odd_folder):
    run = ok(world.run("odd_size", world.ts, odd_folder, "--size", "32"))
    rows = {r["input"]: r for r in run.rows()}
    assert list(rows) == ["a.png", "b.png", "z_big.png"]
    assert run.array("relevance/z_big.npy").shape == (3, 32, 32)
    x = load_tensor(odd_folder / "z_big.png", size=(32, 32))
    assert float(rows["z_big.png"]["logit"]) == pytest.approx(logits_of(world.model, x)[0].max(), rel=1e-3, abs=1e-4)


def test_first_image_of_another_size_is_reported_not_fatal(world, tmp_path):
    folder = tmp_path / "odd_first"
    write_image(folder / "a_big.png", 4, size=(48, 40))
    write_image(folder / "b.png", 0)
    write_image(folder / "c.png", 2)
    run = failed(lrp("explain", world.ts, folder, out=tmp_path / "o"), 5, "a_big.png")
    assert [r["input"] for r in run.rows()] == ["b.png", "c.png"]


def test_grayscale_model(world, tmp_path):
    model = tiny_gray()
    path = save_torchscript(model, tmp_path / "gray.ts")
    folder = tmp_path / "digits"
    write_image(folder / "d1.png", 100, size=(8, 8), mode="L")
    write_image(folder / "d2.png", 101, size=(16, 16), mode="RGB")  # colour and larger: converted and resized
    run = ok(lrp("explain", path, folder, "--mode", "gray", "--size", "8", out=tmp_path / "o"))
    rows = {r["input"]: r for r in run.rows()}
    for name in ("d1.png", "d2.png"):
        stem = name[:-4]
        assert run.array(f"relevance/{stem}.npy").shape == (1, 8, 8)
        png = run.png(f"heatmaps/{stem}.png")
        assert png.shape[0] >= 128 and png.shape[1] >= 128  # small inputs are enlarged
        logits = logits_of(model, load_tensor(folder / name, mode="L", size=(8, 8)))[0]
        assert float(rows[name]["logit"]) == pytest.approx(logits.max(), rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------- --resume


def _age(folder: Path, seconds: float = 1000.0) -> dict[str, int]:
    """Set every file's mtime into the past; return them."""
    past = time.time_ns() - int(seconds * 1e9)
    stamps = {}
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(past, past))
            stamps[path.relative_to(folder).as_posix()] = past
    return stamps


def test_resume_redoes_only_missing_outputs(world, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ok(world.base()).out, out)
    before = _age(out)
    (out / "heatmaps" / "b.png").unlink()
    run = ok(lrp("explain", world.ts, world.imgs, "--resume", out=out))
    assert "2 already done" in run.stderr
    assert (out / "heatmaps" / "b.png").is_file()
    assert (out / "relevance" / "b.npy").stat().st_mtime_ns != before["relevance/b.npy"]
    for name in ("a", "sub/c"):
        for rel in (f"heatmaps/{name}.png", f"relevance/{name}.npy"):
            assert (out / rel).stat().st_mtime_ns == before[rel], f"{rel} was rewritten"
    rows = read_csv(out / "summary.csv")
    assert [r["input"] for r in rows] == NAMES
    assert run.run_json()["skipped_done"] == 2
    assert_relevance(np.load(out / "relevance" / "b.npy"), world.ref("b.png", int(rows[1]["target"])), "b.png redone")


def test_resume_finishes_an_interrupted_run(world, tmp_path):
    out = tmp_path / "out"
    base = ok(world.base())
    shutil.copytree(base.out, out)
    lines = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], {line.split(",")[0]: line for line in lines[1:]}
    # the interrupted run logged a.png (files written) and sub/c.png (heatmap not yet written),
    # and was killed while writing b.png's row
    (out / "summary.partial.csv").write_text(f"{header}\n{rows['a.png']}\n{rows['sub/c.png']}\nb.png,0,", encoding="utf-8")
    for rel in ("summary.csv", "run.json", "heatmaps/b.png", "relevance/b.npy", "heatmaps/sub/c.png"):
        (out / rel).unlink()
    before = _age(out)
    run = ok(lrp("explain", world.ts, world.imgs, "--resume", out=out))
    assert (out / "heatmaps/a.png").stat().st_mtime_ns == before["heatmaps/a.png"]
    assert (out / "relevance/a.npy").stat().st_mtime_ns == before["relevance/a.npy"]
    assert {"heatmaps/b.png", "relevance/b.npy", "heatmaps/sub/c.png", "relevance/sub/c.npy"} <= run.files()
    assert [r["input"] for r in read_csv(out / "summary.csv")] == NAMES
    assert not (out / "summary.partial.csv").exists()
    assert run.run_json()["skipped_done"] == 1


# --------------------------------------------------------------------------- composites and models that fail


def test_bad_composite_file_names_file_and_line(world, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nrules:\n  - match: {type: conv}\n    rule: zplsu\n", encoding="utf-8")
    failed(lrp("explain", world.ts, world.imgs, "-c", bad, out=tmp_path / "o"), 3, f"{bad}:4", "zplsu", "zplus")


def test_composite_file_with_broken_yaml(world, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nrules:\n  - match: {type: conv\n    rule: zplus\n", encoding="utf-8")
    run = failed(lrp("explain", world.ts, world.imgs, "-c", bad, out=tmp_path / "o"), 3, str(bad))
    assert any(f"{bad}:{n}" in run.stderr for n in (3, 4, 5)), run.stderr


def test_unknown_composite_name(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "-c", "epsilon_plus_flt", out=tmp_path / "o"), 3, "epsilon_plus_flt", "epsilon_plus_flat")


def test_unknown_composite_parameter(world, tmp_path):
    failed(lrp("explain", world.ts, world.imgs, "-p", "epsilno=0.5", out=tmp_path / "o"), 3, "epsilno", "epsilon")


def test_file_that_is_not_a_model(world, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    failed(lrp("explain", junk, world.imgs, out=tmp_path / "o"), 4, "junk.pt")


def test_unsupported_op_names_the_op(world, tmp_path):
    torch.manual_seed(0)
    path = save_torchscript(Gated().eval(), tmp_path / "gated.ts")
    failed(lrp("explain", path, world.imgs, out=tmp_path / "o"), 4, "unsupported op", "'exp'")


# --------------------------------------------------------------------------- parameters, dtype, device


def test_param_epsilon_changes_relevance(world):
    run = ok(world.run("eps", world.ts, world.imgs, "-p", "epsilon=0.5"))
    assert run.run_json()["composite"]["params"]["epsilon"] == 0.5
    base = world.base()
    for row in run.rows():
        name, target = row["input"], int(row["target"])
        actual = run.array(f"relevance/{STEMS[name]}.npy")
        assert not np.allclose(actual, base.array(f"relevance/{STEMS[name]}.npy"), rtol=1e-3, atol=0)
        expected = reference_relevance(world.model, world.x[name], target, epsilon=0.5)
        assert_relevance(actual, expected, name)


def test_zbox_bounds_follow_mean_and_std(world):
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.5]
    run = ok(
        world.run("zbox", world.ts, world.imgs, "-c", "epsilon_gamma_box", "--mean", "0.5,0.4,0.3", "--std", "0.25,0.2,0.5")
    )
    params = run.run_json()["composite"]["params"]
    assert run.run_json()["composite"]["name"] == "epsilon_gamma_box"
    assert params["low"] == pytest.approx([(0 - m) / s for m, s in zip(mean, std)])
    assert params["high"] == pytest.approx([(1 - m) / s for m, s in zip(mean, std)])
    for row in run.rows():  # and the inputs were normalised with them
        x = load_tensor(world.imgs / row["input"], mean=mean, std=std)
        assert float(row["logit"]) == pytest.approx(logits_of(world.model, x)[0][int(row["target"])], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("form", ["exported_pt2", "torchscript", "state_dict_arch"])
def test_dtype_float64(world, form, tmp_path):
    run = ok(lrp("explain", *FORMS[form](world), "--dtype", "float64", out=tmp_path / "o"))
    assert run.run_json()["dtype"] == "float64"
    for row in run.rows():
        name = row["input"]
        assert_relevance(run.array(f"relevance/{STEMS[name]}.npy"), world.ref(name, int(row["target"])), name)


def test_device_cuda_without_cuda_is_a_usage_error(world, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    failed(lrp("explain", world.ts, world.imgs, "--device", "cuda", out=tmp_path / "o"), 2, "--device cuda", "CUDA")


def test_normal_run_keeps_stdout_empty(world):
    run = ok(world.base())
    assert run.stdout == ""
    assert "explained 3 of 3" in run.stderr


# --------------------------------------------------------------------------- help


def _commands() -> list[list[str]]:
    """Every command path: [], ["explain"], ["composites"], ["composites", "show"], ..."""
    import click

    from lrpcli.cli import main

    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            for name in sorted(command.commands):
                walk(command.commands[name], path + [name])

    walk(main, [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "lrp")
def test_help_exits_0_with_an_example(command):
    run = lrp(*command, "--help")
    assert run.code == 0, run.describe()
    assert "Example" in run.stdout
    assert "Usage: " in run.stdout


def test_help_does_not_import_torch():
    commands = _commands()
    code = (
        "import json, sys\n"
        "from lrpcli.cli import main\n"
        "for command in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(command + ['--help'], prog_name='lrp')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (command, exc.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_lrp_script_help():
    script = Path(sys.executable).parent / "lrp"
    if not script.exists():
        pytest.skip("no lrp console script next to this python")
    done = subprocess.run([str(script), "explain", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Examples:" in done.stdout and done.stderr == ""


def _examples() -> list[str]:
    from lrpcli.cli import main

    text = main.commands["explain"].epilog or ""
    return [line.strip() for line in text.splitlines() if line.strip().startswith("lrp ")]


@pytest.fixture(scope="module")
def example_assets(tmp_path_factory) -> Path:
    """What the help's examples name: model.pt + mypkg.nets:MiniVGG, imgs/, model.ts, photos/**/*.jpg."""
    root = tmp_path_factory.mktemp("examples")
    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(5)
    model = MiniVGG(num_classes=4).eval()
    torch.save(model.state_dict(), root / "model.pt")
    save_torchscript(model, root / "model.ts")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("", encoding="utf-8")
    (root / "mypkg" / "nets.py").write_text("from lrpcli.architectures import MiniVGG\n", encoding="utf-8")
    write_image(root / "imgs" / "one.png", 10)
    write_image(root / "imgs" / "two.png", 11)
    from PIL import Image

    for folder, seed in (("x", 12), ("y", 13)):
        png = write_image(root / "photos" / folder / "p.png", seed)
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    from test_cli_text import Bag, _export, _tokenizer  # the text examples: my_model.pt2, tokenizer.json, reviews.csv

    _export(Bag().eval(), root / "my_model.pt2")
    _tokenizer(root / "tokenizer.json")
    (root / "reviews.csv").write_text("id,review\na,the film was good\nb,bad plot\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("example", _examples())
def test_help_examples_run(example, example_assets, tmp_path, monkeypatch):
    args = shlex.split(example)[1:]
    if any(a.startswith("sample_models/") for a in args):
        if not all((REPO / a).exists() for a in args if a.startswith("sample_models/")):
            pytest.skip("sample_models/ is not built")
        args = [str(REPO / a) if a.startswith("sample_models/") else a for a in args]
    work = tmp_path / "work"
    shutil.copytree(example_assets, work)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    run = lrp(*args)
    assert run.code == 0, f"{example}\n{run.stderr}"
    if "--tokenizer" in args or any("text_sentiment" in a for a in args):  # texts: JSON lines, a page
        written = (work / args[args.index("-o") + 1]).read_text() if "-o" in args else run.stdout
        assert written and all(json.loads(line)["tokens"] for line in written.splitlines())
        if "--html" in args:
            assert (work / args[args.index("--html") + 1]).read_text().count('class="text"') == len(written.splitlines())
        return
    out = work / (args[args.index("-o") + 1] if "-o" in args else "lrp-out")
    assert run.stdout == ""
    summaries = sorted(out.glob("summary*.csv"))  # summary.shard-K-of-N.csv with --shard
    assert len(summaries) == 1
    rows = read_csv(summaries[0])
    assert rows and all((out / r["heatmap"]).is_file() for r in rows)
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_messages_are_printed_as_text_not_markup(world, tmp_path):
    """A file named photo[final].png is named so, not as photo.png (rich markup would eat [final])."""
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "bad[final].png").write_text("not an image")
    run = lrp("explain", world.ts, images, out=tmp_path / "o")
    assert run.code == 5
    assert "bad[final].png" in run.stderr
    missing = lrp("explain", world.ts, tmp_path / "nope[x].png", out=tmp_path / "o2")
    assert "nope[x].png" in missing.stderr


def test_a_one_channel_model_of_ones_own_works_on_the_first_try(tmp_path):
    """Issue #16: a 1-channel CNN, TorchScript and .pt2, no spec, grayscale PNGs: every command runs as given."""
    from cli_support import save_exported, save_torchscript, tiny_gray

    model = tiny_gray()
    images = tmp_path / "imgs"
    for i in range(3):
        write_image(images / f"g{i}.png", 40 + i, size=(8, 8), mode="L")
    files = [save_torchscript(model, tmp_path / "my.ts"), save_exported(model, tmp_path / "my.pt2", torch.zeros(2, 1, 8, 8))]
    for path in files:
        run = lrp("explain", path, images, out=tmp_path / f"out-{path.suffix}")
        assert run.code == 0, run.stderr
        assert "no --mean/--std" in run.stderr  # the missing normalisation is said, not silent
        rows = read_csv(tmp_path / f"out-{path.suffix}" / "summary.csv")
        assert len(rows) == 3
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(images / f"g{i}.png"), dtype=np.float32) / 255.0)[None] for i in range(3)])
        assert [int(r["prediction"]) for r in rows] == model(x).argmax(1).tolist()
        assert lrp("check-conservation", path, images, "-c", "lrp_0", "-q").code == 0
        assert lrp("compare", path, images / "g0.png", "-c", "epsilon", "-q", out=tmp_path / f"cmp-{path.suffix}").code == 0
        assert lrp("evaluate", path, images, "--steps", "2", "-q", "--baseline", "none", out=tmp_path / f"ev-{path.suffix}").code == 0
        shape = [] if path.suffix == ".pt2" else ["--input-shape", "1,8,8"]  # a .pt2 says its input shape itself
        assert lrp("inspect", path, *shape).code == 0
    unknown = lrp("inspect", files[0])
    assert unknown.code == 2 and "--input-shape 1,H,W" in unknown.stderr
    contradiction = lrp("explain", files[0], images, "--mode", "rgb", out=tmp_path / "bad")
    assert contradiction.code == 2 and "--mode l" in contradiction.stderr


def test_the_progress_bar_names_the_capture_stage(tmp_path, monkeypatch):
    """While the first batch waits for the model's graph, the bar says so (then it counts inputs again)."""
    from cli_support import save_torchscript, minivgg
    from lrpcli.cli import console as console_module

    seen = []
    original = console_module._Advance.stage

    def stage(self, text):
        seen.append(text)
        original(self, text)

    monkeypatch.setattr(console_module._Advance, "stage", stage)
    monkeypatch.setenv("LRP_CACHE_DIR", "off")
    save_torchscript(minivgg(), tmp_path / "m.ts")
    write_image(tmp_path / "imgs" / "a.png", 3)
    assert lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", out=tmp_path / "o").code == 0
    assert seen == ["capturing the model", None]


def test_layers_writes_inner_relevance_maps_that_conserve_on_a_bias_free_net(tmp_path):
    from cli_support import minivgg, save_torchscript

    save_torchscript(minivgg(), tmp_path / "m.ts")
    for i in range(2):
        write_image(tmp_path / "imgs" / f"a{i}.png", 20 + i)
    run = lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-c", "lrp_0", "--dtype", "float64", "--layers", "features.3,classifier.1", "-q", out=tmp_path / "o")
    assert run.code == 0, run.stderr
    for row in read_csv(tmp_path / "o" / "summary.csv"):
        name = row["input"].rsplit(".", 1)[0]
        for layer in ("features.3", "classifier.1"):
            relevance_map = np.load(tmp_path / "o" / "layers" / layer / f"{name}.npy")
            assert relevance_map.sum() == pytest.approx(float(row["logit"]), rel=1e-5)
    wrong = lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "--layers", "features.33", out=tmp_path / "o2")
    assert wrong.code == 2 and "--layers: no layer 'features.33'" in wrong.stderr


def test_legend_adds_a_colour_bar_from_minus_to_plus_the_heatmap_s_scale(tmp_path):
    from cli_support import minivgg, save_torchscript
    from lrpcli.render.heatmaps import LEGEND_BAR, _palette

    save_torchscript(minivgg(), tmp_path / "m.ts")
    write_image(tmp_path / "imgs" / "a.png", 9)
    plain = lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", out=tmp_path / "plain")
    legend = lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", "--legend", out=tmp_path / "legend")
    assert plain.code == 0 and legend.code == 0, legend.stderr
    without = np.asarray(Image.open(tmp_path / "plain" / "heatmaps" / "a.png").convert("RGB"))
    with_bar = np.asarray(Image.open(tmp_path / "legend" / "heatmaps" / "a.png").convert("RGB"))
    height = without.shape[0]
    assert with_bar.shape[1] == without.shape[1] and with_bar.shape[0] > height + LEGEND_BAR
    np.testing.assert_array_equal(with_bar[:height], without)  # the heatmap itself is unchanged
    palette = _palette("bwr")
    bar = with_bar[height + 2 + LEGEND_BAR // 2]
    np.testing.assert_array_equal(bar[0], palette[0])  # -max |R| at the left
    np.testing.assert_array_equal(bar[-1], palette[-2])  # +max |R| at the right (the last entry is the NaN colour)
    assert json.loads((tmp_path / "legend" / "run.json").read_text())["arguments"]["legend"] is True
