"""Sources: what turns a user's file into a model the engine captures.

files.py (TorchScript, ``.pt2``, state dicts with their architecture, model specs), safety.py (what a file
or spec may make lrp run), cache.py (captured graphs on disk, never trusted as code or as a result),
architectures.py (the shipped reference nets), samples.py (the sample models' data), onnx.py (``.onnx``
files through onnx2torch, renamed and checked so that reading one runs nothing from it). Next: Hugging Face
folders, timm, Lightning checkpoints.

May import: the ground (errors, limits, registry, outputs) and the engine. Never data, runs, evaluate,
report, render or cli.
"""
