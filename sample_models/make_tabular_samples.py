"""Reproduce the tabular sample models from scikit-learn's bundled data (no downloads).

    python sample_models/make_tabular_samples.py

- breast_cancer_mlp/: a bias-free MLP classifier (malignant / benign) on the 30
  breast-cancer features, so LRP-0 relevance sums exactly to the logit;
- diabetes_mlp/: an MLP regressor (with biases) of disease progression from the 10
  diabetes features.

Each folder gets model.ts (TorchScript), model.pt (state dict), model.yaml (spec for
the TorchScript file), model_state_dict.yaml (spec for the state dict + architecture),
and sample.csv (held-out rows with an id and the true label).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes

from lrpcli.sources.architectures import MLP

HERE = Path(__file__).resolve().parent


def split(n: int, seed: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[held_out:], order[:held_out]


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, epochs: int, lr: float) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    model.eval()


def save(folder: Path, model: torch.nn.Module, kwargs: dict, features: list[str], mean, std, label: str, classes, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(folder / "model.ts"))
    torch.save(model.state_dict(), folder / "model.pt")
    spec = {
        "model": "model.ts",
        "input": {
            "features": features,
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "id_col": "id",
            "label_col": label,
        },
        "composite": "epsilon",
    }
    if classes:
        spec["classes"] = classes
    (folder / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, width=120))
    state_spec = {"model": "model.pt", "arch": "lrpcli.architectures:MLP", "arch_kwargs": kwargs, **{k: v for k, v in spec.items() if k != "model"}}
    (folder / "model_state_dict.yaml").write_text(yaml.safe_dump(state_spec, sort_keys=False, width=120))
    with open(folder / "sample.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id"] + features + [label])
        writer.writerows(rows)


def breast_cancer() -> str:
    data = load_breast_cancer()
    features = [str(f) for f in data.feature_names]
    train_idx, test_idx = split(len(data.target), seed=0, held_out=100)
    mean, std = data.data[train_idx].mean(0), data.data[train_idx].std(0)
    standardise = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    torch.manual_seed(0)
    kwargs = {"in_features": 30, "hidden": [32, 16], "num_classes": 2, "bias": False}
    model = MLP(**kwargs)
    train(model, standardise(data.data[train_idx]), torch.tensor(data.target[train_idx]), torch.nn.functional.cross_entropy, 300, 1e-2)
    with torch.no_grad():
        accuracy = (model(standardise(data.data[test_idx])).argmax(1).numpy() == data.target[test_idx]).mean()
    rows = [[f"bc{i:03d}"] + [f"{v:g}" for v in data.data[i]] + [str(data.target_names[data.target[i]])] for i in test_idx]
    save(HERE / "breast_cancer_mlp", model, kwargs, features, mean, std, "diagnosis", [str(c) for c in data.target_names], rows)
    return f"breast_cancer_mlp: held-out accuracy {accuracy:.3f}"


def diabetes() -> str:
    data = load_diabetes(scaled=False)
    features = [str(f) for f in data.feature_names]
    train_idx, test_idx = split(len(data.target), seed=1, held_out=60)
    mean, std = data.data[train_idx].mean(0), data.data[train_idx].std(0)
    standardise = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    torch.manual_seed(0)
    kwargs = {"in_features": 10, "hidden": [32], "num_classes": 1, "bias": True}
    model = MLP(**kwargs)
    target = torch.tensor(data.target[train_idx], dtype=torch.float32)[:, None]
    train(model, standardise(data.data[train_idx]), target, torch.nn.functional.mse_loss, 2000, 1e-2)
    with torch.no_grad():
        predicted = model(standardise(data.data[test_idx]))[:, 0].numpy()
    truth = data.target[test_idx]
    r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    rows = [[f"db{i:03d}"] + [f"{v:g}" for v in data.data[i]] + [f"{data.target[i]:g}"] for i in test_idx]
    save(HERE / "diabetes_mlp", model, kwargs, features, mean, std, "progression", None, rows)
    return f"diabetes_mlp: held-out R^2 {r2:.3f}"


def main() -> None:
    torch.set_num_threads(1)
    for make in (breast_cancer, diabetes):
        print(make())


if __name__ == "__main__":
    main()
