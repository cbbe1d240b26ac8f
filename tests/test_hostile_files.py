"""Files other commands read back, damaged or edited by hand, and user strings that look like markup.

- ``lrp merge`` reads the shards' summaries, manifests and conservation reports; ``lrp report`` an image
  run's summaries and run files, or a text run's ``words.jsonl``. A damaged file is an InputError that
  names the file and line (exit 5), never an internal error, and never rows silently left out.
- A ``$...$`` in a feature, class, input or composite name is what matplotlib reads as mathtext: every
  chart draws such names as the text they are (issue #24, items 4 and 5).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_support import lrp, refused

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "sample_models" / "shapes_minivgg"
DIABETES = ROOT / "sample_models" / "diabetes_mlp"
TEXTS = ROOT / "sample_models" / "text_sentiment"
SUMMARY = "summary.shard-1-of-2.csv"
MANIFEST = "manifest.shard-1-of-2.jsonl"

pytestmark = pytest.mark.skipif(not (SHAPES / "model.yaml").is_file(), reason="sample_models/ is not built")

# names matplotlib would read as mathtext (an even number of $): one does not parse, one would be a formula
MATH = "$\\frac{$"
FORMULA = "x$_$y"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Both shards of the shapes sample in one folder, as `lrp explain --shard K/2` leaves them."""
    out = tmp_path_factory.mktemp("hostile-files") / "sharded"
    for k in (1, 2):
        run = lrp("explain", SHAPES / "model.yaml", SHAPES / "images", "--shard", f"{k}/2", "--no-report", out=out)
        assert run.code == 0, run.describe()
    return out


def copy_of(shards: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(shards, folder)
    return folder


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def edit_lines(path: Path, change) -> None:
    lines = lines_of(path)
    change(lines)
    path.write_text("\n".join(lines), encoding="utf-8")


def edit_header(path: Path, **fields) -> None:
    def change(lines):
        header = json.loads(lines[0])
        header.update(fields)
        lines[0] = json.dumps(header)

    edit_lines(path, change)


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 7])


def drop_columns(path: Path, *names: str) -> None:
    def change(lines):
        header = lines[0].split(",")
        keep = [i for i, name in enumerate(header) if name not in names]
        for i, line in enumerate(lines):
            if line:
                cells = line.split(",")
                lines[i] = ",".join(cells[k] for k in keep)

    edit_lines(path, change)


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    def change(lines):
        header = lines[0].split(",")
        cells = lines[line - 1].split(",")
        cells[header.index(column)] = value
        lines[line - 1] = ",".join(cells)

    edit_lines(path, change)


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def second_row_input(path: Path) -> bytes:
    return lines_of(path)[1].split(",")[0].encode("utf-8")


# (what, damage(folder), the file:line the error must name, a fragment of the message)
MERGE_DAMAGE = [
    ("summary cut short in a row", lambda d: cut_in_half(d / SUMMARY), SUMMARY + ":", "cut short"),
    ("summary without heatmap and relevance columns", lambda d: drop_columns(d / SUMMARY, "heatmap", "relevance"), SUMMARY + ":1:", "no heatmap, relevance column"),
    ("summary without an input column", lambda d: drop_columns(d / SUMMARY, "input"), SUMMARY + ":1:", "no input column"),
    ("summary with a column twice", lambda d: edit_lines(d / SUMMARY, lambda ls: ls.__setitem__(0, ls[0].replace("target,", "input,"))), SUMMARY + ":1:", "input twice"),
    ("summary row with extra cells", lambda d: edit_lines(d / SUMMARY, lambda ls: ls.__setitem__(2, ls[2] + ",extra,more")), SUMMARY + ":3:", "13 cell(s)"),
    ("summary row with a text for a class index", lambda d: set_cell(d / SUMMARY, 2, "prediction", "circle"), SUMMARY + ":2:", "prediction is 'circle'"),
    ("summary row with a text for a number", lambda d: set_cell(d / SUMMARY, 2, "logit", "high"), SUMMARY + ":2:", "logit is 'high'"),
    ("summary row naming no input", lambda d: set_cell(d / SUMMARY, 2, "input", ""), SUMMARY + ":2:", "names no input"),
    ("summary heatmap outside the folder", lambda d: set_cell(d / SUMMARY, 2, "heatmap", "/etc/passwd"), SUMMARY + ":2:", "not a path inside"),
    ("summary relevance up and out", lambda d: set_cell(d / SUMMARY, 2, "relevance", "../../x.npy"), SUMMARY + ":2:", "not a path inside"),
    ("summary not UTF-8", lambda d: replace_bytes(d / SUMMARY, second_row_input(d / SUMMARY), b"bad\xff.png"), SUMMARY + ":2:", "not UTF-8"),
    ("summary with a NUL byte", lambda d: replace_bytes(d / SUMMARY, second_row_input(d / SUMMARY), b"bad\x00.png"), SUMMARY + ":2:", "NUL"),
    ("summary garbled", lambda d: (d / SUMMARY).write_bytes(b'\x00\x01garbage"\n"x,,,\n'), SUMMARY + ":1:", "NUL"),
    ("summary empty", lambda d: (d / SUMMARY).write_bytes(b""), SUMMARY, "no header line"),
    ("summary a folder", lambda d: ((d / SUMMARY).unlink(), (d / SUMMARY).mkdir()), SUMMARY, "cannot read the summary"),
    ("summary with a cell past the csv field limit", lambda d: replace_bytes(d / SUMMARY, second_row_input(d / SUMMARY), b'"' + b"a" * 200_000), SUMMARY + ":2:", "field limit"),
    ("manifest header not JSON", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.__setitem__(0, "{bad")), MANIFEST + ":1:", "not JSON"),
    ("manifest header not an object", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.__setitem__(0, "[1, 2]")), MANIFEST + ":1:", "not its header"),
    ("manifest without its header", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.pop(0)), MANIFEST + ":1:", "not its header"),
    ("manifest shard a number", lambda d: edit_header(d / MANIFEST, shard=1), MANIFEST + ":1:", "shard in the manifest's header is 1"),
    ("manifest shard not K/N", lambda d: edit_header(d / MANIFEST, shard="one"), MANIFEST + ":1:", 'is "one", not K/N'),
    ("manifest shard of none", lambda d: edit_header(d / MANIFEST, shard="1/0"), MANIFEST + ":1:", 'is "1/0", not K/N'),
    ("manifest model hash a list", lambda d: edit_header(d / MANIFEST, model_sha256=[1]), MANIFEST + ":1:", "model_sha256"),
    ("manifest line not JSON", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.insert(3, "garbage")), MANIFEST + ":4:", "not JSON"),
    ("manifest line not an object", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.insert(3, "[1]")), MANIFEST + ":4:", "a list where"),
    ("manifest entry with a number for its input", lambda d: edit_lines(d / MANIFEST, lambda ls: ls.insert(3, json.dumps({"kind": "input", "input": 5, "status": "done"}))), MANIFEST + ":4:", "input entry"),
    ("manifest not UTF-8", lambda d: (d / MANIFEST).write_bytes(b"\xff" + (d / MANIFEST).read_bytes()), MANIFEST + ":1:", "not UTF-8"),
    ("conservation report not JSON", lambda d: (d / "conservation.shard-1-of-2.json").write_text('{\n  "a": 1,\n  oops\n}'), "conservation.shard-1-of-2.json:3:", "not JSON"),
    ("conservation report a list", lambda d: (d / "conservation.shard-1-of-2.json").write_text("[1]"), "conservation.shard-1-of-2.json:1:", "a list where"),
    ("conservation samples not objects", lambda d: (d / "conservation.shard-1-of-2.json").write_text('{"samples": [1, 2]}'), "conservation.shard-1-of-2.json", "samples is not a list of objects"),
]


@pytest.mark.parametrize("what, damage, where, said", MERGE_DAMAGE, ids=[case[0] for case in MERGE_DAMAGE])
def test_merge_names_the_damaged_file_and_line(shards, tmp_path, what, damage, where, said):
    folder = copy_of(shards, tmp_path)
    damage(folder)
    run = lrp("merge", folder)
    refused(run, 5, where, said)
    assert not (folder / "summary.csv").exists()  # nothing merged from a damaged shard


def test_merge_of_the_shards_as_written_still_works(shards, tmp_path):
    folder = copy_of(shards, tmp_path)
    # a manifest line a kill cut short (what lrp wrote, then a resume went on past it) is no damage
    edit_lines(folder / MANIFEST, lambda ls: ls.insert(3, ls[3][:25]))
    run = lrp("merge", folder)
    assert run.code == 0, run.describe()
    rows = (folder / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(list((SHAPES / "images").iterdir()))


def test_merge_names_both_copies_of_a_row_that_is_in_two_runs(shards, tmp_path):
    folder = copy_of(shards, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / SUMMARY, other / "summary.csv")
    run = lrp("merge", folder, other, out=tmp_path / "merged")
    refused(run, 5, "appears in more than one run", f"{folder / SUMMARY}:2", f"{other / 'summary.csv'}:2")


def test_a_resumed_manifest_keeps_a_cut_line_apart_from_the_next(tmp_path):
    from lrpcli.runs.shards import Manifest

    manifest = Manifest(tmp_path, None)
    manifest.open("m", "c", 2, resume=False, overwrite=False)
    manifest.record(["a.png"], "done")
    manifest.close()
    with manifest.path.open("a", encoding="utf-8") as handle:
        handle.write('{"kind": "input", "inp')  # killed in the middle of a line
    again = Manifest(tmp_path, None)
    again.open("m", "c", 2, resume=True, overwrite=False)
    again.record(["b.png"], "done")
    again.close()
    assert [e["input"] for e in again.entries()] == ["a.png", "b.png"]
    assert len(again.runs()) == 2


# --------------------------------------------------------------------------- lrp report on an image folder


def test_report_of_an_image_folder_with_a_damaged_summary_or_run_file(shards, tmp_path):
    folder = copy_of(shards, tmp_path)
    run_file = folder / "run.shard-1-of-2.json"
    data = json.loads(run_file.read_text(encoding="utf-8"))
    run_file.write_text(json.dumps({key: [1] for key in data}), encoding="utf-8")  # every field of another type
    built = lrp("report", folder)
    assert built.code == 0, built.describe()  # what the page cannot use of a run file it leaves out
    replace_bytes(folder / SUMMARY, second_row_input(folder / SUMMARY), b"bad\x00.png")
    refused(lrp("report", folder), 5, SUMMARY + ":2:", "NUL")
    drop_columns(folder / SUMMARY, "input")
    refused(lrp("report", folder), 5, SUMMARY, "no 'input' column")


# --------------------------------------------------------------------------- lrp report on a text run's JSON lines


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-words")
    run = lrp("explain", TEXTS / "bag.yaml", TEXTS / "texts.txt", "--no-report", out=folder / "words.jsonl")
    assert run.code == 0, run.describe()
    return folder / "words.jsonl"


def _row(change):
    def damage(rows: list):
        row = rows[3]
        change(row)
        return row

    return damage


def _word(change):
    return _row(lambda row: change(row["words"][0]))


TEXT_DAMAGE = [
    ("not JSON", lambda rows: "{bad", "not JSON"),
    ("a list", lambda rows: [1, 2], "a list, not a result row"),
    ("a text", lambda rows: "text", "a text, not a result row"),
    ("no words", _row(lambda r: r.pop("words")), "no words"),
    ("no text", _row(lambda r: r.pop("text")), "no text"),
    ("no target", _row(lambda r: r.pop("target")), "no target"),
    ("words a text", _row(lambda r: r.__setitem__("words", "abc")), "words is a text"),
    ("words a number", _row(lambda r: r.__setitem__("words", 5)), "words is a number"),
    ("a word a number", _row(lambda r: r.__setitem__("words", [1, 2])), "words[0] is a number"),
    ("a word without relevance", _word(lambda w: w.pop("relevance")), "words[0] has no relevance"),
    ("a word without start", _word(lambda w: w.pop("start")), "words[0] has no start"),
    ("relevance a text", _word(lambda w: w.__setitem__("relevance", "x")), "words[0].relevance is a text"),
    ("relevance NaN", _word(lambda w: w.__setitem__("relevance", float("nan"))), "words[0].relevance is NaN"),
    ("relevance true", _word(lambda w: w.__setitem__("relevance", True)), "not a finite number"),
    ("start a text", _word(lambda w: w.__setitem__("start", "x")), "not a span of the text"),
    ("start past the text", _word(lambda w: w.__setitem__("start", 10**30)), "not a span of the text"),
    ("start negative", _word(lambda w: w.__setitem__("start", -5)), "not a span of the text"),
    ("word a number", _word(lambda w: w.__setitem__("word", 7)), "words[0].word is a number"),
    ("text a number", _row(lambda r: r.__setitem__("text", 5)), "text is a number"),
    ("text null", _row(lambda r: r.__setitem__("text", None)), "text is null"),
    ("logit a text", _row(lambda r: r.__setitem__("logit", "x")), "logit is a text"),
    ("target an object", _row(lambda r: r.__setitem__("target", {})), "target is an object"),
    ("label a list", _row(lambda r: r.__setitem__("prediction_label", [1])), "prediction_label is a list"),
]


@pytest.mark.parametrize("what, damage, said", TEXT_DAMAGE, ids=[case[0] for case in TEXT_DAMAGE])
def test_report_of_hand_edited_words_names_the_line(words, tmp_path, what, damage, said):
    lines = words.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    new = damage(rows)
    lines[3] = new if isinstance(new, str) and new.startswith("{") else json.dumps(new)
    edited = tmp_path / "words.jsonl"
    edited.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(lrp("report", edited), 5, f"{edited}:4:", said)


def test_report_of_words_with_a_line_not_utf8(words, tmp_path):
    edited = tmp_path / "words.jsonl"
    edited.write_bytes(words.read_bytes() + b'{"text": "\xff\xfe"}\n')
    count = words.read_text(encoding="utf-8").count("\n")
    refused(lrp("report", edited), 5, f"{edited}:{count + 1}:", "not UTF-8")


# --------------------------------------------------------------------------- names drawn as text (item 5)


def chart_pngs(page: Path) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page.read_text(encoding="utf-8"))]


def test_features_named_like_mathtext_make_the_rows_page(tmp_path):
    if not (DIABETES / "model.yaml").is_file():
        pytest.skip("sample_models/ is not built")
    run = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--no-report", out=tmp_path / "rel.csv")
    assert run.code == 0, run.describe()
    header, rest = (tmp_path / "rel.csv").read_text(encoding="utf-8").split("\n", 1)
    header = header.replace(",age,", f",{MATH},").replace(",sex,", f",{FORMULA},").replace(",bmi,", ",a$b$c$,")
    (tmp_path / "dollar.csv").write_text(header + "\n" + rest, encoding="utf-8")
    built = lrp("report", tmp_path / "dollar.csv")
    assert built.code == 0, built.describe()
    text = (tmp_path / "dollar.report.html").read_text(encoding="utf-8")
    features = {html.unescape(name) for name in re.findall(r'<tr data-feature="([^"]+)"', text)}
    assert {MATH, FORMULA, "a$b$c$"} <= features
    assert len(chart_pngs(tmp_path / "dollar.report.html")) == 2  # the bars and the spread, each drawn


@pytest.fixture
def dollar_composite(tmp_path) -> Path:
    shown = lrp("composites", "show", "epsilon")
    assert shown.code == 0, shown.describe()
    yaml = re.sub(r"(?m)^name: .*$", lambda _: "name: " + json.dumps(f"{MATH} {FORMULA}"), shown.stdout)
    path = tmp_path / "dollar.yaml"
    path.write_text(yaml, encoding="utf-8")
    return path


def test_a_composite_named_like_mathtext_makes_the_evaluation_chart_and_page(tmp_path, dollar_composite):
    if not (DIABETES / "model.yaml").is_file():
        pytest.skip("sample_models/ is not built")
    out = tmp_path / "eval"
    run = lrp("evaluate", DIABETES / "model.yaml", DIABETES / "sample.csv", "-c", dollar_composite, "--steps", "2", "--baseline", "none", out=out)
    assert run.code == 0, run.describe()
    with Image.open(out / "evaluation.png") as image:
        assert image.format == "PNG"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert html.escape(f"{MATH} {FORMULA}") in page
    rebuilt = lrp("report", out)
    assert rebuilt.code == 0, rebuilt.describe()


def test_an_input_and_a_composite_named_like_mathtext_make_the_conservation_page(tmp_path, dollar_composite):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted((SHAPES / "images").iterdir())[0], images / f"a{MATH}b.png")
    page = tmp_path / "conservation.html"
    run = lrp("check-conservation", SHAPES / "model.yaml", images, "-c", dollar_composite, "--report", page)
    assert run.code in (0, 6), run.describe()  # the verdict does not matter here: the page does
    assert "internal error" not in run.stderr
    text = page.read_text(encoding="utf-8")
    assert html.escape(f"a{MATH}b.png") in text and html.escape(f"{MATH} {FORMULA}") in text
    assert chart_pngs(page)


def test_classes_named_like_mathtext_make_the_image_page(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{MATH}\n{FORMULA}\na$b$c$\n$\\alpha$\n", encoding="utf-8")
    run = lrp("explain", SHAPES / "model.yaml", SHAPES / "images", "--classes", classes, out=tmp_path / "out")
    assert run.code == 0, run.describe()
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    shown = json.loads(re.search(r'<script type="application/json" id="rows">(.*?)</script>', text, re.S).group(1))
    predicted = {row["prediction_label"] for row in run.rows()}
    assert predicted <= {MATH, FORMULA, "a$b$c$", "$\\alpha$"} and {card["pred"] for card in shown} == predicted
    assert len(list((tmp_path / "out" / "report").glob("class-*.png"))) == len(predicted)  # a mean map per class, drawn


def _png(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.parametrize("name", ["$\\alpha$", MATH, FORMULA, "100$ and 200$"])
def test_a_chart_draws_dollar_names_literally(name):
    """A chart's strings come out as matplotlib draws an escaped (non-math) string: the same pixels."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lrpcli.render.charts import figure

    def draw(fig, label):
        ax = fig.add_subplot()
        ax.barh([0, 1], [1, 2])
        ax.set_yticks([0, 1], [label, "plain"])
        ax.set_title(label)
        ax.legend([label])
        fig.tight_layout()
        return _png(fig)

    with matplotlib.rc_context({"text.usetex": True}):  # a matplotlibrc that asks for LaTeX is not followed either
        ours = draw(figure(4, 3), name)
    reference = Figure(figsize=(4, 3), dpi=100)
    FigureCanvasAgg(reference)
    expected = draw(reference, name.replace("$", "\\$"))  # matplotlib's own way to say: not math
    assert np.array_equal(ours, expected)


def test_the_evaluation_plot_draws_dollar_names(tmp_path):
    from types import SimpleNamespace

    from lrpcli.render.plots import perturbation_plot

    curves = {"morf": {"logit": np.ones((2, 3))}, "lerf": {"logit": np.zeros((2, 3))}}
    entry = {"kind": "composite", "curves": curves, "aopc": {"morf": np.ones(2), "lerf": np.zeros(2)}}
    evaluation = SimpleNamespace(
        fractions=[0, 0.5, 1], methods={MATH: entry, FORMULA: entry}, names=["a", "b"],
        settings=SimpleNamespace(replace="$x$", steps=2), unit_label="$pixels$",
    )
    perturbation_plot(evaluation, tmp_path / "plot.png", title=f"{MATH} title")
    with Image.open(tmp_path / "plot.png") as image:
        assert image.format == "PNG"
