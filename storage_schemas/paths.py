"""Every array path of a feature store's teacher groups, spelled once: the schema (`expected_arrays`), the writers,
the readers and the validator all build paths here, so they cannot drift apart."""

from __future__ import annotations

TEACHERS = "teachers"


def teacher(name: str) -> str:
    """The group of one teacher (its provenance attribute lives here)."""
    return f"{TEACHERS}/{name}"


def target(name: str, token: str) -> str:
    """The cached targets of one teacher: token ``patch`` [n, gh, gw, width] or ``cls`` [n, width]."""
    return f"{TEACHERS}/{name}/{token}"


def patch(name: str) -> str:
    return target(name, "patch")


def cls(name: str) -> str:
    return target(name, "cls")


def stats(name: str, stat: str) -> str:
    """A statistics array: per shard (``shard_patch_mean``…) or merged (``patch_mean``, ``count``…)."""
    return f"{TEACHERS}/{name}/stats/{stat}"


def codec(name: str, array: str) -> str:
    """An array of the teacher's storage codec (PCA basis, int8 scale…)."""
    return f"{TEACHERS}/{name}/codec/{array}"
