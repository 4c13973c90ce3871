"""Circular padding and convolutions with hand-written backward passes for the conditioner.

The fast paths chosen by `ConvOptions` (see conv_options.py); each computes what
``F.pad(mode="circular")`` + ``F.conv2d`` (+ leaky ReLU) compute, tested in float64 in
tests/test_convfloor.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conv_gemm import (
    _gemm_at_sites,
    _gemm_conv_backward,
    _gemm_sites_backward,
    _layout,
    _scatter_sites,
)
from .conv_options import GEMM_SITES_MAX_L, SWAPPED_BACKWARD_MAX, Sites, current_options

__all__ = ["circular_pad", "leaky_relu_circular_pad"]


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


def _fill_border(out: torch.Tensor, pad: int) -> torch.Tensor:
    """Write the circular padding of `out` (in place) from its centre; returns `out`."""
    L_h, L_w = out.shape[-2] - 2 * pad, out.shape[-1] - 2 * pad
    out[..., :pad, pad : pad + L_w] = out[..., L_h : L_h + pad, pad : pad + L_w]
    out[..., pad + L_h :, pad : pad + L_w] = out[..., pad : 2 * pad, pad : pad + L_w]
    out[..., :, :pad] = out[..., :, L_w : L_w + pad]
    out[..., :, pad + L_w :] = out[..., :, pad : 2 * pad]
    return out


def _leaky_pad_into(x: torch.Tensor, pad: int, slope: float, rows: int = 1) -> torch.Tensor:
    """``_pad_into(F.leaky_relu(x, slope), pad)`` with the activation written into the centre.

    With ``rows > 1`` (4-d, CPU) each sample's padded image sits in a block of rows rounded up
    to a multiple of `rows`, with one spare row after the last sample: the layout
    `_conv_at_sites` reads without a copy (zeros in the spare rows).
    """
    L_h, L_w = x.shape[-2], x.shape[-1]
    H, W = L_h + 2 * pad, L_w + 2 * pad
    if rows > 1 and x.dim() == 4 and _layout(x) == torch.channels_last:
        batch, channels = x.shape[0], x.shape[1]
        block = -(-H // rows) * rows
        buf = x.new_empty(batch * block + 1, W, channels)
        blocks = buf[: batch * block].view(batch, block, W, channels)
        blocks[:, H:].zero_()
        buf[batch * block :].zero_()
        out = blocks[:, :H].permute(0, 3, 1, 2)
    else:
        shape = (*x.shape[:-2], H, W)
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))
    torch._C._nn.leaky_relu(x, slope, out=out[..., pad : pad + L_h, pad : pad + L_w])
    return _fill_border(out, pad)


def _gemm_sites(sites: Sites) -> bool:
    """Whether `_conv_at_sites` uses matrix products here (``gemm_last_small``)."""
    return current_options().gemm_last_small and sites.L <= GEMM_SITES_MAX_L


def _site_rows(sites: Sites) -> int:
    """Row multiple of the cosets' row steps (for `_leaky_pad_into`): the blocked layout the
    strided convolutions of `_conv_at_sites` read without a copy; 1 (plain layout, no spare
    rows to zero) where it uses matrix products, which read any layout."""
    if _gemm_sites(sites):
        return 1
    return math.lcm(*(dr for _, _, dr, _ in sites.cosets))


def _coset_view(padded: torch.Tensor, r0: int, c0: int, dr: int) -> torch.Tensor | None:
    """The samples' padded images as one tall image starting at (r0, c0), without a copy.

    Only for the layout of ``_leaky_pad_into(..., rows)`` with `dr` dividing the block: then
    row i of sample b of coset (r0, c0, dr, .) is output row b * block / dr + i of a strided
    convolution over this [1, C, rows, W] view (columns past the image read the next row,
    only for outputs that are dropped). None if the layout does not allow it.
    """
    batch, channels, H, W = padded.shape
    s = padded.stride()
    row = W * channels
    if s[1] != 1 or s[2] != row or s[3] != channels or s[0] % row:
        return None
    block = s[0] // row
    if block % dr or block < H:
        return None
    n_rows = batch * block - r0
    end = padded.storage_offset() + (r0 + n_rows) * row + c0 * channels
    if end > padded.untyped_storage().nbytes() // padded.element_size():
        return None
    return padded.as_strided(
        (1, channels, n_rows, W),
        (n_rows * row, 1, row, channels),
        padded.storage_offset() + r0 * row + c0 * channels,
    )


def _fold_(grad: torch.Tensor, pad: int) -> torch.Tensor:
    """`_fold` in place: adds the border onto the centre of `grad`, returns the centre (a view).

    The same additions in the same order as `_fold`, so the same numbers, without its two
    copies of the whole gradient.
    """
    L_h, L_w = grad.shape[-2] - 2 * pad, grad.shape[-1] - 2 * pad
    grad[..., pad : 2 * pad] += grad[..., pad + L_w :]
    grad[..., L_w : L_w + pad] += grad[..., :pad]
    cols = grad[..., pad : pad + L_w]
    cols[..., pad : 2 * pad, :] += cols[..., pad + L_h :, :]
    cols[..., L_h : L_h + pad, :] += cols[..., :pad, :]
    return cols[..., pad : pad + L_h, :]


def _leaky_relu_grad(grad: torch.Tensor, out: torch.Tensor, slope: float) -> torch.Tensor:
    """Gradient of leaky_relu from its *output* (valid for slope > 0: out > 0 iff in > 0).

    One fused kernel, bitwise equal to ``torch.where(out > 0, grad, grad * slope)`` and
    ~3x faster than it (benchmarks/RESULTS_flow.md).
    """
    return torch.ops.aten.leaky_relu_backward(grad, out, slope, True)


def _conv_at_sites(
    padded: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    sites: Sites,
) -> torch.Tensor:
    """The circular convolution (input already padded) at `sites` only: [B, n_sites, C_out].

    One strided convolution per coset; row i, column j of coset (r0, c0, dr, dc) reads the
    padded input from (r0 + i dr, c0 + j dc) on, exactly the taps of the full convolution's
    output at that site.
    """
    if _gemm_sites(sites):
        return _gemm_at_sites(padded, weight, bias, dilation, sites)
    parts = []
    batch = padded.shape[0]
    for r0, c0, dr, dc in sites.cosets:
        tall = _coset_view(padded, r0, c0, dr)
        if tall is None:
            y = F.conv2d(padded[..., r0:, c0:], weight, bias, (dr, dc), 0, dilation)
            parts.append(y.permute(0, 2, 3, 1).flatten(1, 2))
            continue
        n_r, n_c = sites.L // dr, sites.L // dc
        y = F.conv2d(tall, weight, bias, (dr, dc), 0, dilation)[0].permute(1, 2, 0)
        per_sample = padded.stride(0) // (padded.shape[-1] * padded.shape[1]) // dr
        y = (
            y.as_strided(
                (batch, n_r * n_c, y.shape[-1]),
                (per_sample * y.stride(0), y.stride(1), y.stride(2)),
            )
            if n_c * y.stride(1) == y.stride(0)
            else torch.stack(
                [y[b * per_sample : b * per_sample + n_r] for b in range(batch)]
            ).flatten(1, 2)
        )
        parts.append(y)
    return torch.cat(parts, dim=1).index_select(1, sites.order)


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


def _swapped_conv_backward(
    grad: torch.Tensor,
    padded: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    pad: int,
    mask: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Backward of the circular "same" convolution (``pad = dilation (k - 1) / 2``) as two
    forward convolutions, which oneDNN ran faster than its own backward on the CPU up to
    ``SWAPPED_BACKWARD_MAX`` output sites per batch (benchmarks/bench_conv_backward.py).

    Returns (grad of the *unpadded* input, grad of weight, grad of bias).

    - Input: out(y) reads x((y + d (t - c)) mod L) with tap t and c = (k - 1) / 2, so
      gx(s) = sum_t g(s - d (t - c)) W_t^T: the circular convolution of the gradient (padded
      by `pad` like the input) with the kernel flipped in both axes and its channels
      transposed. It comes out unpadded: no fold.
    - Weight: gW[o, i, t] = sum_{b, y} g[b, o, y] xpad[b, i, y + d t], a convolution of the
      padded input with batch and channels swapped ([C_in, B, H, W]) by the gradient as the
      kernel ([C_out, B, L, L]) at stride d: output [C_in, C_out, k, k]. Both swapped tensors
      are plain (NCHW) copies: faster than channels-last ones in 36 of 40 shapes measured
      (benchmarks/RESULTS.md, session 13).
    """
    need_x, need_w, need_b = mask
    gx = gw = gb = None
    if need_x:
        flipped = weight.flip(2, 3).transpose(0, 1).contiguous(memory_format=_layout(padded))
        gx = F.conv2d(_pad_into(grad, pad), flipped, None, 1, 0, dilation)
    if need_w:
        x_swapped = padded.transpose(0, 1).contiguous()
        g_swapped = grad.transpose(0, 1).contiguous()
        gw = F.conv2d(x_swapped, g_swapped, None, dilation).transpose(0, 1).contiguous()
    if need_b:
        gb = grad.sum(dim=(0, 2, 3))
    return gx, gw, gb


def _swapped_backward(opts, x: torch.Tensor, weight: torch.Tensor, pad: int, dilation: int) -> bool:
    """Whether `_CircularConv2d`'s backward of the whole lattice uses
    `_swapped_conv_backward` (``swapped_backward``): on the CPU, for an odd square
    kernel with "same" padding, at most ``SWAPPED_BACKWARD_MAX`` output sites per batch."""
    k = weight.shape[-1]
    return (
        opts.swapped_backward
        and x.device.type == "cpu"
        and x.dim() == 4
        and weight.shape[-2] == k
        and k % 2 == 1
        and 2 * pad == dilation * (k - 1)
        and x.shape[0] * x.shape[-2] * x.shape[-1] <= SWAPPED_BACKWARD_MAX
    )


class _CircularConv2d(torch.autograd.Function):
    """[leaky_relu,] circular padding and a convolution, [evaluated at `sites` only].

    What backward keeps is set by `ConvOptions` at forward time: without ``padded_buffer``
    only the unpadded input (backward pads it again; at L = 16 with a padding of 3 the padded
    copy is 1.9x larger); with it the padded buffer the activation was written into (no copy
    forward or backward, more memory). First derivatives only (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pad, dilation, slope, sites, gemm):  # type: ignore[override]
        opts = current_options()
        keep_padded = opts.padded_buffer
        if slope is None:
            a, padded = x, _pad_into(x, pad)
        elif keep_padded:
            rows = _site_rows(sites) if sites is not None else 1
            a, padded = None, _leaky_pad_into(x, pad, slope, rows)
        else:
            a = F.leaky_relu(x, slope)
            padded = _pad_into(a, pad)
        w = weight.contiguous(memory_format=_layout(padded))
        if sites is None:
            y = F.conv2d(padded, w, bias, 1, 0, dilation)
        else:
            y = _conv_at_sites(padded, w, bias, dilation, sites)
        ctx.pad, ctx.dilation, ctx.slope, ctx.has_bias = pad, dilation, slope, bias is not None
        ctx.sites, ctx.gemm, ctx.keep_padded = sites, gemm, keep_padded
        ctx.gemm_sites = sites is not None and opts.gemm_last
        ctx.swapped = (
            sites is None and not gemm and _swapped_backward(opts, x, weight, pad, dilation)
        )
        ctx.save_for_backward(padded if keep_padded else a, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        saved, weight = ctx.saved_tensors
        pad = ctx.pad
        padded = saved if ctx.keep_padded else _pad_into(saved, pad)
        mask = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.needs_input_grad[2] and ctx.has_bias,
        )
        if ctx.sites is not None and not ctx.gemm_sites:
            grad = _scatter_sites(grad, ctx.sites, padded)
        if ctx.gemm_sites:
            gx, gw, gb = _gemm_sites_backward(grad, padded, weight, ctx.dilation, ctx.sites, mask)
            folded = False
        elif ctx.gemm:
            gx, gw, gb = _gemm_conv_backward(grad, padded, weight, ctx.dilation, pad, mask)
            folded = True
        elif ctx.swapped:
            grad = grad.contiguous(memory_format=_layout(padded))
            gx, gw, gb = _swapped_conv_backward(grad, padded, weight, ctx.dilation, pad, mask)
            folded = True
        else:
            w = weight.contiguous(memory_format=_layout(padded))
            grad = grad.contiguous(memory_format=_layout(padded))
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
                list(mask),
            )
            folded = False
        if mask[0]:
            if not folded:
                gx = _fold_(gx, pad) if ctx.keep_padded else _fold(gx, pad)
            if ctx.slope is not None:
                if ctx.keep_padded:
                    out = padded[..., pad : padded.shape[-2] - pad, pad : padded.shape[-1] - pad]
                else:
                    out = saved
                gx = _leaky_relu_grad(gx, out, ctx.slope)
        return gx, gw, gb, None, None, None, None, None


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


def _gather_sites(x: torch.Tensor, sites: Sites) -> torch.Tensor:
    """[B, C, L, L] -> [B, n_sites, C] at ``sites.flat``."""
    if x.is_contiguous(memory_format=torch.channels_last):
        # [B, L, L, C] is a view: gather the sites' rows directly
        return x.permute(0, 2, 3, 1).flatten(1, 2).index_select(1, sites.flat)
    return x.flatten(2).index_select(2, sites.flat).transpose(1, 2)
