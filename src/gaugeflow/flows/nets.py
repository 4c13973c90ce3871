"""The conditioner: a small CNN on the torus that turns frozen features into spline parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConditionerCNN", "circular_pad", "leaky_relu_circular_pad"]


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for 4-d tensors on the CPU (oneDNN convolutions run ~1.4x faster on it,
    benchmarks/RESULTS_flow.md); elsewhere the usual contiguous layout (not measured there)."""
    if x.dim() == 4 and x.device.type == "cpu":
        return torch.channels_last
    return torch.contiguous_format


def _pad_into(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Circular padding of the last two axes by `pad` sites: a fresh dense tensor."""
    L_h, L_w = x.shape[-2], x.shape[-1]
    shape = (*x.shape[:-2], L_h + 2 * pad, L_w + 2 * pad)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    out[..., pad : pad + L_h, pad : pad + L_w] = x
    # rows from x, then whole columns (corners included) from the padded rows
    out[..., :pad, pad : pad + L_w] = x[..., L_h - pad :, :]
    out[..., pad + L_h :, pad : pad + L_w] = x[..., :pad, :]
    out[..., :, :pad] = out[..., :, L_w : L_w + pad]
    out[..., :, pad + L_w :] = out[..., :, pad : 2 * pad]
    return out


def _fold(grad: torch.Tensor, pad: int) -> torch.Tensor:
    """Adjoint of `_pad_into`: add the padding's gradient back onto the sites it copies."""
    L_h, L_w = grad.shape[-2] - 2 * pad, grad.shape[-1] - 2 * pad
    cols = grad[..., pad : pad + L_w].clone()
    cols[..., :pad] += grad[..., pad + L_w :]
    cols[..., L_w - pad :] += grad[..., :pad]
    out = cols[..., pad : pad + L_h, :].clone()
    out[..., :pad, :] += cols[..., pad + L_h :, :]
    out[..., L_h - pad :, :] += cols[..., :pad, :]
    return out


def _leaky_relu_grad(grad: torch.Tensor, out: torch.Tensor, slope: float) -> torch.Tensor:
    """Gradient of leaky_relu from its *output* (valid for slope > 0: out > 0 iff in > 0).

    One fused kernel, bitwise equal to ``torch.where(out > 0, grad, grad * slope)`` and
    ~3x faster than it (benchmarks/RESULTS_flow.md).
    """
    return torch.ops.aten.leaky_relu_backward(grad, out, slope, True)


class _CircularPad(torch.autograd.Function):
    """Circular padding that saves nothing for backward (its backward is a fold)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: int) -> torch.Tensor:  # type: ignore[override]
        ctx.pad = pad
        return _pad_into(x, pad)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _fold(grad, ctx.pad), None


class _LeakyReLUCircularPad(torch.autograd.Function):
    """leaky_relu then circular padding, saving only the padded output.

    The following convolution saves that same tensor, so the pre-activation is not kept:
    with a positive slope, output > 0 exactly where input > 0, which is all the leaky ReLU's
    backward needs (the same gradient as torch's, bit for bit).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: int, slope: float) -> torch.Tensor:  # type: ignore[override]
        out = _pad_into(F.leaky_relu(x, slope), pad)
        ctx.pad, ctx.slope = pad, slope
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        pad = ctx.pad
        g = _fold(grad, pad)
        center = out[..., pad : out.shape[-2] - pad, pad : out.shape[-1] - pad]
        return _leaky_relu_grad(g, center, ctx.slope), None, None


class _CircularConv2d(torch.autograd.Function):
    """[leaky_relu,] circular padding and a convolution that keep only the unpadded input.

    Backward pads that input again (cheap) instead of keeping the padded copy, which at L = 16
    with a padding of 3 is 1.9x larger. First derivatives only (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pad, dilation, slope):  # type: ignore[override]
        a = x if slope is None else F.leaky_relu(x, slope)
        w = weight.contiguous(memory_format=_layout(a))
        y = F.conv2d(_pad_into(a, pad), w, bias, 1, 0, dilation)
        ctx.pad, ctx.dilation, ctx.slope, ctx.has_bias = pad, dilation, slope, bias is not None
        ctx.save_for_backward(a, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        a, weight = ctx.saved_tensors
        padded = _pad_into(a, ctx.pad)
        w = weight.contiguous(memory_format=_layout(a))
        grad = grad.contiguous(memory_format=_layout(a))
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            padded,
            w,
            [w.shape[0]] if ctx.has_bias else None,
            [1, 1],
            [0, 0],
            [ctx.dilation, ctx.dilation],
            False,
            [0, 0],
            1,
            [need_x, need_w, need_b and ctx.has_bias],
        )
        if need_x:
            gx = _fold(gx, ctx.pad)
            if ctx.slope is not None:
                gx = _leaky_relu_grad(gx, a, ctx.slope)
        return gx, gw, gb, None, None, None


def circular_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode='circular')`` with a cheaper backward and no saved tensors."""
    if pad == 0:
        return x
    return _CircularPad.apply(x, pad)


def leaky_relu_circular_pad(x: torch.Tensor, pad: int, slope: float = 0.01) -> torch.Tensor:
    """``circular_pad(F.leaky_relu(x, slope), pad)``, keeping only the output for backward."""
    if pad == 0 or slope <= 0:
        return circular_pad(F.leaky_relu(x, slope), pad)
    return _LeakyReLUCircularPad.apply(x, pad, slope)


class ConditionerCNN(nn.Sequential):
    """Convolutions with circular padding, one per dilation, LeakyReLU between them.

    The output keeps the lattice shape: [B, in_channels, L, L] -> [B, out_channels, L, L].
    The modules (and so the state_dict) are those of ``nn.Sequential(Conv2d, LeakyReLU, ...)``
    with ``padding_mode='circular'``; forward pads with `circular_pad` and fuses each
    LeakyReLU into the next convolution's padding (same numbers, less saved for backward).
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
    def _fused(x: torch.Tensor, conv: nn.Conv2d, pad: int) -> bool:
        """Whether `_CircularConv2d` applies: plain square conv, no autocast, no double grad."""
        return (
            pad > 0
            and conv.stride == (1, 1)
            and conv.groups == 1
            and conv.dilation[0] == conv.dilation[1]
            and conv.padding[0] == conv.padding[1]
            and x.dim() == 4
            and not torch.is_autocast_enabled(x.device.type)
            and torch.is_grad_enabled()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, L, L] -> [B, out_channels, L, L]."""
        x = features
        slope: float | None = None
        for module in self:
            if isinstance(module, nn.LeakyReLU):
                slope = module.negative_slope
                continue
            conv: nn.Conv2d = module  # type: ignore[assignment]
            pad = conv.padding[0]
            if self._fused(x, conv, pad) and (slope is None or slope > 0):
                x = _CircularConv2d.apply(x, conv.weight, conv.bias, pad, conv.dilation[0], slope)
                slope = None
                continue
            if slope is None:
                x = circular_pad(x, pad)
            else:
                x = leaky_relu_circular_pad(x, pad, slope)
            slope = None
            weight = conv.weight.contiguous(memory_format=_layout(x))
            x = F.conv2d(x, weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        if slope is not None:  # a trailing LeakyReLU (not built by __init__, but keep it exact)
            x = F.leaky_relu(x, slope)
        return x
