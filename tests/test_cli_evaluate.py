"""``lrp evaluate`` end to end: files written, their contents, localisation, Quantus arrays, CSV input, errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli_support import load_tensor, lrp

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "digits_cnn"
SHAPES = SAMPLES / "shapes_minivgg"
CANCER = SAMPLES / "breast_cancer_mlp"

pytestmark = pytest.mark.skipif(
    not all((SAMPLES / name / "model.ts").is_file() for name in ("digits_cnn", "shapes_minivgg")) or not (CANCER / "sample.csv").is_file(),
    reason="sample_models/ is not built",
)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_images_end_to_end(tmp_path):
    out = tmp_path / "eval"
    run = lrp("evaluate", DIGITS / "model.yaml", DIGITS / "images", "-c", "epsilon_plus_flat", "-c", "epsilon", "--steps", "3", out=out)
    assert run.code == 0, run.describe()
    assert run.stdout == ""  # results go to files; the table goes to stderr
    assert {"evaluation.png", "evaluation.json", "evaluation.csv"} <= run.files()
    assert "AOPC logit" in run.stderr and "epsilon_plus_flat" in run.stderr

    with Image.open(out / "evaluation.png") as image:
        assert image.format == "PNG" and image.size == (1000, 600)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 20, "the chart looks blank"
    assert (pixels.min(axis=1) < 200).mean() > 0.02  # lines, text and axes, not a white page

    data = read_json(out / "evaluation.json")
    assert data["inputs"] == 6 and data["input_kind"] == "image" and data["units"] == 64
    assert data["names"] == sorted(p.name for p in (DIGITS / "images").glob("*.png"))
    assert data["target_labels"] == [name.split("_")[1] for name in data["names"]]  # the digits are classified as named
    assert data["removed"] == [0, 21, 43, 64] and data["fractions"][-1] == 1.0
    assert list(data["methods"]) == ["epsilon_plus_flat", "epsilon", "gradient_x_input", "random"]
    for name, method in data["methods"].items():
        assert set(method) >= {"kind", "aopc", "curves", "per_input", "aopc_probability", "confidence_morf_mean"}
        assert method["kind"] == ("composite" if name.startswith("epsilon") else "baseline")
        for order in ("morf", "lerf"):
            curve = method["curves"][order]
            assert set(curve) == {"logit", "probability", "confidence"} and all(len(v) == 4 for v in curve.values())
            # AOPC = mean over inputs and steps of f(x) - f(x_k) = the mean curve's start minus its mean
            assert method["aopc"][order] == pytest.approx(curve["logit"][0] - np.mean(curve["logit"]), rel=1e-9, abs=1e-9)
            assert all(0 <= c <= 1 for c in curve["confidence"])
        assert method["aopc"]["gap"] == pytest.approx(method["aopc"]["morf"] - method["aopc"]["lerf"])
        assert len(method["per_input"]["aopc_morf"]) == 6
    assert data["methods"]["epsilon_plus_flat"]["composite"]["name"] == "epsilon_plus_flat"

    rows = read_rows(out / "evaluation.csv")
    assert len(rows) == 4 * 2 * 4
    assert list(rows[0]) == ["method", "kind", "order", "step", "fraction", "logit", "probability", "confidence", "aopc", "gap",
                             "relevance_mass_accuracy", "sanity_max_spearman", "sanity_flagged"]
    first = rows[0]
    assert first["method"] == "epsilon_plus_flat" and first["order"] == "morf" and first["step"] == "0"
    assert float(first["aopc"]) == pytest.approx(data["methods"]["epsilon_plus_flat"]["aopc"]["morf"], rel=1e-6)


def test_cli_numbers_match_the_library_on_independently_loaded_images(tmp_path):
    """The CLI's loading/preprocessing loses nothing: same AOPC as the Python API on tensors read with Pillow."""
    from lrpcli.evaluate import Settings, evaluate
    from lrpcli.sources.files import load_model

    run = lrp("evaluate", DIGITS / "model.yaml", DIGITS / "images", "--baseline", "gradient-x-input", "--steps", "4", "-q", out=tmp_path)
    assert run.code == 0, run.describe()
    assert run.stderr == ""  # -q: no table, no summary line
    data = read_json(tmp_path / "evaluation.json")
    paths = sorted((DIGITS / "images").glob("*.png"))
    x = torch.stack([load_tensor(p, mode="L", mean=[0.5], std=[0.5]) for p in paths])
    expected = evaluate(load_model(DIGITS / "model.ts"), x, ["epsilon_plus_flat"], ["gradient_x_input"], Settings(steps=4))
    for name in ("epsilon_plus_flat", "gradient_x_input"):
        assert data["methods"][name]["aopc"]["morf"] == pytest.approx(expected.summary(name)["aopc_morf"], rel=1e-5)
        assert data["methods"][name]["aopc"]["lerf"] == pytest.approx(expected.summary(name)["aopc_lerf"], rel=1e-5)


def test_masks_give_localisation_and_save_arrays_the_quantus_layout(tmp_path):
    arrays = tmp_path / "arrays"
    run = lrp(
        "evaluate", SHAPES / "model.yaml", SHAPES / "images", "--masks", SHAPES / "masks", "-c", "epsilon_plus_flat",
        "--baseline", "random", "--patch", "4", "--steps", "2", "--save-arrays", arrays, out=tmp_path / "eval",
    )
    assert run.code == 0, run.describe()
    data = read_json(tmp_path / "eval" / "evaluation.json")
    assert data["units"] == 64  # 8 x 8 patches of 4 x 4 pixels
    assert 0 < data["mask_area"] < 0.3
    for method in data["methods"].values():
        mass = method["localisation"]["relevance_mass_accuracy"]
        assert 0 <= mass <= 1
        assert len(method["per_input"]["relevance_mass_accuracy"]) == 8
        assert all(0 <= v <= 1 for v in method["per_input"]["relevance_mass_accuracy"])
    lrp_mass = data["methods"]["epsilon_plus_flat"]["localisation"]["relevance_mass_accuracy"]
    assert lrp_mass > 2 * data["mask_area"]  # LRP's positive relevance sits on the shape
    assert abs(data["methods"]["random"]["localisation"]["relevance_mass_accuracy"] - data["mask_area"]) < 0.05
    assert "mass in mask" in run.stderr

    x = np.load(arrays / "x_batch.npy")
    y = np.load(arrays / "y_batch.npy")
    a = np.load(arrays / "a_batch_epsilon_plus_flat.npy")
    r = np.load(arrays / "a_batch_random.npy")
    s = np.load(arrays / "s_batch.npy")
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (8,) and y.dtype == np.int64 and y.tolist() == data["targets"]
    assert a.shape == x.shape and a.dtype == np.float32 and r.shape == x.shape and r.dtype == np.float32
    assert s.shape == (8, 1, 32, 32) and s.dtype == np.uint8 and set(np.unique(s).tolist()) == {0, 1}
    names = sorted(p.name for p in (SHAPES / "images").glob("*.png"))
    expected_x = np.stack([load_tensor(SHAPES / "images" / n, mean=[0.5] * 3, std=[0.25] * 3).numpy() for n in names])
    np.testing.assert_allclose(x, expected_x, atol=1e-6)
    with Image.open(SHAPES / "masks" / names[0]) as mask:
        np.testing.assert_array_equal(s[0, 0], (np.asarray(mask) > 127).astype(np.uint8))
    # the saved relevance is what the localisation numbers were computed from
    positive = np.clip(a.sum(axis=1), 0, None)
    share = (positive * s[:, 0]).sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
    np.testing.assert_allclose(share, data["methods"]["epsilon_plus_flat"]["per_input"]["relevance_mass_accuracy"], rtol=1e-4)


def test_csv_input_with_json_to_stdout(tmp_path):
    run = lrp("evaluate", CANCER / "model.yaml", CANCER / "sample.csv", "--steps", "3", "--replace", "mean", "--json", "-", out=tmp_path)
    assert run.code == 0, run.describe()
    data = json.loads(run.stdout)
    assert data["input_kind"] == "csv" and data["inputs"] == 100 and data["units"] == 30
    assert list(data["methods"]) == ["epsilon", "gradient_x_input", "random"]  # the spec's composite
    assert data["removed"] == [0, 10, 20, 30]
    lrp_aopc, random_aopc = data["methods"]["epsilon"]["aopc"]["morf"], data["methods"]["random"]["aopc"]["morf"]
    assert lrp_aopc > random_aopc
    assert not (tmp_path / "evaluation.json").exists()  # --json - replaces it
    assert (tmp_path / "evaluation.png").is_file() and (tmp_path / "evaluation.csv").is_file()


def test_csv_from_stdin_with_csv_to_stdout(tmp_path):
    from lrpcli.cli import main

    text = "\n".join((CANCER / "sample.csv").read_text(encoding="utf-8").splitlines()[:21]) + "\n"
    result = CliRunner().invoke(
        main, ["evaluate", str(CANCER / "model.yaml"), "-", "--steps", "2", "--csv", "-", "-q", "-o", str(tmp_path), "--plot", str(tmp_path / "p.png")], input=text
    )
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3 * 2 * 3 and {r["method"] for r in rows} == {"epsilon", "gradient_x_input", "random"}
    assert (tmp_path / "p.png").is_file() and not (tmp_path / "evaluation.png").exists()
    assert read_json(tmp_path / "evaluation.json")["inputs"] == 20


def test_a_regression_model_has_logit_curves_only(tmp_path):
    diabetes = SAMPLES / "diabetes_mlp"
    run = lrp("evaluate", diabetes / "model.yaml", diabetes / "sample.csv", "--steps", "2", "--score", "probability", out=tmp_path)
    assert run.code == 0, run.describe()
    data = read_json(tmp_path / "evaluation.json")
    method = data["methods"]["epsilon"]
    assert set(method["curves"]["morf"]) == {"logit"} and "aopc_probability" not in method
    assert set(data["targets"]) == {0} and data["units"] == 10
    assert "AOPC prob" not in run.stderr and (tmp_path / "evaluation.png").is_file()


def test_sanity_check_in_the_table_and_json(tmp_path):
    run = lrp("evaluate", DIGITS / "model.yaml", DIGITS / "images", "-c", "epsilon_plus_flat", "--baseline", "none", "--steps", "1", "--sanity-layers", "2", out=tmp_path)
    assert run.code == 0, run.describe()
    sanity = read_json(tmp_path / "evaluation.json")["methods"]["epsilon_plus_flat"]["sanity"]
    assert [level["randomised_layers"] for level in sanity["levels"]] == [["classifier.3"], ["classifier.3", "classifier.1"]]
    assert all(-1 <= level["spearman"] < 0.9 for level in sanity["levels"])
    assert sanity["flagged"] is False and "depends on the model" in sanity["verdict"]
    assert "Spearman" in run.stderr and "model-independent" not in run.stderr


def test_a_model_independent_explanation_is_flagged(tmp_path):
    composite = tmp_path / "flat_everywhere.yaml"
    composite.write_text("name: flat_everywhere\nrules:\n  - match: {type: [conv, linear]}\n    rule: flat\n", encoding="utf-8")
    run = lrp("evaluate", DIGITS / "model.yaml", DIGITS / "images", "-c", composite, "--baseline", "none", "--steps", "1", "--sanity", out=tmp_path / "out")
    assert run.code == 0, run.describe()  # a report, not a gate: flagged methods warn
    assert "does not depend on the model" in run.stderr
    assert read_json(tmp_path / "out" / "evaluation.json")["methods"]["flat_everywhere"]["sanity"]["flagged"] is True


def _partial_masks(tmp_path: Path) -> Path:
    folder = tmp_path / "masks"
    folder.mkdir()
    for name in ("circle_02.png", "cross_00.png"):
        shutil.copy(SHAPES / "masks" / name, folder / name)
    return folder


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["-c", "epsilon_plus_flatt"], 3, "did you mean"),
        (["--baseline", "gradient"], 2, "gradient_x_input"),
        (["--baseline", "none,random"], 2, "excludes"),
        (["--replace", "blurr"], 2, "did you mean 'blur'"),
        (["--steps", "0"], 2, "--steps"),
        (["--max-fraction", "0"], 2, "--max-fraction"),
        (["--patch", "40"], 2, "larger than"),
        (["--sanity-layers", "0"], 2, "--sanity-layers"),
        (["--json", "-", "--csv", "-"], 2, "stdout"),
        (["--masks", "MASKS"], 5, "no mask for 6 of 8 image(s)"),
        (["--masks", "nowhere"], 5, "folder not found"),
    ],
)
def test_errors_on_images(tmp_path, args, code, expected):
    args = [str(_partial_masks(tmp_path)) if a == "MASKS" else a for a in args]
    run = lrp("evaluate", SHAPES / "model.yaml", SHAPES / "images", *args, out=tmp_path / "out")
    assert run.code == code, run.describe()
    assert expected in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_missing_masks_are_named(tmp_path):
    run = lrp("evaluate", SHAPES / "model.yaml", SHAPES / "images", "--masks", _partial_masks(tmp_path), out=tmp_path / "out")
    assert run.code == 5
    for name in ("circle_07.png", "square_01.png", "triangle_11.png"):
        assert name in run.stderr
    assert "circle_02.png" not in run.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--replace", "blur"], "CSV"),
        (["--patch", "2"], "--patch"),
        (["--masks", "."], "--masks applies to images"),
        (["--size", "8"], "--size applies to images"),
    ],
)
def test_image_only_options_on_csv(tmp_path, args, expected):
    run = lrp("evaluate", CANCER / "model.yaml", CANCER / "sample.csv", *args, out=tmp_path)
    assert run.code == 2, run.describe()
    assert expected in run.stderr


def test_bad_inputs(tmp_path):
    run = lrp("evaluate", DIGITS / "model.yaml", tmp_path / "missing", out=tmp_path / "out")
    assert run.code == 5 and "input not found" in run.stderr
    run = lrp("evaluate", DIGITS / "model.yaml", out=tmp_path / "out")
    assert run.code == 2 and "no INPUTS" in run.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    run = lrp("evaluate", CANCER / "model.yaml", bad, out=tmp_path / "out")
    assert run.code == 5, run.describe()
