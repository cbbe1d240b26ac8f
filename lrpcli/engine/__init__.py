"""The engine: LRP over a model's operator graph, independent of where the model came from.

graph.py (the IR: nodes, refs, the graph), capture and the fx -> graph builder, ops.py (what each ATen op
is for LRP), passes/ (canonizers, the transformer passes, the norms), transposes.py, rules/, composite.py
(which rule for which layer) and explainer.py (the walk, Explainer, explain, Explanation).

May import: the ground (errors, limits, registry, outputs) and render (an Explanation draws its heatmap as
``lrp explain`` does). Never sources, data, runs, evaluate, report or cli: models reach the engine as
objects, and the disk cache of captured graphs plugs in through ``Explainer.graph_store``.
"""
