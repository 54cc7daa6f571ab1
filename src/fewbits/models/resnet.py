"""ResNet-18 in its CIFAR form: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep their resolution.

Same block layout as He et al. 2016 (BasicBlocks [2, 2, 2, 2], widths 64-128-256-512); the ImageNet
stem (7x7 stride-2 convolution then max-pool) would shrink a 32x32 image to 8x8 before the first block.
"""

from __future__ import annotations

import torch
from torch import nn

from fewbits.errors import bad_param


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the input (projected by a 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def check_sizes(owner: str, **sizes: int) -> None:
    """Every size argument of a ResNet constructor must be a positive int (one-line error naming it)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_param(name, "a positive int", value, owner)


class ResNet18(nn.Module):
    """ResNet-18 for small images: ``forward(x)`` maps (N, C, H, W) floats to (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        check_sizes("ResNet18", num_classes=num_classes, in_channels=in_channels, width=width)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)  # CIFAR stem
        self.bn1 = nn.BatchNorm2d(width)
        layers, channels = [], width
        for i, blocks in enumerate((2, 2, 2, 2)):
            out_channels = width * 2**i
            for j in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride=2 if (i > 0 and j == 0) else 1))
                channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*layers[k:k + 2]) for k in (0, 2, 4, 6))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (N, width, H, W): no max-pool
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (N, 8*width, H/8, W/8)
        return self.fc(torch.flatten(self.pool(out), 1))  # (N, num_classes)
