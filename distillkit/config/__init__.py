"""Run configurations (pydantic): the same models back the CLI, the Prefect flow parameters and YAML files.

``common`` (strict base model, YAML files, image sizes, secrets), ``cache`` (feature caching), ``scenes`` (DUSt3R
scene stores). Each training task keeps its own config in ``distillkit.training.<task>.config``; the registry of
tasks (``distillkit.training.tasks``) picks one by ``task:``.
"""
