"""The conditioner: a small CNN on the torus that turns frozen features into spline parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConditionerCNN"]


class ConditionerCNN(nn.Sequential):
    """Convolutions with circular padding, one per dilation, LeakyReLU between them.

    The output keeps the lattice shape: [B, in_channels, L, L] -> [B, out_channels, L, L].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 3),
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(
                f"kernel_size must be odd to keep the lattice shape; got {kernel_size}"
            )
        if not dilations:
            raise ValueError("need at least one convolution (one dilation)")
        widths = [in_channels] + [hidden_channels] * (len(dilations) - 1) + [out_channels]
        layers: list[nn.Module] = []
        for i, dilation in enumerate(dilations):
            layers.append(
                nn.Conv2d(
                    widths[i],
                    widths[i + 1],
                    kernel_size,
                    dilation=dilation,
                    padding=dilation * (kernel_size - 1) // 2,
                    padding_mode="circular",
                )
            )
            if i < len(dilations) - 1:
                layers.append(nn.LeakyReLU())
        super().__init__(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, L, L] -> [B, out_channels, L, L]."""
        return super().forward(features)
