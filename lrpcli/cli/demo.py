"""A first run: explain a small reference model on a random batch and report conservation.

``python -m lrpcli.cli.demo`` proves an install works end to end (capture, rules, engine).
"""

from __future__ import annotations

import sys

import torch

from ..architectures import MiniVGG
from ..engine import explain


def main() -> int:
    torch.manual_seed(0)
    model = MiniVGG(width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    for composite in ("lrp_0", "epsilon_plus_flat", "epsilon_gamma_box"):
        result = explain(model, x, composite)
        logits = result.outputs.gather(1, result.targets[:, None]).squeeze(1)
        sums = result.relevance.flatten(1).sum(1)
        for i in range(x.shape[0]):
            print(
                f"{composite:<20} sample {i}: class {int(result.targets[i])}, "
                f"logit {float(logits[i]):+.4f}, relevance sum {float(sums[i]):+.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
