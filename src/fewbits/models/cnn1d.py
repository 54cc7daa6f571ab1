"""A small 1-D convolutional network for MNIST-1D (signals of length 40, 10 classes)."""

from __future__ import annotations

import torch
from torch import nn

from fewbits.errors import bad_param


class CNN1d(nn.Module):
    """Three conv-BN-ReLU stages, a fixed-size average pool and a linear head.

    ``forward(x)`` maps (N, L) or (N, in_channels, L) floats to (N, num_classes) logits; the adaptive
    pool makes it work for any signal length L >= 8.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad_param(name, "a positive int", value, "CNN1d")
        if not 0.0 <= dropout < 1.0:
            raise bad_param("dropout", "a float in [0, 1)", dropout, "CNN1d")
        self.in_channels = in_channels

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(c_in, c_out, 5, stride=stride, padding=2, bias=False),
                                 nn.BatchNorm1d(c_out), nn.ReLU())

        self.features = nn.Sequential(stage(in_channels, width, 1), stage(width, 2 * width, 2),
                                      stage(2 * width, 4 * width, 2))
        self.pool = nn.AdaptiveAvgPool1d(4)  # keeps coarse position: digits differ by where strokes are
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (N, L) -> (N, 1, L)
        out = self.pool(self.features(x))  # (N, 4*width, 4)
        return self.fc(self.dropout(torch.flatten(out, 1)))  # (N, num_classes)
