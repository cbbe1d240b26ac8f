"""Input data: image folders (images.py), rows (tabular.py: CSV and the row and column batches;
columnar.py: pyarrow's readers and writers, Parquet, Arrow; jsonl.py: JSON lines; chunks.py: stdin in
line-aligned chunks) and texts with their tokenizers (text.py).

May import: the ground (errors, limits, registry, outputs). Nothing of the engine: data becomes tensors
here and meets a model only in runs.
"""
