"""Images as network input, the one place for it: ImageNet statistics, uint8 / [0, 1] images -> normalised tensors,
and the student-side colour jitter. A leaf module (imports only torch): teachers, students and both training
tasks use it.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> (x - mean) / std per channel (ImageNet statistics by default)."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None,
                 saturation: bool = True) -> torch.Tensor:
    """Per-image random brightness and contrast (and saturation) of float [B, 3, H, W] images in [0, 1], each
    factor uniform in 1 +- `strength`; the result is clamped to [0, 1].

    Draws one ``torch.rand((B, 3 or 2, 1, 1), generator=generator)`` on the CPU (3 with saturation, 2 without), so
    a caller's random stream is the same whichever device the images are on."""
    r = (torch.rand((x.shape[0], 3 if saturation else 2, 1, 1), generator=generator) * 2 - 1).to(x.device) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    gray = x.mean(dim=1, keepdim=True) if saturation else None  # of the input image
    x = x * (1 + r[:, :1]) + (x - mean) * r[:, 1:2]  # brightness, contrast
    if saturation:
        x = gray + (x - gray) * (1 + r[:, 2:3])
    return x.clamp(0, 1)


def images_to_input(images: torch.Tensor, device: torch.device, jitter: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W] on `device`; optional student-only
    brightness/contrast/saturation jitter (`color_jitter`)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if jitter > 0:
        x = color_jitter(x, jitter, generator)
    return normalise(x)
