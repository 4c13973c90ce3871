"""The conditioner: a small CNN on the torus that turns frozen features into spline parameters."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConditionerCNN",
    "ConvOptions",
    "Sites",
    "circular_pad",
    "conv_options",
    "leaky_relu_circular_pad",
]


@dataclass(frozen=True)
class ConvOptions:
    """Implementation switches of the conditioner (issue 18); all on by default.

    Each computes the same function as the plain path (all off, the code before issue 18) up
    to float rounding; tests/test_convfloor.py checks that, in float64, to 1e-10.

    - ``active_last``: the last convolution is evaluated only at the requested sites (the
      coupling's active plaquettes, two strided cosets), not on the whole lattice.
    - ``padded_buffer``: a leaky ReLU writes straight into the padded buffer the next
      convolution reads (no centre copy); with grad, that buffer is what backward keeps
      (no second padding there), and the gradient's padding is folded in place.
    - ``gemm_first``: the backward of the first convolution (few input channels, where
      oneDNN's backward is slow) is two matrix products on the im2col matrix.
    - ``gemm_last``: with ``active_last``, the last convolution's backward is two matrix
      products on the im2col rows of the active sites only (a quarter of the full backward's
      work), not a full convolution backward of a gradient that is zero at 3/4 of the sites.
    """

    active_last: bool = True
    padded_buffer: bool = True
    gemm_first: bool = True
    gemm_last: bool = True


_OPTIONS = ConvOptions()


def current_options() -> ConvOptions:
    """The switches in force (see `conv_options`)."""
    return _OPTIONS


@contextmanager
def conv_options(**switches: bool) -> Iterator[ConvOptions]:
    """Temporarily change `ConvOptions` switches, e.g. ``conv_options(active_last=False)``.

    ``conv_options(all=False)`` turns every switch off (the plain reference path).
    """
    global _OPTIONS
    names = {f.name for f in fields(ConvOptions)}
    if "all" in switches:
        value = switches.pop("all")
        switches = {**dict.fromkeys(names, value), **switches}
    unknown = set(switches) - names
    if unknown:
        raise ValueError(f"unknown conv option(s) {sorted(unknown)}; known: {sorted(names)}")
    saved = _OPTIONS
    _OPTIONS = replace(saved, **switches)
    try:
        yield _OPTIONS
    finally:
        _OPTIONS = saved


@dataclass(frozen=True)
class Sites:
    """A set of lattice sites as strided cosets, for evaluating the last convolution there.

    ``cosets``: (row0, col0, row_step, col_step), each the sites (row0 + i row_step,
    col0 + j col_step); ``order``: index into the cosets' sites, concatenated row-major, that
    gives the sites in the order of ``flat`` (flat indices row * L + col, e.g. sorted).
    """

    L: int
    cosets: tuple[tuple[int, int, int, int], ...]
    flat: torch.Tensor
    order: torch.Tensor

    @staticmethod
    def from_mask(mask: torch.Tensor, cosets: Sequence[tuple[int, int, int, int]]) -> Sites:
        """Sites of a boolean [L, L] mask, given cosets that cover it exactly (checked)."""
        L = mask.shape[-1]
        listed = []
        for r0, c0, dr, dc in cosets:
            rows = torch.arange(r0, L, dr)
            cols = torch.arange(c0, L, dc)
            listed.append((rows[:, None] * L + cols[None, :]).flatten())
        listed_flat = torch.cat(listed)
        flat = mask.flatten().nonzero().squeeze(1)
        if listed_flat.numel() != flat.numel() or not torch.equal(listed_flat.sort().values, flat):
            raise ValueError("the cosets do not cover the mask's sites exactly once")
        order = listed_flat.argsort()
        return Sites(L=L, cosets=tuple(map(tuple, cosets)), flat=flat, order=order)

    def to(self, device: torch.device) -> Sites:
        return replace(self, flat=self.flat.to(device), order=self.order.to(device))


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


def _site_rows(sites: Sites) -> int:
    """Row multiple of the cosets' row steps (for `_leaky_pad_into`)."""
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


def _scatter_sites(grad: torch.Tensor, sites: Sites, like: torch.Tensor) -> torch.Tensor:
    """Adjoint of reading [B, C, L, L] at `sites`: [B, n, C] -> [B, C, L, L], zero elsewhere."""
    batch, _, channels = grad.shape
    full = grad.new_zeros(batch, sites.L * sites.L, channels)
    full.index_copy_(1, sites.flat, grad)
    full = full.view(batch, sites.L, sites.L, channels).permute(0, 3, 1, 2)
    return full.contiguous(memory_format=_layout(like))


def _gemm_conv_backward(
    grad: torch.Tensor,
    padded: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    pad: int,
    mask: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Backward of the circular convolution as matrix products on the im2col matrix.

    Returns (grad of the *unpadded* input, grad of weight, grad of bias). With 2 or 6 input
    channels oneDNN's convolution backward runs at a fraction of its forward speed; here the
    weight gradient is one product [C_out, B V] x [B V, k^2 C_in] and the input gradient one
    product [B V, C_out] x [C_out, k^2 C_in] whose k^2 columns are rolled back onto the sites.
    """
    need_x, need_w, need_b = mask
    batch, c_in, _, _ = padded.shape
    c_out, _, kh, kw = weight.shape
    L_h, L_w = grad.shape[-2], grad.shape[-1]
    g = grad.permute(0, 2, 3, 1).reshape(batch * L_h * L_w, c_out)
    gx = gw = gb = None
    if need_w:
        xh = padded.permute(0, 2, 3, 1)
        s = xh.stride()
        cols = xh.as_strided(
            (batch, L_h, L_w, kh, kw, c_in),
            (s[0], s[1], s[2], dilation * s[1], dilation * s[2], s[3]),
        ).reshape(batch * L_h * L_w, kh * kw * c_in)
        gw = (g.t() @ cols).view(c_out, kh, kw, c_in).permute(0, 3, 1, 2).contiguous()
    if need_b:
        gb = g.sum(dim=0)
    if need_x:
        wm = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in)
        taps = (g @ wm).view(batch, L_h, L_w, kh, kw, c_in)
        # out(y) reads x((y + dilation * ky - pad) mod L): roll each tap's column back
        acc = None
        for ky in range(kh):
            for kx in range(kw):
                shifted = torch.roll(
                    taps[:, :, :, ky, kx], (dilation * ky - pad, dilation * kx - pad), (1, 2)
                )
                acc = shifted if acc is None else acc.add_(shifted)
        gx = acc.permute(0, 3, 1, 2)  # type: ignore[union-attr]
    return gx, gw, gb


def _gemm_sites_backward(
    grad: torch.Tensor,
    padded: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    sites: Sites,
    mask: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Backward of `_conv_at_sites` as matrix products on the sites' im2col rows.

    Returns (grad of the *padded* input, grad of weight, grad of bias); `grad` is
    [B, n_sites, C_out] in the order of ``sites.flat``.
    """
    need_x, need_w, need_b = mask
    batch, c_in = padded.shape[0], padded.shape[1]
    c_out, _, kh, kw = weight.shape
    in_cosets = grad.new_empty(grad.shape).index_copy_(1, sites.order, grad)
    xh = padded.permute(0, 2, 3, 1)
    s = xh.stride()
    wm = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in) if need_x else None
    gpad = torch.zeros_like(xh) if need_x else None
    gw = gb = None
    start = 0
    for r0, c0, dr, dc in sites.cosets:
        n_r, n_c = sites.L // dr, sites.L // dc
        g = in_cosets[:, start : start + n_r * n_c].reshape(batch * n_r * n_c, c_out)
        start += n_r * n_c
        if need_w:
            cols = xh[:, r0:, c0:].as_strided(
                (batch, n_r, n_c, kh, kw, c_in),
                (s[0], dr * s[1], dc * s[2], dilation * s[1], dilation * s[2], s[3]),
            )
            part = g.t() @ cols.reshape(batch * n_r * n_c, kh * kw * c_in)
            gw = part if gw is None else gw.add_(part)
        if need_b:
            part = g.sum(dim=0)
            gb = part if gb is None else gb.add_(part)
        if need_x:
            taps = (g @ wm).view(batch, n_r, n_c, kh, kw, c_in)
            for ky in range(kh):
                for kx in range(kw):
                    r, c = r0 + dilation * ky, c0 + dilation * kx
                    gpad[:, r : r + dr * n_r : dr, c : c + dc * n_c : dc] += taps[:, :, :, ky, kx]
    if gw is not None:
        gw = gw.view(c_out, kh, kw, c_in).permute(0, 3, 1, 2).contiguous()
    gx = gpad.permute(0, 3, 1, 2) if gpad is not None else None
    return gx, gw, gb


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
    """[leaky_relu,] circular padding and a convolution, [evaluated at `sites` only].

    What backward keeps is set by `ConvOptions` at forward time: without ``padded_buffer``
    only the unpadded input (backward pads it again; at L = 16 with a padding of 3 the padded
    copy is 1.9x larger); with it the padded buffer the activation was written into (no copy
    forward or backward, more memory). First derivatives only (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pad, dilation, slope, sites, gemm):  # type: ignore[override]
        opts = _OPTIONS
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

    def forward(self, features: torch.Tensor, sites: Sites | None = None) -> torch.Tensor:
        """[B, in_channels, L, L] -> [B, out_channels, L, L], or [B, n_sites, out_channels]."""
        opts = _OPTIONS
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


def _gather_sites(x: torch.Tensor, sites: Sites) -> torch.Tensor:
    """[B, C, L, L] -> [B, n_sites, C] at ``sites.flat``."""
    if x.is_contiguous(memory_format=torch.channels_last):
        # [B, L, L, C] is a view: gather the sites' rows directly
        return x.permute(0, 2, 3, 1).flatten(1, 2).index_select(1, sites.flat)
    return x.flatten(2).index_select(2, sites.flat).transpose(1, 2)
