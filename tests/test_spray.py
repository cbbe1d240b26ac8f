"""lrp spray (issue 29): SpRAy on an image run's relevance maps finds the Clever Hans of the shipped sample.

sample_models/clever_hans_digits: 24 of its 60 sevens carry a planted corner patch that the model uses
(patched.csv is the ground truth). Their heatmaps must form one cluster of class 7, for a plain run and
for a 3-shard run merged. Measured: adjusted Rand index 1.0 for both (2 clusters by the eigengap); the
bound below leaves room for other thread counts. On the same sample trained without the decoys (a model
that ignores the patch) the index was about 0.02: the check fails on a model without the shortcut.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sklearn", reason="lrp spray needs scikit-learn (the spray extra)")

from sklearn.metrics import adjusted_rand_score  # noqa: E402

from lrpcli.cli import main  # noqa: E402
from lrpcli.errors import InputError, ModelError, UsageError  # noqa: E402
from lrpcli.runs.spray import eigengap, pool, spectrum, spray  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "clever_hans_digits"
ARI_BOUND = 0.8
PATCH = (slice(0, 5), slice(0, 5))  # the 4x4 patch and the one-pixel rim the first 3x3 convolution spreads it to


def lrp(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def truth() -> dict[str, int]:
    return {Path(row["file"]).name: int(row["patched"]) for row in read_csv(SAMPLE / "patched.csv")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spray")
    plain, sharded = root / "plain", root / "sharded"
    lrp("explain", SAMPLE / "model.yaml", SAMPLE / "images", "-o", plain, "-q", "--no-report", "--no-heatmaps")
    for k in (1, 2, 3):  # the sevens only: the shards' merge is what is checked, at less than half the cost
        lrp("explain", SAMPLE / "model.yaml", SAMPLE / "images" / "7_*.png", "-o", sharded, "-q", "--no-report", "--no-heatmaps", "--shard", f"{k}/3")
    lrp("merge", sharded)
    return {"plain": plain, "merged": sharded}


@pytest.mark.parametrize("kind", ["plain", "merged"])
def test_the_patched_sevens_are_one_cluster(runs, kind):
    out = runs[kind]
    lrp("spray", out)
    rows = [row for row in read_csv(out / "spray" / "clusters.csv") if row["class"] == "7"]
    known = truth()
    patched = [known[row["input"]] for row in rows]
    assert sum(patched) >= 20  # the patched sevens are called 7 (the model uses the patch)
    ari = adjusted_rand_score(patched, [int(row["cluster"]) for row in rows])
    assert ari >= ARI_BOUND, ari


def test_rows_are_the_inputs_of_each_class(runs):
    out = runs["plain"]
    result = spray(out, write=True)
    summary = read_csv(out / "summary.csv")
    table = read_csv(out / "spray" / "clusters.csv")
    for name, found in result.classes.items():
        expected = sorted(row["input"] for row in summary if row["prediction_label"] == name)
        assert sorted(found.inputs) == expected
        assert sorted(row["input"] for row in table if row["class"] == name) == expected
    assert len(table) == len(summary) == len(result.rows)
    assert [(r["input"], r["class"], r["cluster"]) for r in result.rows] == [(r["input"], r["class"], int(r["cluster"])) for r in table]


def test_spectrum_eigengap_and_mean_maps(runs):
    out = runs["plain"]
    result = spray(out, classes=["7"], write=True)
    sevens = result.classes["7"]
    values = sevens.eigenvalues
    assert values[0] == pytest.approx(0.0, abs=1e-9) and np.all(np.diff(values) >= -1e-12)
    assert sevens.clusters == 2 == eigengap(values, 8)
    written = read_csv(out / "spray" / "eigenvalues.csv")
    np.testing.assert_allclose([float(r["eigenvalue"]) for r in written if r["class"] == "7"], values, rtol=1e-6, atol=1e-9)
    # cluster 0 is the larger (the clean sevens); the patched cluster's mean map holds its relevance in the corner
    clean, patched = (np.load(out / "spray" / "7" / f"cluster-{k}.npy") for k in (0, 1))
    np.testing.assert_allclose(patched, sevens.means[1])
    share = [np.clip(m, 0, None)[PATCH].sum() / np.clip(m, 0, None).sum() for m in (clean, patched)]
    assert share[1] > 0.2 > 0.05 > share[0], share
    assert (out / "spray" / "7" / "cluster-1.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "spray").iterdir() if p.is_dir()) == ["7"]  # earlier classes' maps are gone
    # a fixed number of clusters
    assert spray(out, classes=["7"], clusters=3, write=False).classes["7"].clusters == 3


def test_the_page_shows_the_clusters(runs):
    from lrpcli.report import write_report

    out = runs["plain"]
    (out / "spray" / "spray.json").unlink(missing_ok=True)
    assert 'id="spray"' not in write_report(out).read_text()  # no spray, no section
    spray(out, classes=["7"])
    html = write_report(out).read_text()
    section = html[html.index('id="spray"'):]
    assert "spray/7/cluster-1.png" in section and "spray/7/layout.png" in section
    assert "24 input(s)" in section and "35 input(s)" in section


def test_by_target_groups_every_row(runs):
    result = spray(runs["plain"], by="target", classes=["7"], write=False)
    summary = read_csv(runs["plain"] / "summary.csv")
    assert sorted(result.classes["7"].inputs) == sorted(r["input"] for r in summary if r["target_label"] == "7")


def test_pool_sums_blocks_and_scales_to_unit_length():
    heat = np.arange(16.0).reshape(4, 4)
    pooled = pool(heat, 2)
    blocks = np.array([0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13, 10 + 11 + 14 + 15], dtype=float)
    np.testing.assert_allclose(pooled, blocks / np.linalg.norm(blocks))
    assert pool(np.zeros((3, 5)), 8).tolist() == [0.0] * 15  # smaller than the grid: one cell per pixel


def test_spectrum_counts_connected_components():
    """The normalised Laplacian has eigenvalue 0 once per connected component (von Luxburg 2007, prop. 4):
    three far-apart tight groups give three zeros, then a gap, and the eigengap says 3."""
    rng = np.random.default_rng(0)
    points = np.concatenate([centre + 0.01 * rng.standard_normal((12, 4)) for centre in np.eye(4)[:3] * 10])
    values, vectors = spectrum(points, neighbors=5, count=6)
    np.testing.assert_allclose(values[:3], 0.0, atol=1e-9)
    assert values[3] > 0.3 and vectors.shape == (36, 6)
    assert eigengap(values, 5) == 3


def test_the_sparse_spectrum_of_a_larger_class_counts_components_too():
    """Above 300 maps the spectrum comes from sparse Lanczos (eigsh), which must find a repeated zero as well."""
    rng = np.random.default_rng(1)
    points = np.concatenate([centre + 0.01 * rng.standard_normal((100, 6)) for centre in np.eye(6)[:4] * 10])
    values, _ = spectrum(points, neighbors=10, count=9)
    np.testing.assert_allclose(values[:4], 0.0, atol=1e-8)
    assert values[4] > 0.05 and eigengap(values, 8) == 4


def test_the_sparse_spectrum_equals_the_dense_laplacians():
    """Above 300 maps the eigenvalues come from D^-1/2 A D^-1/2 applied as a product (no Laplacian built); they
    must equal those of SciPy's normalised Laplacian of the same symmetric kNN graph, by dense eigh."""
    import scipy.sparse as sparse
    from scipy.sparse.csgraph import laplacian
    from sklearn.neighbors import kneighbors_graph

    points = np.random.default_rng(2).standard_normal((400, 8)).astype(np.float32)
    values, vectors = spectrum(points, neighbors=10, count=6)
    graph = kneighbors_graph(points, n_neighbors=10, include_self=False)
    lap = laplacian(sparse.csr_matrix(((graph + graph.T) > 0).astype(np.float64)), normed=True).toarray()
    np.testing.assert_allclose(values, np.linalg.eigvalsh(lap)[:6], atol=1e-8)
    np.testing.assert_allclose(lap @ vectors, vectors * values, atol=1e-6)  # and they are its eigenvectors


def test_not_an_image_run_is_a_named_error(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        spray(tmp_path / "missing")
    with pytest.raises(InputError, match="no summary.csv"):
        spray(SAMPLE)
    (tmp_path / "summary.csv").write_text("input,prediction,target,relevance\na.png,1,1,\n")
    with pytest.raises(InputError, match="no relevance arrays"):
        spray(tmp_path)
    result = CliRunner().invoke(main, ["spray", str(SAMPLE)])
    assert result.exit_code == 5 and "lrp explain" in result.output


def test_bad_options_and_missing_scikit_learn(runs, monkeypatch):
    with pytest.raises(UsageError, match="no inputs in class"):
        spray(runs["plain"], classes=["eleven"], write=False)
    with pytest.raises(UsageError, match="clusters"):
        spray(runs["plain"], clusters=0, write=False)
    assert CliRunner().invoke(main, ["spray", str(runs["plain"]), "--clusters", "many"]).exit_code == 2
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ModelError) as caught:  # a missing extra: exit 4, as for the hf, ray and onnx extras
        spray(runs["plain"], write=False)
    assert "lrpcli[spray]" in caught.value.hint
    refused = CliRunner().invoke(main, ["spray", str(runs["plain"])])
    assert refused.exit_code == 4 and "pip install 'lrpcli[spray]'" in refused.output, refused.output
