"""Shared fixtures: small seeded models with non-trivial batch-norm statistics."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _graph_cache_of_this_run(tmp_path_factory):
    """The graph cache (lrpcli/sources/cache.py) of the test run lives in a folder of its own, never in ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("graph-cache")
    previous = os.environ.get("LRP_CACHE_DIR")
    os.environ["LRP_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LRP_CACHE_DIR", None)
    else:
        os.environ["LRP_CACHE_DIR"] = previous


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch-norm random statistics and affine parameters, so folding matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


@pytest.fixture
def mini_vgg():
    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(0)
    return MiniVGG(width=4).eval()


@pytest.fixture
def small_resnet():
    from lrpcli.sources.architectures import ResNet

    torch.manual_seed(1)
    return randomize_batchnorm(ResNet(layers=(1, 1), widths=(4, 8), num_classes=3))


@pytest.fixture
def small_vgg_bn():
    from lrpcli.sources.architectures import VGG

    torch.manual_seed(2)
    return randomize_batchnorm(VGG(cfg=(4, "M", 8, "M"), batch_norm=True, num_classes=5, hidden=16, pool_size=2))


#: heavy repeats of a check the default run already makes on another family or form: they run with `-m slow`
#: (`.ci/run`'s slow step) so the README's test run stays near 10 minutes on 2 cores. Each is "file::test[param]"
#: or "file::test" as pytest names it; a name no test has any more fails the run (see below), so the list cannot rot.
SLOW_REPEATS = {
    "tests/test_seq2seq_capture.py::test_eos_classifiers_explain_as_the_oracle_and_conserve_with_the_ledger[UMT5]",
    "tests/test_seq2seq_capture.py::test_eos_classifiers_explain_as_the_oracle_and_conserve_with_the_ledger[MBart]",
    "tests/test_seq2seq_capture.py::test_eos_classifiers_explain_as_the_oracle_and_conserve_with_the_ledger[PLBart]",
    "tests/test_seq2seq_capture.py::test_left_padded_causal_decoders_keep_their_padding_mask[MBart]",
    "tests/test_seq2seq_capture.py::test_left_padded_causal_decoders_keep_their_padding_mask[Blenderbot]",
    "tests/test_seq2seq_capture.py::test_a_t5_classifier_folder_explains_its_texts_as_the_api_does",
    "tests/test_mamba.py::test_a_hybrid_with_attention_and_padding_explains",
    "tests/test_mamba.py::test_falcon_mamba_and_mamba2_equal_the_oracle_too[falcon_mamba]",
    "tests/test_mamba.py::test_a_mamba_folder_explains_with_mambalrp_end_to_end[mamba2]",
    "tests/test_hybrid_masks.py::test_hybrid_explains_with_the_models_logits_and_a_closed_ledger[zamba2_left_padded]",
    "tests/test_hybrid_masks.py::test_hybrid_explains_with_the_models_logits_and_a_closed_ledger[jamba_left_padded]",
    "tests/test_hybrid_oracles.py::test_hybrid_equals_the_mambalrp_oracle[jamba]",
    "tests/test_hybrid_oracles.py::test_hybrid_equals_the_mambalrp_oracle[zamba2]",
    "tests/test_hybrid_oracles.py::test_hybrid_equals_the_mambalrp_oracle[falcon_h1]",
    "tests/test_hybrid_oracles.py::test_hybrid_equals_the_mambalrp_oracle[falcon_h1_rms_norm]",
    "tests/test_more_ops.py::test_transformers_family_explains[llama4]",
    "tests/test_more_ops.py::test_transformers_family_explains[modernbert_decoder]",
    "tests/test_more_ops.py::test_transformers_family_explains[bitnet]",
    "tests/test_more_ops.py::test_transformers_family_explains[wav2vec2_bert]",
    # Qwen3-Next's capture traces a 63-step loop; tests/test_held_gates.py captures it (mask rewrite included) by default
    "tests/test_export_rewrites.py::test_qwen3_next_linear_attention_mask_is_kept[False]",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark SLOW_REPEATS slow before `-m` selects (tryfirst: ahead of pytest's own marker selection)."""
    named = {item.nodeid: item for item in items}
    for nodeid in SLOW_REPEATS:
        if nodeid in named:
            named[nodeid].add_marker(pytest.mark.slow)
    collected_files = {item.nodeid.split("::")[0] for item in items}
    missing = [nodeid for nodeid in SLOW_REPEATS if nodeid.split("::")[0] in collected_files and nodeid not in named]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_REPEATS names tests that do not exist (renamed?): {missing}")
