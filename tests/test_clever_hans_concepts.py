"""The README walkthrough's `lrp concepts` step on the Clever Hans sample (issue 29 item 1), run word for word.

sample_models/clever_hans_digits: 24 of its 60 sevens carry a planted white 4x4 square in the top-left corner,
which the model learnt to use (patched.csv is the ground truth). Concept Relevance Propagation must find the
channel that looks at it, and relevance maximisation must show the patched images as that channel's references.

Checks, against the known patch labels and the known patch region (not against lrpcli's own numbers):
- the most relevant channel at features.6 is the same one (CHANNEL) for every patched 7 (concepts.csv);
- its conditional heatmap holds most of its |R| inside the patch for every patched 7, and little for the clean
  7s (measured: 57-65 % of |R| for the patched, at most 18 % for the clean, on 2.4 % of the image's area);
- its K most relevant references over all 150 images are patched 7s (precision 8/8), with their crop in the
  corner; its most active references are too (it is a patch detector), while for channel 0 (the clean 7s'
  most relevant channel) relevance picks 7s where activation picks 5s as well: relevance maximisation
  answers "what did the decision use", activation "what excites the channel".
Measured on the shipped model. On the sample made without the decoys (make_clever_hans_sample.py with
DECOYS = 0: a model that all but ignores the patch) all three checks fail: the patched 7s' most relevant channel
is channel 0, the clean 7s' one, and channel 18's most relevant references are not the patched images.
"""

from __future__ import annotations

import csv
import glob
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_support import lrp

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "sample_models/clever_hans_digits"
LAYER, CHANNEL, SHAPE_CHANNEL, K = "features.6", 18, 0, 8
# the README's commands, as it shows them (run from the repository's root; `hans` is the walkthrough's folder)
COMMANDS = [
    f"lrp concepts {SAMPLE}/model.yaml {SAMPLE}/images/7_*.png --layer {LAYER} --top 3 -o hans",
    f"lrp concepts {SAMPLE}/model.yaml {SAMPLE}/images --layer {LAYER} --reference {K} --channels {CHANNEL},{SHAPE_CHANNEL} -o hans",
]
PATCH = (slice(0, 5), slice(0, 5))  # the 4x4 patch and the one-pixel rim the first 3x3 convolution spreads it to


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def truth() -> dict[str, tuple[int, int]]:
    """File name -> (digit, patched)."""
    return {Path(r["file"]).name: (int(r["label"]), int(r["patched"])) for r in read_csv(ROOT / SAMPLE / "patched.csv")}


def patch_share(heat: np.ndarray) -> float:
    """The share of |R| that lies in the patch region."""
    magnitude = np.abs(heat).reshape(heat.shape[-2:]) if heat.ndim == 3 else np.abs(heat)
    return float(magnitude[PATCH].sum() / magnitude.sum())


def shell_words(command: str) -> list[str]:
    """The arguments bash passes: split, and each glob expanded (sorted), from the current folder."""
    words = []
    for word in shlex.split(command)[1:]:
        words += sorted(glob.glob(word)) if "*" in word else [word]
    return words


@pytest.fixture(scope="module")
def hans(tmp_path_factory) -> Path:
    """The two commands run in a folder where sample_models/ is the repository's (as from its root)."""
    folder = tmp_path_factory.mktemp("walkthrough")
    (folder / "sample_models").symlink_to(ROOT / "sample_models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for command in COMMANDS:
            run = lrp(*shell_words(command))
            assert run.code == 0, run.describe()
    return folder / "hans"


def test_every_patched_seven_has_the_same_most_relevant_channel(hans):
    known = truth()
    best: dict[str, tuple[float, int]] = {}
    targets = {}
    for row in read_csv(hans / "concepts.csv"):
        assert row["layer"] == LAYER
        targets[row["input"]] = row["target"]  # the prediction (one clean 7 is called 3)
        value = (float(row["relevance"]), -int(row["channel"]))
        best[row["input"]] = max(best.get(row["input"], value), value)
    assert sorted(best) == sorted(name for name, (digit, _) in known.items() if digit == 7)
    top = {name: -channel for name, (_, channel) in best.items()}
    assert {targets[name] for name in top if known[name][1]} == {"7"}
    assert {top[name] for name in top if known[name][1]} == {CHANNEL}
    assert sum(top[name] == CHANNEL for name in top if not known[name][1]) <= 3  # the clean 7s use other channels


def test_that_channels_conditional_heatmap_lies_in_the_patch(hans):
    """Patched 7s: the map the CLI drew (CHANNEL is their top channel). Clean 7s: CHANNEL's map through the
    Python API, on pixels preprocessed here as the spec says ((pixel / 255 - 0.5) / 0.5)."""
    import lrpcli

    known = truth()
    patched = [name for name, (digit, flag) in known.items() if digit == 7 and flag]
    clean = sorted(name for name, (digit, flag) in known.items() if digit == 7 and not flag)
    shares = [patch_share(np.load(hans / "concepts" / Path(name).stem / LAYER / f"{CHANNEL}.npy")) for name in patched]
    pixels = np.stack([np.asarray(Image.open(ROOT / SAMPLE / "images" / name).convert("L"), dtype=np.float32) for name in clean])
    x = torch.from_numpy((pixels / 255 - 0.5) / 0.5)[:, None]
    found = lrpcli.concepts(str(ROOT / SAMPLE / "model.yaml"), x, LAYER, target=7, channels=[CHANNEL])
    clean_shares = [patch_share(heat) for heat in found.maps[:, 0]]
    assert len(shares) == 24 and len(clean_shares) == 36
    assert min(shares) > 0.45 and max(clean_shares) < 0.25, (min(shares), max(clean_shares))


def test_its_most_relevant_references_are_the_patched_images(hans):
    known = truth()
    rows = read_csv(hans / "references.csv")

    def ranked(channel: int, kind: str) -> list[dict[str, str]]:
        chosen = [r for r in rows if int(r["channel"]) == channel and r["kind"] == kind]
        return sorted(chosen, key=lambda r: int(r["rank"]))

    relevant = ranked(CHANNEL, "relevance")
    assert len(relevant) == K and all(known[r["input"]][1] for r in relevant)  # precision K/K
    for row in relevant:  # the crop holding 80 % of its positive conditional relevance: the corner
        assert int(row["top"]) == 0 and int(row["left"]) == 0 and int(row["bottom"]) <= 12 and int(row["right"]) <= 12, row
        assert (hans / row["crop"]).is_file()
    active = ranked(CHANNEL, "activation")
    assert sum(known[r["input"]][1] for r in active) >= K - 1  # a patch detector: most active on the patch too
    # the clean 7s' channel: relevance ranks the 7s it decided; activation ranks what excites it, other digits too
    assert all(known[r["input"]][0] == 7 for r in ranked(SHAPE_CHANNEL, "relevance"))
    assert any(known[r["input"]][0] != 7 for r in ranked(SHAPE_CHANNEL, "activation"))
    html = (hans / "concepts.html").read_text(encoding="utf-8")
    assert all(r["crop"] in html for r in relevant)


def test_the_readme_shows_these_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert command in readme, command
