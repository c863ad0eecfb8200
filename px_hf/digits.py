"""scikit-learn's handwritten digits (shipped with the package, usable offline) as image tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits(image_size: int = 32, classes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 8x8 digits, upsampled to ``image_size`` and scaled to [-1, 1]: ``(images (N,1,S,S), labels)``.

    ``classes`` keeps only those digits (labels unchanged).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes))
        images, labels = images[keep], labels[keep]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images * 2.0 - 1.0, labels
