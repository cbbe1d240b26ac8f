"""Drawing: heatmaps and colour maps (heatmaps.py), matplotlib figures as data (charts.py), evaluation
curves (plots.py), texts with their words shaded (text.py).

May import: the ground (errors, limits, registry, outputs) and data (a text's words). Never the engine,
sources, runs, evaluate, report or cli; nothing here prints (the terminal's shaded texts are the CLI's).
"""
