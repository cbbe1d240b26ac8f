"""Runs: jobs over many inputs, each writing what ``lrp`` promises (files written atomically, resumable,
shardable): images.py (image folders: heatmaps, relevance arrays, summary), rows.py (CSV, JSON lines,
Parquet rows in, relevance rows out), texts.py, compare.py, conservation.py (the CI gate), inspect.py
(which rule hits which layer), shards.py (manifests, locks, merge), concepts.py (Concept Relevance
Propagation and relevance maximisation). Next: generation, SpRAy, the Ray executor.

May import every layer below: engine, sources, data, render, report, evaluate and the ground. Never cli.
"""
