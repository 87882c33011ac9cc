"""A VGG16 in torchvision's state-dict layout, randomly initialised (nothing is downloaded).

Keys match torchvision's `vgg16`: `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}` convolutions
(ReLU and max-pool modules hold the other indices), an adaptive 7x7 average pool, and
`classifier.{0,3}` Linears. With `drop_classifier_tail` (CT-CLIP's perceptual network) the
classifier's last two modules — the final Dropout and the 1000-way Linear — are left out, so the
network returns 4096-dimensional features. Pretrained weights arrive through a checkpoint.

`base_dim` and `hidden_dim` scale the widths for tiny test models; 64 and 4096 are VGG16's own.
"""

from __future__ import annotations

import torch
from torch import nn

# Convolution widths in multiples of `base_dim`; "M" is a 2x2 max-pool.
VGG16_PLAN = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")


class VGG16(nn.Module):
    """VGG16: `forward(images (b, in_channels, h, w))` returns (b, hidden_dim) or (b, num_classes)."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        base_dim: int = 64,
        hidden_dim: int = 4096,
        num_classes: int = 1000,
        dropout: float = 0.5,
        drop_classifier_tail: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for step in VGG16_PLAN:
            if step == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [nn.Conv2d(channels, base_dim * step, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = base_dim * step
        self.features = nn.Sequential(*layers)
        # adaptive: any input size gives the 7x7 grid the first classifier Linear expects
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        classifier = [
            nn.Linear(channels * 7 * 7, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        ]
        self.classifier = nn.Sequential(*(classifier[:-2] if drop_classifier_tail else classifier))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.avgpool(self.features(images))
        return self.classifier(torch.flatten(features, 1))
