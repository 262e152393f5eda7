"""Every registered teacher builds from a small random-init config and returns the token grid it declares."""

from __future__ import annotations

import pytest
import torch

from distillkit.config.cache import TeacherConfig
from distillkit.teachers import load_teacher, teacher_input_hw, teacher_names
from distillkit.teachers.registry import teacher_patch_size

SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 2}  # 48: ViT-g's SwiGLU hidden width (x 8/3) stays even
STUDENT_PATCH = 14


@pytest.mark.parametrize("name", teacher_names())
@pytest.mark.parametrize("image_hw,grid", [((56, 84), "student"), ((98, 42), "student"), ((61, 45), "own")])
def test_registered_teacher_returns_its_declared_grid(name, image_hw, grid):
    h, w = image_hw
    if grid == "student":
        image_hw = (h - h % STUDENT_PATCH, w - w % STUDENT_PATCH)
    cfg = TeacherConfig(name=name, seed=3, overrides=SMALL, grid=grid)
    t = load_teacher(cfg, image_hw, STUDENT_PATCH, device="cpu")
    p = t.provenance
    tp = teacher_patch_size(name)
    assert tuple(p.input_hw) == teacher_input_hw(name, image_hw, STUDENT_PATCH, grid)
    assert p.input_hw[0] % tp == 0 and p.input_hw[1] % tp == 0
    assert tuple(p.grid_hw) == (p.input_hw[0] // tp, p.input_hw[1] // tp)
    if grid == "student":  # teacher tokens land on the student's token grid
        assert tuple(p.grid_hw) == (image_hw[0] // STUDENT_PATCH, image_hw[1] // STUDENT_PATCH)
    assert p.embed_dim == SMALL["embed_dim"] and p.checkpoint_sha256.startswith("random-init:")
    images = torch.randint(0, 256, (2, *p.input_hw, 3), dtype=torch.uint8)
    out = t(images)
    assert out.patch.shape == (2, *p.grid_hw, p.embed_dim)
    assert torch.isfinite(out.patch).all()
    if p.has_cls:
        assert out.cls.shape == (2, p.embed_dim)
    else:
        assert out.cls is None
    # a portrait and a landscape image differ: the grid follows the input, not a square default
    assert out.patch[0].std() > 0
