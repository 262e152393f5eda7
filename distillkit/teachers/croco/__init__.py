"""Our own DUSt3R / MASt3R network (CroCo-v2 style asymmetric stereo ViT), checkpoint loader and image loader.

Written from the spec in ``shared/notes/dust3r.md``; parity with the official code is tested against the
reference fixtures in ``shared/fixtures/dust3r`` (tests/test_croco.py).
"""

from distillkit.teachers.croco.checkpoint import (
    config_from_kwargs, load_model, load_state_dict_strict, parse_constructor, read_checkpoint, save_hf,
)
from distillkit.teachers.croco.model import RELEASED, AsymmetricCroCo3DStereo, AsymmetricMASt3R, CroCoConfig
from distillkit.teachers.croco.preprocess import load_images, resize_and_crop

__all__ = [
    "RELEASED", "AsymmetricCroCo3DStereo", "AsymmetricMASt3R", "CroCoConfig", "config_from_kwargs", "load_images",
    "load_model", "load_state_dict_strict", "parse_constructor", "read_checkpoint", "resize_and_crop", "save_hf",
]
