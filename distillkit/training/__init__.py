"""Training students from cached teacher outputs: one sub-package per task (``dune``: feature distillation from
teacher-feature stores; ``pointmap``: scene-specific pointmap students from DUSt3R scene stores), the task registry
(``tasks``: each task's config, options, runner, report and checkpoint loader) and what the tasks share: ``run``
(output folder, resume with a spec check, checkpoint cadence, metrics.json, loss curve), ``checkpoint`` (the one
safe checkpoint format: save, load with weights_only, partial weight loading), ``distributed`` (torchrun ranks) and
``optim`` (AdamW groups, warm-up + cosine schedule)."""
