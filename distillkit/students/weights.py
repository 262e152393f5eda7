"""Weights into student networks: a partial load that keeps whatever does not match (fine-tuning, new heads)."""

from __future__ import annotations

import torch


def load_matching(module: torch.nn.Module, state: dict) -> tuple[int, list[str]]:
    """Copy into `module` every tensor of `state` whose name and shape match one of its own (partial weight
    loading). Returns (tensors copied, sorted names of the module's tensors left as they were)."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return len(usable), sorted(set(own) - set(usable))
