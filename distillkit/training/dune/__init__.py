"""DUNE task: one ViT student co-distilled from several teachers' cached features (seed 001).

``config`` (TrainConfig), ``data`` (store groups and teacher-balanced batches), ``normalize`` (standardisation,
PHI-S), ``losses`` and ``objectives`` (per-teacher losses, data sharing, teacher drop), ``trainer`` (train/resume,
evaluation), ``retrain`` (nightly fine-tuning with lineage), ``plots`` (loss curve, PCA views).
"""
