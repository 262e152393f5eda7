"""Pointmap task: scene-specific students regressing DUSt3R's aligned world pointmaps (seed 000).

``config`` (students, training, ablations), ``job`` (one student per scene of a scene store, summary), ``trainer``
(training loop, evaluation), ``metrics`` (L2, PnP-RANSAC poses), ``plots`` (curves, student vs teacher views) and
the data, loss and ablation modules beside them.
"""
