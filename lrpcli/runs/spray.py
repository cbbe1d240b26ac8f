"""SpRAy (Lapuschkin et al., Nature Communications 2019): the strategies a model uses across a class, from the
relevance maps an image run left in its output folder.

Per class (the prediction, or the explained target) every input's map is summed over channels, pooled to a
``grid`` x ``grid`` grid (so that a strategy, not a pixel offset, makes two maps alike) and scaled to unit
length; a symmetric k-nearest-neighbour graph (sparse: memory grows with inputs x k, not inputs²) gives the
normalised graph Laplacian, whose smallest eigenvalues are the spectrum: a gap after the k-th says k groups
(``clusters="auto"``). The clusters are k-means on the rows of the first k eigenvectors (Ng, Jordan and
Weiss 2001); the 2-D layout is the Laplacian eigenmap (eigenvectors 1 and 2). A small, well-separated cluster
is a distinct strategy, often a spurious one (the Clever Hans of the paper).

The arrays are read one at a time from ``relevance/*.npy`` as the summaries list them (plain, resumed,
sharded or merged runs alike); only the pooled grids are held. scikit-learn and SciPy do the graph work:
they come with the ``spray`` extra (without it: a ModelError, exit 4, like the other missing extras). The
library never prints: errors are raised.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelError, UsageError
from ..outputs import file_labels, output_errors, save_array, write_atomic, write_json

SPRAY = "spray"  # OUT/spray/: clusters.csv, eigenvalues.csv, spray.json, <class>/cluster-<k>.npy and .png, <class>/layout.png
SUMMARY = "spray.json"  # per class: its folder, cluster sizes, eigenvalues (read by the report page)
INSTALL_HINT = "pip install 'lrpcli[spray]' (scikit-learn)"
MAX_AUTO_CLUSTERS = 8


@dataclass
class ClassSpray:
    """One class's analysis: its inputs in order, their cluster and 2-D position, the spectrum and the clusters' mean maps."""

    name: str
    inputs: list[str]
    labels: np.ndarray  # cluster per input
    layout: np.ndarray  # (inputs, 2)
    eigenvalues: np.ndarray  # ascending, of the normalised graph Laplacian
    means: dict[int, np.ndarray] = field(default_factory=dict)  # cluster -> mean relevance map (H, W)

    @property
    def clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.clusters).tolist()


@dataclass
class SprayResult:
    """What ``spray`` found, per class; ``rows`` is clusters.csv as dicts (input, class, cluster, x, y)."""

    classes: dict[str, ClassSpray]
    by: str
    left_out: int = 0  # inputs whose relevance array was missing, unreadable or of another size

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [
            {"input": name, "class": cls.name, "cluster": int(label), "x": float(x), "y": float(y)}
            for cls in self.classes.values()
            for name, label, (x, y) in zip(cls.inputs, cls.labels, cls.layout)
        ]


def _sklearn():
    try:
        import scipy.sparse  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"lrp spray needs scikit-learn, which is not installed ({exc})", hint=INSTALL_HINT) from exc


def _run_rows(out: Path, by: str) -> list[tuple[str, str, str]]:
    """(group, input, relevance path) per input of the run: its row for the prediction (else its first), or with
    ``by="target"`` every row, grouped by its target. The summaries are read a row at a time; only these three
    strings are kept per row."""
    from ..report.images import summary_files, summary_rows

    if not out.is_dir():
        raise InputError(f"{out} is not a folder", hint="give the output folder of an `lrp explain` image run (its -o)")
    summaries = summary_files(out)
    if not summaries:
        raise InputError(f"{out}: no summary.csv: not the output folder of a finished `lrp explain` image run",
                         hint="run `lrp explain MODEL IMAGES -o OUT` (or `lrp merge` its shards), then `lrp spray OUT`")
    found: list[tuple[str, str, str]] = []
    chosen: dict[str, tuple[bool, int]] = {}  # input -> (its kept row is for the prediction, where it is in found)
    for row in summary_rows(summaries):
        relevance = row.get("relevance") or ""
        if by == "target":
            found.append((row.get("target_label") or row.get("target", ""), row["input"], relevance))
            continue
        for_prediction = row.get("target") == row.get("prediction")
        entry = (row.get("prediction_label") or row.get("prediction", ""), row["input"], relevance)
        first = chosen.get(row["input"])
        if first is None:
            chosen[row["input"]] = (for_prediction, len(found))
            found.append(entry)
        elif for_prediction and not first[0]:
            chosen[row["input"]] = (True, first[1])
            found[first[1]] = entry
    if not any(relevance for _, _, relevance in found):
        raise InputError(f"{out}: the run wrote no relevance arrays (relevance/*.npy), which spray clusters",
                         hint="run `lrp explain` on images without --no-arrays (rows and texts have no maps to cluster)")
    return found


def _class_order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _inside(out: Path, relative: str) -> Path | None:
    root = out.resolve()
    path = (root / relative).resolve() if relative and not Path(relative).is_absolute() else None
    return path if path is not None and root in path.parents and path.is_file() else None


def _load_map(path: Path) -> np.ndarray | None:
    from ..render.heatmaps import relevance_map

    try:
        heat = relevance_map(np.load(path, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError):
        return None
    return heat if heat.ndim == 2 and np.isfinite(heat).all() else None


def pool(heat: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) -> (grid * grid,) sums over near-equal blocks (any H, W >= 1), scaled to unit length (all zero stays zero)."""
    rows = np.linspace(0, heat.shape[0], min(grid, heat.shape[0]) + 1).astype(int)[:-1]
    cols = np.linspace(0, heat.shape[1], min(grid, heat.shape[1]) + 1).astype(int)[:-1]
    pooled = np.add.reduceat(np.add.reduceat(heat, rows, axis=0), cols, axis=1).ravel()
    length = np.linalg.norm(pooled)
    return pooled / length if length > 0 else pooled


def spectrum(points: np.ndarray, neighbors: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the normalised Laplacian of the symmetric kNN graph, ``count`` of them."""
    import scipy.sparse as sparse
    from sklearn.neighbors import kneighbors_graph

    n = len(points)
    graph = kneighbors_graph(points, n_neighbors=min(neighbors, n - 1), mode="connectivity", include_self=False)
    graph = sparse.csr_matrix(graph.maximum(graph.T))  # symmetric: i and j are neighbours if either is the other's
    count = min(count, n)
    if n <= 300 or count >= n - 1:  # small: dense is exact and quick
        from scipy.sparse.csgraph import laplacian

        values, vectors = np.linalg.eigh(laplacian(graph, normed=True).toarray())
        return _tidy(values[:count]), vectors[:, :count]
    # larger: sparse Lanczos (memory ~ n * (k + 20)). L = I - D^-1/2 A D^-1/2, so the smallest eigenvalues of L are
    # 1 - the largest of D^-1/2 A D^-1/2, applied as a product (no scaled copy of the graph, no shift-invert)
    from scipy.sparse.linalg import LinearOperator, eigsh

    scale = 1.0 / np.sqrt(np.asarray(graph.sum(axis=1)).ravel())  # every node has a neighbour: degree >= 1

    operator = LinearOperator((n, n), matvec=lambda v: scale * (graph @ (scale * v.ravel())), dtype=np.float64)
    values, vectors = eigsh(operator, k=count, which="LA", v0=np.ones(n))
    order = np.argsort(1.0 - values)
    return _tidy(1.0 - values[order]), vectors[:, order]


def _tidy(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a normalised Laplacian lie in [0, 2]; round-off below 1e-12 is a zero."""
    values = np.clip(values, 0.0, 2.0)
    values[values < 1e-12] = 0.0
    return values


def eigengap(eigenvalues: np.ndarray, most: int) -> int:
    """The number of clusters the spectrum suggests: k (1..most) where the gap λ_k − λ_{k−1} is largest."""
    gaps = np.diff(eigenvalues[: most + 1])
    return int(np.argmax(gaps)) + 1 if len(gaps) else 1


def _cluster(points: np.ndarray, clusters: int | str, neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    n = len(points)
    if n < 3:
        return np.zeros(n, dtype=int), np.zeros((n, 2)), np.zeros(min(n, 1))
    wanted = MAX_AUTO_CLUSTERS if clusters == "auto" else int(clusters)
    values, vectors = spectrum(points, neighbors, max(wanted + 1, 3))
    k = eigengap(values, min(wanted, n - 1)) if clusters == "auto" else min(wanted, n)
    layout = vectors[:, 1:3]
    embedding = vectors[:, :k]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding) if k > 1 else np.zeros(n, dtype=int)
    # clusters numbered by size, largest first: cluster 0 is the common strategy
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    renumber = np.empty(k, dtype=int)
    renumber[order] = np.arange(k)
    return renumber[labels], layout, values


def spray(
    out: str | Path,
    *,
    by: str = "prediction",
    clusters: int | str = "auto",
    grid: int = 8,
    neighbors: int = 10,
    classes: list[str] | None = None,
    seed: int = 0,
    write: bool = True,
    cmap: str = "bwr",
) -> SprayResult:
    """Cluster the relevance maps of the image run in ``out`` per class (SpRAy); with ``write``, into OUT/spray/.

    ``by``: ``prediction`` (each input once, in its predicted class) or ``target`` (every explained row, by its
    target); ``clusters``: a number or ``auto`` (the eigengap, at most 8); ``grid``: cells a side the maps are
    pooled to; ``neighbors``: k of the k-nearest-neighbour graph; ``classes``: only these (names as in
    summary.csv)."""
    if by not in ("prediction", "target"):
        raise UsageError(f"by must be 'prediction' or 'target', not {by!r}")
    if clusters != "auto" and not (isinstance(clusters, int) and not isinstance(clusters, bool) and clusters >= 1):
        raise UsageError(f"clusters must be a whole number >= 1 or 'auto', not {clusters!r}")
    if not (isinstance(grid, int) and grid >= 1) or not (isinstance(neighbors, int) and neighbors >= 1):
        raise UsageError(f"grid and neighbors must be whole numbers >= 1 (got grid={grid!r}, neighbors={neighbors!r})")
    out = Path(out)
    groups: dict[str, list[tuple[str, str]]] = {}
    for group, name, relevance in _run_rows(out, by):
        groups.setdefault(group, []).append((name, relevance))
    if classes is not None:
        unknown = sorted(set(classes) - set(groups))
        if unknown:
            raise UsageError(f"no inputs in class(es) {', '.join(unknown)}", hint=f"the run's classes ({by}): {', '.join(sorted(groups))}")
        groups = {name: groups[name] for name in classes}
    _sklearn()
    result = SprayResult(classes={}, by=by)
    for group, members in sorted(groups.items(), key=lambda item: _class_order(item[0])):
        # one array in memory at a time; per map only its pooled grid (float32) and its row in members are kept
        points = np.empty((len(members), grid * grid), dtype=np.float32)
        kept: list[int] = []
        shape = None
        for index, (_, relevance) in enumerate(members):
            path = _inside(out, relevance)
            heat = _load_map(path) if path is not None else None
            if heat is None or (shape is not None and heat.shape != shape):
                result.left_out += 1
                continue
            shape = heat.shape
            pooled = pool(heat, grid)
            points[len(kept), : pooled.size] = pooled
            kept.append(index)
        if not kept:
            continue
        cells = pooled.size  # fewer than grid * grid where the maps are smaller than the grid
        labels, layout, values = _cluster(points[: len(kept), :cells], clusters, neighbors, seed)
        del points
        found = ClassSpray(group, [members[i][0] for i in kept], labels, layout, values)
        sums = {cluster: np.zeros(shape) for cluster in range(found.clusters)}  # a second pass: a running sum per cluster
        for index, label in zip(kept, labels):
            sums[int(label)] += _load_map(_inside(out, members[index][1]))
        found.means = {cluster: total / int((labels == cluster).sum()) for cluster, total in sums.items()}
        result.classes[group] = found
    if not result.classes:
        raise InputError(f"{out}: none of the run's relevance arrays could be read", hint="the arrays were removed or damaged: run `lrp explain` again")
    if write:
        write_spray(out, result, cmap)
    return result


def _csv(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_spray(out: Path, result: SprayResult, cmap: str = "bwr") -> Path:
    """OUT/spray/clusters.csv, eigenvalues.csv, spray.json and per class and cluster the mean map (.npy and .png)."""
    from ..render.heatmaps import save_heatmap
    from ..render.spray import save_layout

    folder = Path(out) / SPRAY
    with output_errors(out):
        folder.mkdir(parents=True, exist_ok=True)
        table = [["input", "class", "cluster", "x", "y"]] + [[r["input"], r["class"], r["cluster"], f"{r['x']:.6g}", f"{r['y']:.6g}"] for r in result.rows]
        write_atomic(folder / "clusters.csv", _csv(table))
        spectra = [["class", "index", "eigenvalue"]] + [
            [cls.name, i, f"{value:.9g}"] for cls in result.classes.values() for i, value in enumerate(cls.eigenvalues)
        ]
        write_atomic(folder / "eigenvalues.csv", _csv(spectra))
        labels = file_labels(list(result.classes))
        summary = {
            "by": result.by,
            "left_out": result.left_out,
            "classes": [
                {"name": cls.name, "folder": label, "inputs": len(cls.inputs), "sizes": cls.sizes(), "eigenvalues": [float(v) for v in cls.eigenvalues]}
                for label, cls in zip(labels, result.classes.values())
            ],
        }
        write_json(folder / SUMMARY, summary)  # what the report page shows
        for old in folder.iterdir():  # classes an earlier spray analysed and this one did not (--class)
            if old.is_dir() and not old.is_symlink() and old.name not in labels:
                for stale in [*old.glob("cluster-*.*"), old / "layout.png"]:
                    stale.unlink(missing_ok=True)
                if not any(old.iterdir()):
                    old.rmdir()
        for label, cls in zip(labels, result.classes.values()):
            (folder / label).mkdir(exist_ok=True)
            for stale in (folder / label).glob("cluster-*.*"):  # an earlier spray that found more clusters
                stale.unlink(missing_ok=True)
            save_layout(folder / label / "layout.png", cls.layout, cls.labels, f"class {cls.name}: {len(cls.inputs)} inputs, {cls.clusters} cluster(s)")
            for cluster, mean in cls.means.items():
                save_array(folder / label / f"cluster-{cluster}.npy", mean)
                save_heatmap(folder / label / f"cluster-{cluster}.png", mean, cmap=cmap, legend=True, min_side=128)
    return folder
