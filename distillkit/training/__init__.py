"""Training students from cached teacher outputs: one sub-package per task (``dune``: feature distillation from
teacher-feature stores; ``pointmap``: scene-specific pointmap students from DUSt3R scene stores), the task registry
(``tasks``) and what both tasks share: ``checkpoint`` (the one safe checkpoint format: save, load with
weights_only, partial weight loading) and ``optim`` (AdamW groups, warm-up + cosine schedule)."""
