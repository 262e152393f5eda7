"""DUNE task: one ViT student co-distilled from several teachers' cached features (seed 001).

``config`` (TrainConfig), ``data`` (store groups, the run's teachers, teacher-balanced batches), ``normalize``
(standardisation, PHI-S), ``losses`` and ``objectives`` (per-teacher losses, data sharing, teacher drop),
``trainer`` (the training loop), ``evaluate`` (held-out metrics, the student rebuilt from its checkpoint),
``retrain`` (nightly fine-tuning with lineage), ``plots`` (loss curve, PCA views) and ``task`` (its plugs for the
task registry).
"""
