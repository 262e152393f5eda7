"""Scene-specific pointmap students (seed 000): image [B, 3, H, W] -> world pointmap [B, 3, H, W].

One family per module, each named as its ``kind`` and holding ``build(cfg, image_hw)``: ``cnn`` (a vanilla CNN),
``mobilenet`` (a timm MobileNetV3 backbone), ``vit`` (a ViT encoder-decoder). ``base`` holds what they share
(centring on the scene, the per-pixel head), ``config`` the student config and its presets.

`FAMILIES` below is the registry. This module imports no torch, so the config and the CLI (every `distillkit`
command) read the kinds without loading a network; a family's module is imported when a student of its kind is built.
"""

from __future__ import annotations

import importlib

# kind -> the config fields that shape that family (they label runs and dedupe ablation grids).
# A new family: its module here (`build(cfg, image_hw)`), its line below, its fields in `config`.
FAMILIES: dict[str, tuple[str, ...]] = {
    "cnn": ("cnn_widths", "cnn_strides", "head_widths", "freeze_backbone"),
    "mobilenet": ("mobilenet_variant", "pretrained", "freeze_backbone", "head_widths"),
    "vit": ("patch_size", "blocks", "heads", "latent", "mlp_ratio", "dropout", "vit_head_width"),
}


def build_pointmap_student(cfg, image_hw: tuple[int, int]):
    """The student of family `cfg.kind` (a `PointmapStudentConfig`) for inputs of size `image_hw`."""
    return importlib.import_module(f"{__name__}.{cfg.kind}").build(cfg, image_hw)
