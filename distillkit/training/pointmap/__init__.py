"""Pointmap task: scene-specific students regressing DUSt3R's aligned world pointmaps (seed 000).

``config`` (students, training, ablations), ``job`` (one student per scene of a scene store, summary), ``trainer``
(the training loop), ``augment`` (exact crop / resize / flip), ``losses``, ``sampling`` (image and pixel samplers,
feature buffer), ``evaluate`` (predictions, held-out metrics, loading a student), ``metrics`` (L2, PnP-RANSAC
poses), ``ablation`` (grids of runs, table, plot), ``plots`` (curves, student vs teacher views) and ``task`` (its
plugs for the task registry). Resume, checkpoints, optimiser and schedule are shared with the DUNE task:
`distillkit.training.run`, `distillkit.training.checkpoint`, `distillkit.training.optim`.
"""
