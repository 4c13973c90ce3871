"""The conditioner: a small CNN on the torus that turns frozen features into spline parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conv_gather import GATHER_FULL_MAX_L, gather_conv, tap_index
from .conv_ops import (  # noqa: F401  (private helpers re-exported for tests)
    _CircularConv2d,
    _conv_at_sites,
    _coset_view,
    _gather_sites,
    _layout,
    _leaky_pad_into,
    _pad_into,
    _site_rows,
    circular_pad,
    leaky_relu_circular_pad,
)
from .conv_options import ConvOptions, Sites, conv_options, current_options

__all__ = [
    "ConditionerCNN",
    "ConvOptions",
    "Sites",
    "circular_pad",
    "conv_options",
    "leaky_relu_circular_pad",
]


class ConditionerCNN(nn.Sequential):
    """Convolutions with circular padding, one per dilation, LeakyReLU between them.

    The output keeps the lattice shape: [B, in_channels, L, L] -> [B, out_channels, L, L],
    or, given `Sites`, only those sites: [B, n_sites, out_channels].
    The modules (and so the state_dict) are those of ``nn.Sequential(Conv2d, LeakyReLU, ...)``
    with ``padding_mode='circular'``; forward pads with `circular_pad` and fuses each
    LeakyReLU into the next convolution's padding (same numbers, less saved for backward).
    `ConvOptions` (all on by default) choose faster evaluations of the same function.
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

    @staticmethod
    def _plain_conv(conv: nn.Conv2d, pad: int) -> bool:
        """A square, unit-stride, ungrouped convolution (what the fast paths assume)."""
        return (
            pad > 0
            and conv.stride == (1, 1)
            and conv.groups == 1
            and conv.dilation[0] == conv.dilation[1]
            and conv.padding[0] == conv.padding[1]
        )

    @staticmethod
    def _fused(x: torch.Tensor, conv: nn.Conv2d, pad: int) -> bool:
        """Whether `_CircularConv2d` applies: plain square conv, no autocast, no double grad."""
        return (
            ConditionerCNN._plain_conv(conv, pad)
            and x.dim() == 4
            and not torch.is_autocast_enabled(x.device.type)
            and torch.is_grad_enabled()
        )

    @staticmethod
    def _gatherable(x: torch.Tensor, conv: nn.Conv2d, pad: int, slope: float | None) -> bool:
        """Whether `gather_conv` applies: a plain "same" convolution of a square lattice, no
        autocast, an activation (if any) whose output tells its input's sign."""
        k = conv.kernel_size
        return (
            ConditionerCNN._plain_conv(conv, pad)
            and k[0] == k[1]
            and pad == conv.dilation[0] * (k[0] - 1) // 2
            and x.dim() == 4
            and x.shape[-1] == x.shape[-2]
            and not torch.is_autocast_enabled(x.device.type)
            and (slope is None or slope > 0)
        )

    def forward(self, features: torch.Tensor, sites: Sites | None = None) -> torch.Tensor:
        """[B, in_channels, L, L] -> [B, out_channels, L, L], or [B, n_sites, out_channels]."""
        opts = current_options()
        x = features
        slope: float | None = None
        convs = [m for m in self if isinstance(m, nn.Conv2d)]
        gathered = False
        for module in self:
            if isinstance(module, nn.LeakyReLU):
                slope = module.negative_slope
                continue
            conv: nn.Conv2d = module  # type: ignore[assignment]
            pad = conv.padding[0]
            last, first = conv is convs[-1], conv is convs[0]
            at_sites = sites if last and opts.active_last and self._plain_conv(conv, pad) else None
            if self._gatherable(x, conv, pad, slope):
                L, k, d = x.shape[-1], conv.kernel_size[0], conv.dilation[0]
                if at_sites is not None and opts.gather_last:
                    key = ("sites", at_sites.cosets)
                    index = tap_index(L, k, d, x.device, at_sites.flat, key)
                    x = gather_conv(x, conv.weight, conv.bias, index, slope)
                    gathered, slope = True, None
                    continue
                if first and at_sites is None and opts.gather_first and L <= GATHER_FULL_MAX_L:
                    index = tap_index(L, k, d, x.device, None, ("all",))
                    x = gather_conv(x, conv.weight, conv.bias, index, slope, full_L=L)
                    slope = None
                    continue
            if self._fused(x, conv, pad) and (slope is None or slope > 0):
                gemm = first and opts.gemm_first and conv.bias is not None
                x = _CircularConv2d.apply(
                    x, conv.weight, conv.bias, pad, conv.dilation[0], slope, at_sites, gemm
                )
                gathered = at_sites is not None
                slope = None
                continue
            no_grad_fast = (
                opts.padded_buffer
                and slope is not None
                and slope > 0
                and pad > 0
                and not torch.is_grad_enabled()
            )
            if no_grad_fast:
                x = _leaky_pad_into(x, pad, slope, _site_rows(at_sites) if at_sites else 1)
            elif slope is None:
                x = circular_pad(x, pad)
            else:
                x = leaky_relu_circular_pad(x, pad, slope)
            slope = None
            weight = conv.weight.contiguous(memory_format=_layout(x))
            if at_sites is not None and not torch.is_autocast_enabled(x.device.type):
                x = _conv_at_sites(x, weight, conv.bias, conv.dilation[0], at_sites)
                gathered = True
            else:
                x = F.conv2d(x, weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        if slope is not None:  # a trailing LeakyReLU (not built by __init__, but keep it exact)
            x = F.leaky_relu(x, slope)
        if sites is not None and not gathered:
            x = _gather_sites(x, sites)
        return x
