"""Every architecture of transformers' Auto mappings, built tiny and explained (issue 27, item 6).

    python benchmarks/hf_zoo.py                              # everything, writes benchmarks/hf_zoo_results.md
    python benchmarks/hf_zoo.py --list                       # the keys (task:model_type)
    python benchmarks/hf_zoo.py --only causal:llama --only seq:bert --out /tmp/hf.md
    python benchmarks/hf_zoo.py --task image --jobs 2
    python benchmarks/hf_zoo.py --toy                        # three models, for CI (tests/test_benchmarks_run.py)

Tasks: the model classes of transformers' ``MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES`` (``seq``),
``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (``causal``, explained at the last position),
``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`` (``image``) and ``MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES``
(``audio``), in the installed transformers. Each is built from its config class's defaults with every size
attribute shrunk (two layers, width 32, two heads, a 256-token vocabulary, 32x32 images: ``shrink``), random weights
(seed 0), eval mode, a batch of two (8 token ids, the last one <eos> for classifiers whose config names one, a 32x32 image, 4000 audio samples or 16 feature frames). A config
that still makes more than ``MAX_PARAMETERS`` parameters is not run (``too large``). Sizes one family ties together
are set in ``FAMILY``, families that take another input than their task's in ``INPUTS``, each with its reason; where
transformers' own code fails whatever the config, ``UPSTREAM`` names the fault and the row's cause says so.

Models run in child processes, one after another (``--jobs`` children at once; a crash or a time-out costs that
model alone: the rest go on in a new child) and is explained once
through the Python API, ``lrpcli.explain(wrapper, x, composite)``, with lrpcli's own choice of composite for a
Hugging Face folder of that config (``attnlrp`` for transformers, else ``epsilon_plus_flat``). Outcomes:

- ``explains``: relevance came back. The row says whether it is finite, the input relevance's sum over the target
  logit (per sample, the worse of the two: attnlrp is not exactly conservative, but far from 1 means lost relevance),
  how far the captured graph's logits are from the model's own (largest difference over the largest |logit|), and the
  time of one explain call after the capture.
- ``export``: torch.export could not capture the model (a torch capture limit; the cause names the guard).
- ``rule``: an op without an LRP rule (the cause names the op): lrpcli's to add.
- ``lrpcli``: another lrpcli error (the cause is its message).
- ``error``: a raw exception from inside lrpcli: lrpcli should name it.
- ``model``: the model's own forward fails on this input (nothing of lrpcli's ran), ``build``: the tiny config does
  not build, ``too large``, ``timeout``, ``crash``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "hf_zoo_results.md"
TASKS = {
    "seq": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "causal": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "image": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "audio": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
}
TOY = ("seq:bert", "causal:llama", "image:vit")
MAX_PARAMETERS = 20_000_000
TIMEOUT = 240
BATCH, TOKENS, IMAGE, SAMPLES, FRAMES = 2, 8, 32, 4000, 16
VOCABULARY = 256

#: size attributes and the small value each gets where the config has it as an int
SMALL = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "n_embed": 32, "dim": 32, "embed_dim": 32, "emb_dim": 32,
    "word_embed_proj_dim": 32, "pooler_hidden_size": 32, "rotary_dim": 8, "entity_vocab_size": 64, "entity_emb_size": 32, "embedding_size": 32, "projection_dim": 32, "d_embed": 32, "hidden_dim": 64,
    "intermediate_size": 64, "ffn_dim": 64, "d_ff": 64, "n_inner": 64, "ffn_hidden_size": 64, "mlp_dim": 64,
    "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
    "num_decoder_layers": 2, "num_encoder_layers": 2,
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "num_key_value_heads": 1, "multi_query_group_num": 1, "num_kv_heads": 1,
    "head_dim": 16, "d_kv": 16, "kv_channels": 16,
    "vocab_size": VOCABULARY, "max_position_embeddings": 64, "n_positions": 64, "n_ctx": 64, "max_seq_len": 64,
    "image_size": IMAGE, "patch_size": 8, "num_channels": 3,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_topk": 2,
    "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "state_size": 8, "d_state": 8, "expand": 2, "conv_kernel": 4, "time_step_rank": 4, "n_groups": 1,
    "num_mel_bins": 16, "feature_size": 16, "input_feat_per_channel": 16,
    "tdnn_dim": None, "proj_codevector_dim": 16, "codevector_dim": 16, "classifier_proj_size": 16,
    "conv_dim": None, "conv_kernel_sizes": None,
    "window_size": 2, "attention_hidden_size": 32,  # Swin's windows on a 4x4 patch grid; RWKV's attention width
}
#: list attributes (per stage) and their small values
SMALL_LISTS = {
    "depths": [1, 1], "hidden_sizes": [16, 32], "num_heads": [2, 2], "embed_dims": [16, 32], "embed_dim_list": [16, 32],
    "sr_ratios": [2, 1], "sequence_reduction_ratios": [2, 1], "mlp_ratios": [2, 2], "strides": [4, 2], "patch_sizes": [4, 2], "kernel_sizes": [3, 3],
    "num_attention_heads": [1, 2], "num_encoder_blocks": 2, "layer_types": None, "block_types": None,
}
#: sizes a default config leaves None ("derive it") that the model still reads as a number (HunYuan, Ministral's
#: head_dim; Nemotron's key/value heads; dots1's experts): given the small value too
FILL = ("head_dim", "num_key_value_heads", "n_routed_experts", "n_shared_experts", "num_experts_per_tok")
#: constructor arguments for default configs that do not build alone (model_type: arguments)
CONFIG_ARGUMENTS = {
    "phi4_multimodal": {"vision_config": {}, "audio_config": {}},  # its default makes a vision config and drops it
}
#: per-layer type lists: shrunk to one layer of each type (a hybrid keeps an attention and a mamba layer)
PER_LAYER = ("layer_types", "block_types", "layers_block_type")
#: sizes one family ties to others, for the small widths above (model_type: {attribute: value}); a key
#: task:model_type sets its class alone, after shrink
FAMILY = {
    "lilt": {"hidden_size": 48},  # six box embeddings of hidden_size // 6 each make hidden_size again
    "layoutlmv3": {"coordinate_size": 4, "shape_size": 8},  # 4 coordinates + 2 shapes = hidden_size
    "codegen": {"n_head": 4},  # CodeGen splits its heads over mp_num = 4 partitions
    "funnel": {"block_sizes": [1, 1], "block_repeats": [1, 1]},  # its layer count is the blocks' sum
    "reformer": {"attn_layers": ["local", "lsh"], "axial_pos_shape": (8, 8), "axial_pos_embds_dim": (16, 16),
                 "local_attn_chunk_length": 8, "lsh_attn_chunk_length": 8},  # axial factors: the width, 64 positions
    "transfo-xl": {"cutoffs": [64, 128], "tie_projs": [False, True, True]},  # adaptive-softmax clusters inside the
    # small vocabulary, one projection flag per cluster
    "jamba": {"use_mamba_kernels": False},  # the CUDA kernels by default
    "mamba2": {"head_dim": 32},  # heads x head_dim = expand x width
    "bamba": {"mamba_n_heads": 2, "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_d_state": 8},
    # Falcon-H1's Mamba sizes have their own names (default: a chunked scan with 16 GiB products, killed for memory)
    "falcon_h1": {"mamba_d_ssm": 64, "mamba_n_heads": 2, "mamba_d_head": 32, "mamba_d_state": 8},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"], "mamba_n_heads": 2, "mamba_d_head": 32, "mamba_n_groups": 1,
                         "mamba_d_state": 8},  # the default layer types (None) fail its own lookup
    "whisper": {"max_source_positions": 8},  # Whisper takes exactly 2 x max_source_positions mel frames
    "mobilevit": {"hidden_sizes": [16, 24, 32], "patch_size": 2},  # three transformer stages; 2x2 unfold patches (its
    # own default: an 8x8 patch is larger than the 4x4 maps of a 32x32 image)
    "mobilevitv2": {"patch_size": 2, "image_size": 64},  # 2x2 unfold patches, as MobileViT, on a 2x2 map after its
    # 32x downsampling of a 64x64 image
    "cvt": {"cls_token": [False, True]},  # the classifier reads the last stage's cls token
    "efficientformer": {"resolution": 4},  # the last stage's grid: 32 / 4 (stem) / 2 (one downsample)
    "hgnet_v2": {"stem_channels": [3, 16, 16], "stage_in_channels": [16, 32], "stage_mid_channels": [16, 16],
                 "stage_out_channels": [32, 32], "hidden_sizes": [32, 32], "stage_numb_of_layers": [2, 2]},  # the
    # head reads hidden_sizes[-1], which must be the last stage's output channels
    "hiera": {"image_size": [IMAGE, IMAGE], "num_query_pool": 1, "masked_unit_size": [4, 4]},  # position embeddings
    # for 32x32; one query pooling between the two stages (its unit: 4x4 tokens)
    "audio-spectrogram-transformer": {"max_length": FRAMES, "frequency_stride": 4, "time_stride": 4},  # 16 frames of 16
    # mel bins in 3x3 patches
    "longcat_flash": {"num_key_value_heads": 2, "expert_ffn_hidden_size": 32, "zero_expert_num": 2},  # MLA: a key per
    # head; small experts
    "xlstm": {"hidden_size": 128, "embedding_dim": 128, "num_blocks": 2},  # its cache rounds q/k and v widths
    # (width x 0.5, x 1) up to multiples of 64, its layers do not: a width whose both are multiples
    "bit": {"num_groups": 2},  # group norms over the 4 and 8 bottleneck channels of the small widths
    "efficientnet": {"strides": [1, 2], "in_channels": [32, 16], "out_channels": [16, 24], "num_block_repeats": [1, 1],
                     "expand_ratios": [1, 6], "width_coefficient": 0.05, "depth_coefficient": 1.0},  # its first two
    # stages ('same' padding takes no stride 4); its top conv's 1280 channels x 0.05 are the 64 of hidden_dim
    "levit": {"patch_size": 16, "down_ops": [["Subsample", 8, 2, 4, 2, 2]]},  # its stem downsamples 16x; one
    # subsampling between the two stages
    "textnet": {"image_size": [IMAGE, IMAGE], "stem_out_channels": 16, "hidden_sizes": [16, 16, 32],
                "conv_layer_kernel_sizes": [[[3, 3], [1, 3]], [[3, 3], [3, 1]]], "conv_layer_strides": [[1, 2], [2, 1]]},
    # the stem's and each stage's output channels, two layers a stage
    "causal:reformer": {"is_decoder": True},  # (a key: that class alone) its LM head asserts a decoder
    "musicgen_decoder": {"num_codebooks": 1}, "musicgen_melody_decoder": {"num_codebooks": 1},  # ids come as
    # (batch x codebooks, length): with one codebook a batch of texts is a batch
    "mllama_text_model": {"rope_scaling": {"rope_type": "default"}},  # its rotary embedding reads rope_scaling, which
    # the default config leaves None
    "shieldgemma2": {"mm_tokens_per_image": 4, "yes_token_index": 3, "no_token_index": 4, "image_token_index": 5},
    # 2x2 pooled image tokens; its Yes/No and image tokens inside the small vocabulary
    "gemma3n_text": {"num_kv_shared_layers": 0, "vocab_size_per_layer_input": VOCABULARY, "hidden_size_per_layer_input": 8},
    "deepseek_v2": {"num_key_value_heads": 2}, "deepseek_v3": {"num_key_value_heads": 2},  # MLA: a key per head
    "zamba": {"use_mamba_kernels": False, "attention_hidden_size": 64, "attention_head_dim": 32, "n_mamba_heads": 2,
              "mamba_dt_rank": 2},  # the CUDA kernels by default; sizes derived from the width at construction
    "zamba2": {"use_mamba_kernels": False, "attention_hidden_size": 64, "attention_head_dim": 32, "n_mamba_heads": 2,
               "mamba_headdim": 32, "kv_channels": 16},  # derived from the width at construction
}


def keys() -> list[str]:
    from transformers.models.auto import modeling_auto

    found = []
    for task, name in TASKS.items():
        found.extend(f"{task}:{model_type}" for model_type in sorted(getattr(modeling_auto, name)))
    return found


def class_name(key: str) -> str:
    from transformers.models.auto import modeling_auto

    task, model_type = key.split(":", 1)
    name = getattr(modeling_auto, TASKS[task])[model_type]
    return name[0] if isinstance(name, (tuple, list)) else name


def _get(config: Any, name: str, default: Any = None) -> Any:
    try:  # some configs raise for what they do not have (XLNet's max_position_embeddings)
        return getattr(config, name, default)
    except Exception:
        return default


def _set(config: Any, name: str, value: Any) -> None:
    try:  # some sizes are read-only properties computed from others (Falcon's head_dim), or refuse (Funnel's layers)
        setattr(config, name, value)
    except (AttributeError, TypeError, NotImplementedError):
        pass


def _per_layer(types: list[Any], layers: int) -> list[Any]:
    """One layer of each type in order of first use, repeated to ``layers``: a hybrid keeps each kind of layer."""
    kinds = list(dict.fromkeys(types))
    return (kinds * layers)[:max(layers, len(kinds))]


def shrink(config: Any) -> Any:
    """The config with its sizes made tiny (see SMALL): what keeps 300 builds to minutes."""
    for name, value in SMALL.items():
        current = _get(config, name)
        if current is None and name in FILL and name in vars(config):
            _set(config, name, value)
        if value is None or isinstance(current, bool) or not isinstance(current, int):
            continue
        _set(config, name, value)
    if _get(config, "vocab_size", 0) is None:  # ESM's default: no vocabulary
        _set(config, "vocab_size", VOCABULARY)
    stages = None
    before = {name: len(value) for name, value in vars(config).items() if isinstance(value, (list, tuple))}
    for name, value in SMALL_LISTS.items():
        current = getattr(config, name, None)
        if value is None or not isinstance(current, (list, tuple)) or not current:
            continue
        stages = stages or len(value)
        setattr(config, name, list(value))
    if stages:  # the other per-stage lists (strides, paddings, ...) and the stage count follow: their first stages
        original = max((before.get(name, 0) for name in ("depths", "hidden_sizes", "embed_dims", "embed_dim", "depth")), default=0)
        for name, length in before.items():
            value = vars(config)[name]
            if length == original and length > stages and name not in SMALL_LISTS and not name.startswith(("stage_names", "out_")):
                config.__dict__[name] = type(value)(value[:stages])
        for name in ("num_stages", "num_encoder_blocks"):
            if isinstance(_get(config, name), int):
                _set(config, name, stages)
    if stages and isinstance(getattr(config, "stage_names", None), list):
        config.stage_names = ["stem"] + [f"stage{i + 1}" for i in range(stages)]
        if hasattr(config, "out_features"):
            config.out_features = [config.stage_names[-1]]
        if hasattr(config, "out_indices"):
            config.out_indices = [stages]
    for name in PER_LAYER:  # per-layer lists follow the layer count
        current = config.__dict__.get(name)
        layers = _get(config, "num_hidden_layers")
        if isinstance(current, list) and current and isinstance(layers, int):
            config.__dict__[name] = _per_layer(current, layers)
            config.num_hidden_layers = len(config.__dict__[name])
    if isinstance(_get(config, "hybrid_layer_ids"), list):  # Zamba2's hybrid layers, from its block types
        config.hybrid_layer_ids = [i for i, kind in enumerate(config.layers_block_type) if kind == "hybrid"]
    if isinstance(_get(config, "qk_rope_head_dim"), int) and _get(config, "head_dim") is not None:
        _set(config, "head_dim", config.qk_rope_head_dim)  # DeepSeek's rotary runs over the rope part alone
    if isinstance(_get(config, "qk_head_dim"), int) and isinstance(_get(config, "qk_nope_head_dim"), int):
        _set(config, "qk_head_dim", config.qk_nope_head_dim + config.qk_rope_head_dim)
    attention = _get(config, "attn_config")
    if attention is not None and hasattr(attention, "clip_qkv") and attention.clip_qkv is None:
        attention.clip_qkv = 8.0  # DBRX clamps q/k/v by it and fails on None (its released configs say 8)
    for name, value in FAMILY.get(getattr(config, "model_type", ""), {}).items():
        _set(config, name, value)
    for name in ("text_config", "vision_config", "audio_config", "encoder", "decoder"):
        inner = getattr(config, name, None)
        if inner is not None and hasattr(inner, "to_dict"):
            shrink(inner)
    encoder, decoder = getattr(config, "encoder", None), getattr(config, "decoder", None)
    if hasattr(decoder, "cross_attention_hidden_size") and hasattr(encoder, "hidden_size"):
        decoder.cross_attention_hidden_size = encoder.hidden_size  # T5Gemma's cross-attention reads the encoder
    if getattr(config, "is_encoder_decoder", False) and _get(config, "decoder_start_token_id") is None:
        config.decoder_start_token_id = 0  # T5's classifier needs it to shift its decoder's inputs
    if hasattr(config, "num_labels"):
        config.num_labels = 3
    if getattr(config, "pad_token_id", None) is None or getattr(config, "pad_token_id", 0) >= VOCABULARY:
        config.pad_token_id = 0
    for name in ("bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= VOCABULARY:
            setattr(config, name, 1)
    if hasattr(config, "_attn_implementation"):
        try:
            config._attn_implementation = "eager"
        except Exception:
            pass
    return config


#: models whose forward takes another input than their task's (model_type: (input, why)); ``example`` builds it
INPUTS = {
    "imagegpt": ("tokens", "an image as colour-cluster token ids (input_ids), not pixels"),
    "siglip2": ("patches", "flattened patches with their mask and grid shape, as its image processor gives them"),
    "shieldgemma2": ("prompt", "the image beside a prompt that holds its image tokens; its head reads .logits"),
    "audio-spectrogram-transformer": ("frames", "a spectrogram (frames, mel bins) under its input_values"),
    "aria_text": ("outputs", "its head reads .last_hidden_state from its inner model, so it runs with return_dict"),
}
#: failures of transformers 4.57's own code, whatever the config (model_type: what fails): the row keeps its
#: outcome and its cause says so
UPSTREAM = {
    "transfo-xl": "TransfoXLModel.forward calls arange(...).type_as(dtype=...), which takes a tensor, not a dtype",
    "speech_to_text_2": "_init_weights reads .weight of its sinusoidal position embedding, which holds .weights",
    "vit_hybrid": "_init_weights zeroes mask_token, which is None in the classifier (no use_mask_token)",
}


def _modules() -> Any:
    """Built lazily (the parent process never imports torch): torch Modules for the inputs of ``INPUTS``."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: Any, name: str = ""):
            super().__init__()
            self.model, self.name = inner, name

    class Named(Wrapped):
        """An audio classifier: its main input by name, logits out."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(**{self.name: x}, return_dict=False)[0]

    class Outputs(Wrapped):
        """A causal LM whose head needs its inner model's output object: the last position's logits."""

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).logits[:, -1]

    class Patches(Wrapped):
        """Siglip2: an image cut into its processor's patches (row by row, each patch (p, p, C) flattened)."""

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            b, c, h, w = image.shape
            p = self.model.config.vision_config.patch_size
            patches = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
            mask = torch.ones(patches.shape[:2], dtype=torch.long, device=image.device)
            shapes = torch.tensor([[h // p, w // p]] * b, device=image.device)
            return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes, return_dict=False)[0]

    class Prompt(Wrapped):
        """ShieldGemma2: a fixed prompt with the image's tokens, and the image; its (Yes, No) logits out."""

        def __init__(self, inner: Any):
            super().__init__(inner)
            config = inner.config
            ids = [1] + [config.image_token_index] * config.mm_tokens_per_image + list(range(6, 6 + TOKENS))
            self.register_buffer("prompt", torch.tensor([ids]), persistent=False)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=self.prompt.expand(image.shape[0], -1), pixel_values=image).logits

    return {"named": Named, "outputs": Outputs, "patches": Patches, "prompt": Prompt}


def example(task: str, config: Any, model: Any, generator: Any) -> tuple[Any, Any]:
    """The batch the sweep feeds ``model`` and the Module lrpcli explains: the task's usual input through
    lrpcli's own Hugging Face wrappers, or the input ``INPUTS`` names for the family."""
    import torch

    from lrpcli.sources import hf

    kind = INPUTS.get(getattr(config, "model_type", ""), ("", ""))[0]
    modules = _modules()
    if task in ("seq", "causal") or kind == "tokens":
        vocabulary = min(VOCABULARY, getattr(config, "vocab_size", VOCABULARY) or VOCABULARY)
        x = torch.randint(2, vocabulary, (BATCH, TOKENS), generator=generator)
        eos = getattr(config, "eos_token_id", None)
        if task == "seq" and isinstance(eos, int) and 0 <= eos < vocabulary:
            x[:, -1] = eos  # encoder-decoder classifiers (BART, T5) pool at the <eos> token: a text ends with one
        if kind == "outputs":
            return x, modules["outputs"](model).eval()
        return x, (hf.NextTokenLogits if task == "causal" else hf.Logits)(model).eval()
    if task == "image":
        channels = getattr(config, "num_channels", None) or getattr(getattr(config, "vision_config", None), "num_channels", 3)
        size = getattr(config, "image_size", None) or getattr(getattr(config, "vision_config", None), "image_size", IMAGE)
        size = size if isinstance(size, int) else IMAGE
        x = torch.randn(BATCH, channels, size, size, generator=generator)
        if kind in ("patches", "prompt"):
            return x, modules[kind](model).eval()
        return x, hf.ImageLogits(model).eval()
    if kind == "frames":
        x = torch.randn(BATCH, config.max_length, config.num_mel_bins, generator=generator)
    elif model.main_input_name == "input_features":
        stacked = getattr(config, "feature_projection_input_dim", None)  # Wav2Vec2-BERT: (frames, stacked mels)
        bins = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 16)
        shape = (BATCH, FRAMES, stacked) if stacked else (BATCH, bins, FRAMES)
        x = torch.randn(*shape, generator=generator)
    else:
        x = torch.randn(BATCH, SAMPLES, generator=generator)
    return x, modules["named"](model, model.main_input_name).eval()


def _first_line(exc: BaseException, limit: int = 220) -> str:
    """The exception's type and the first line of its message that says something (transformers' ImportErrors
    start with a blank line, then name the missing package)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()[:limit]


def _cause(model_type: str, exc: BaseException) -> str:
    """Why the model did not build or run: a known failure of transformers' own code first (``UPSTREAM``)."""
    if model_type in UPSTREAM:
        return f"transformers {_transformers_version()} bug: {UPSTREAM[model_type]} ({_first_line(exc, 120)})"
    return _first_line(exc)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def base_config(model_type: str, cls: Any) -> Any:
    """The default config of ``model_type`` (with ``CONFIG_ARGUMENTS``), or ``cls``'s own config class where the
    type's is a composite that needs its parts (MusicGen's decoder)."""
    import transformers

    mapped = transformers.CONFIG_MAPPING[model_type]
    try:
        return mapped(**CONFIG_ARGUMENTS.get(model_type, {}))
    except ValueError:
        wanted = getattr(cls, "config_class", None)
        if wanted is None or wanted is mapped:
            raise
        return wanted()


def build(key: str) -> tuple[Any, Any, int]:
    """The tiny config of ``key``, its model in eval mode (None if over ``MAX_PARAMETERS``) and its size."""
    import torch
    import transformers

    model_type = key.split(":", 1)[1]
    cls = getattr(transformers, class_name(key))
    config = shrink(base_config(model_type, cls))
    for name, value in FAMILY.get(key, {}).items():  # settings of one task's class
        _set(config, name, value)
    wanted = getattr(cls, "config_class", None)
    if wanted is not None and not isinstance(config, wanted) and isinstance(getattr(config, "text_config", None), wanted):
        config = config.text_config  # a text-only head of a multimodal type (Emu3ForCausalLM)
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in cls(config).parameters())
    except NotImplementedError:  # a constructor that copies a tensor's value (Apertus's xIELU): built for real
        size = sum(p.numel() for p in cls(config).parameters())
    if size > MAX_PARAMETERS:
        return config, None, size
    model = cls(config).eval()
    languages = getattr(config, "languages", None)
    if hasattr(model, "set_default_language") and languages:
        model.set_default_language(languages[0])  # X-MOD needs a language for its adapters
    return config, model, size


def run_child(key: str) -> dict[str, Any]:
    """Build, run and explain one model; one result row."""
    import torch

    import lrpcli
    from lrpcli.errors import LrpError, ModelError, UnsupportedOpError
    from lrpcli.sources import hf

    torch.manual_seed(0)
    torch.set_num_threads(1)
    task, model_type = key.split(":", 1)
    row: dict[str, Any] = {"key": key, "task": task, "model_type": model_type, "class": class_name(key)}
    try:
        config, model, size = build(key)
    except Exception as exc:
        return {**row, "outcome": "build", "cause": _cause(model_type, exc)}
    if model is None:
        return {**row, "outcome": "too large", "cause": f"{size / 1e6:.0f}M parameters after shrinking"}
    row["parameters"] = sum(p.numel() for p in model.parameters())
    try:
        x, wrapper = example(task, config, model, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = wrapper(x)
        if not isinstance(logits, torch.Tensor) or logits.shape[0] != BATCH:
            return {**row, "outcome": "model", "cause": f"the model's output is not (batch, classes): {type(logits).__name__}"}
    except Exception as exc:
        return {**row, "outcome": "model", "cause": _cause(model_type, exc)}
    composite = "attnlrp" if hf.is_transformer(config.to_dict()) else "epsilon_plus_flat"
    row["composite"] = composite
    try:
        start = time.perf_counter()
        result = lrpcli.explain(wrapper, x, composite)
        row["first_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        result = lrpcli.explain(wrapper, x, composite)
        row["time_s"] = round(time.perf_counter() - start, 3)
    except UnsupportedOpError as exc:
        return {**row, "outcome": "rule", "cause": _first_line(exc)}
    except ModelError as exc:
        capture = "torch.export could not capture" in exc.message or "could not convert the TorchScript" in exc.message
        return {**row, "outcome": "export" if capture else "lrpcli", "cause": _first_line(exc, 300)}
    except LrpError as exc:
        return {**row, "outcome": "lrpcli", "cause": _first_line(exc, 300)}
    except Exception as exc:
        return {**row, "outcome": "error", "cause": _first_line(exc, 300)}
    relevance = result.relevance.detach().double()
    targets = result.targets
    picked = logits.double().flatten(1)[torch.arange(BATCH), targets.flatten()]
    sums = relevance.reshape(BATCH, -1).sum(dim=1)
    ratio = sums / picked
    worst = ratio[(ratio - 1).abs().argmax()].item()
    scale = max(logits.double().abs().max().item(), 1e-12)
    graph_gap = (result.outputs.detach().double() - logits.double()).abs().max().item() / scale
    return {
        **row, "outcome": "explains", "finite": bool(torch.isfinite(relevance).all()), "sum_over_logit": round(worst, 4),
        "graph_gap": float(f"{graph_gap:.2e}"),
    }


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("time-out")


def run_children(keys: list[str], timeout: int) -> Any:
    """In a child process, one model after another, one JSON line each (a model over ``timeout`` s is a row)."""
    import gc
    import signal

    signal.signal(signal.SIGALRM, _timeout)
    for key in keys:
        signal.alarm(timeout)
        try:
            row = run_child(key)
        except TimeoutError:
            row = {"key": key, "task": key.split(":")[0], "model_type": key.split(":", 1)[1], "outcome": "timeout", "cause": f"over {timeout} s"}
        finally:
            signal.alarm(0)
        print(json.dumps(row), flush=True)
        gc.collect()


def run_keys(keys: list[str], timeout: int) -> list[dict[str, Any]]:
    """Run ``keys`` in child processes, several models each (importing torch and transformers once per child, not
    per model); a child that dies costs the model it was on (a row ``crash``) and the rest go to a new child."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    rows: list[dict[str, Any]] = []
    left = list(keys)
    while left:
        log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a child's warnings cannot fill it and stall it
        child = subprocess.Popen([sys.executable, __file__, "--children", ",".join(left), "--timeout", str(timeout)],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=str(ROOT))
        finished = []
        for line in child.stdout:  # one line a model, as each finishes: progress on stderr
            if line.startswith("{"):
                row = json.loads(line)
                finished.append(row)
                print(f"{row['key']:40s} {row['outcome']:9s} {row.get('cause', '')[:100]}", file=sys.stderr, flush=True)
        child.wait()
        log.seek(0)
        errors = log.read()
        log.close()
        rows.extend(finished)
        left = left[len(finished):]
        if left:  # the child died on left[0]
            key = left.pop(0)
            tail = (errors.strip().splitlines() or ["no output"])[-1][:220]
            rows.append({"key": key, "task": key.split(":")[0], "model_type": key.split(":", 1)[1], "outcome": "crash", "cause": f"exit {child.returncode}: {tail}"})
    return rows


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]], command: str, seconds: float) -> str:
    import torch
    import transformers

    counts = Counter(row["outcome"] for row in rows)
    built = [row for row in rows if row["outcome"] not in ("build", "too large")]
    explains = [row for row in built if row["outcome"] == "explains"]
    good = [row for row in explains if row.get("finite") and row.get("graph_gap", 1) <= 1e-4]
    lines = [
        "# transformers' Auto mappings, built tiny and explained",
        "",
        f"`{command}` on {datetime.date.today()} ({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {seconds / 60:.1f} min). How each model is built and what each outcome "
        "means: the docstring of benchmarks/hf_zoo.py.",
        "",
        f"**{len(explains)} of {len(built)} buildable architectures explain** ({len(good)} with finite relevance and the "
        f"captured graph's logits within 1e-4 of the model's); {len(rows)} keys in all.",
        "",
        "| outcome | models |",
        "|---|---:|",
    ]
    lines += [f"| {outcome} | {count} |" for outcome, count in counts.most_common()]
    by_task = Counter((row["task"], row["outcome"] == "explains") for row in built)
    lines += ["", "| task | buildable | explain |", "|---|---:|---:|"]
    for task in TASKS:
        lines.append(f"| {task} | {by_task[(task, True)] + by_task[(task, False)]} | {by_task[(task, True)]} |")
    causes = Counter((row["outcome"], row.get("cause", "")) for row in built if row["outcome"] != "explains")
    lines += ["", "## What stops the others, by cause", "", "| outcome | cause | models | which |", "|---|---|---:|---|"]
    for (outcome, cause), count in causes.most_common():
        which = ", ".join(row["key"] for row in built if row["outcome"] == outcome and row.get("cause", "") == cause)
        lines.append(f"| {outcome} | {_cell(cause)} | {count} | {which} |")
    lines += ["", "## Every model", "", "| key | class | outcome | finite | sum / logit | graph vs model | explain s | cause |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(
            f"| {row['key']} | {row.get('class', '')} | {row['outcome']} | {row.get('finite', '')} | {row.get('sum_over_logit', '')} "
            f"| {row.get('graph_gap', '')} | {row.get('time_s', '')} | {_cell(row.get('cause', ''))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="print the keys and stop")
    parser.add_argument("--only", action="append", default=[], help="a key (task:model_type); repeat for more")
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="only these tasks")
    parser.add_argument("--toy", action="store_true", help=f"only {', '.join(TOY)} (CI)")
    parser.add_argument("--jobs", type=int, default=1, help="models at a time (each in its own process)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds per model")
    parser.add_argument("--out", type=Path, default=None, help=f"the table (default {OUT.relative_to(ROOT)}; with --toy/--only: printed)")
    args = parser.parse_args(argv)
    if args.children:
        run_children(args.children.split(","), args.timeout)
        return 0
    chosen = list(TOY) if args.toy else args.only or keys()
    if args.task:
        chosen = [key for key in chosen if key.split(":")[0] in args.task]
    if args.list:
        print("\n".join(chosen))
        return 0
    started = time.perf_counter()
    jobs = max(1, args.jobs)
    with ThreadPoolExecutor(jobs) as pool:  # the keys dealt round-robin to ``jobs`` children
        parts = pool.map(lambda part: run_keys(part, args.timeout), [chosen[i::jobs] for i in range(jobs)])
        found = {row["key"]: row for part in parts for row in part}
    rows = [found[key] for key in chosen]
    command = "python benchmarks/hf_zoo.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    text = table(rows, command.strip(), time.perf_counter() - started)
    out = args.out or (None if (args.toy or args.only) else OUT)
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0 if all(row["outcome"] == "explains" for row in rows) or not args.toy else 1


if __name__ == "__main__":
    sys.exit(main())
