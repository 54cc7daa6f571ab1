"""Map a codebook layer's values to int8 with one scale per output channel, minimising the error on its codebook values.

A channel (a row of the weight) uses at most ``2**bits`` values of each codebook it touches, each by some
number of weights. Its scale is the candidate ``max|value| / m`` (``m`` = 64 ... 127: the largest value
lands exactly on the integer ``m``) with the least count-weighted squared error
``sum count * (value - s * round(value / s))**2``, computed on those few values rather than on every weight. At up to 7 bits a channel's values are
usually represented exactly or nearly so; at 8 bits int8 rounds like any int8 quantizer.
"""

from __future__ import annotations

import torch

from fewbits.nn.codebook import Codebook



def channel_positions(shape: tuple[int, ...], transposed: bool = False) -> torch.Tensor:
    """Flat row-major positions of each output channel's weights: rows, or columns of a (in, out) weight."""
    position = torch.arange(shape[0] * (torch.Size(shape).numel() // shape[0])).view(shape[0], -1)
    return position.T if transposed else position


def _channel_values(cb: Codebook, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (a row of ``position``), the codebook values it may use and how many weights use each."""
    levels = 1 << cb.bits
    channels = position.shape[0]
    codes = cb.codes.reshape(-1)[position].long()
    group = position // cb.group_size
    first = group.amin(1, keepdim=True)
    span = int((group - first).max()) + 1  # groups one channel spans
    entry = (group - first) * levels + codes
    counts = torch.zeros(channels, span * levels, dtype=torch.float64).scatter_add_(
        1, entry, torch.ones_like(entry, dtype=torch.float64))
    book = cb.codebook.detach().double()
    groups = (first + torch.arange(span)).clamp(max=book.shape[0] - 1)  # (channels, span)
    values = book[groups].reshape(channels, span * levels)
    return values, counts


def channel_scales(cb: Codebook, position: torch.Tensor) -> torch.Tensor:
    """The int8 scale of each output channel (rows of ``position``, see :func:`channel_positions`), float32."""
    values, counts = _channel_values(cb, position)
    amax = (values.abs() * (counts > 0)).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
    best, best_err = amax / 127, torch.full_like(amax, float("inf"))
    for top in range(64, 128):
        s = amax / top
        err = (counts * (values - s[:, None] * (values / s[:, None]).round().clamp(-127, 127)) ** 2).sum(1)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best.float()


def quantize_channels(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``round(weight / scale)`` per row, clamped to [-127, 127], as int8."""
    return (weight.detach().float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
