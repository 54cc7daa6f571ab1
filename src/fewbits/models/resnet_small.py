"""A small residual CNN for 28x28 grey images (Fashion-MNIST), in the spirit of ResNet-18 at CPU scale.

The CIFAR ResNet family's smallest member (He et al. 2016, section 4.2: 6n + 2 layers, n = 1): a 3x3 stem,
three stages of one BasicBlock each at widths w, 2w, 4w (strides 1, 2, 2: 28 -> 14 -> 7 pixels), global
average pooling and a linear head; 8 weight layers plus two 1x1 projection shortcuts. With w = 16 it has
78k parameters and costs about 10 M multiply-adds per image, so a CPU core trains it on Fashion-MNIST in
minutes while every layer can be quantized (unlike ResNet-18's 11 M parameters and 0.56 G MACs).
"""

from __future__ import annotations

import torch
from torch import nn

from fewbits.models.resnet import BasicBlock, check_sizes


class ResNet8(nn.Module):
    """``forward(x)`` maps (N, C, H, W) floats to (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        check_sizes("ResNet8", num_classes=num_classes, in_channels=in_channels, width=width)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, stride=1)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, 4w, H/4, W/4)
        return self.fc(torch.flatten(self.pool(out), 1))  # (N, num_classes)
