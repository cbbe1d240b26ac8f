"""Input data: image folders (images.py) and CSV rows (tabular.py)."""
