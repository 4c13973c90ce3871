"""Circular convolutions as one gather of taps and one matrix product (issue 18).

On the small lattices of the CPU demo (L = 4, 8; 16 channels) a conditioner convolution is a
few megaflops, and the time of padding, oneDNN's setup and the per-tap loops of the strided
paths is most of its cost. Here the k x k taps every output site reads are one
``index_select`` through a precomputed index that wraps around the torus (no padded copy),
the convolution is one matrix product on those rows, and its input gradient is one
``index_add_`` of the product of the output gradient with the weights back through the same
index (no fold of a padded gradient). The same function as ``F.pad(mode='circular')`` +
``F.conv2d``; tests/test_convfloor.py checks it in float64 against plain torch.

Used for the last convolution at the active sites (any L: its work is proportional to the
sites used) and for the first convolution on lattices up to ``GATHER_FULL_MAX_L`` (beyond,
oneDNN's forward is faster; benchmarks/RESULTS.md, session 10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["GATHER_FULL_MAX_L", "gather_conv", "tap_index"]

#: largest lattice on which the first (full-lattice) convolution gathers its taps
GATHER_FULL_MAX_L = 8

_TAP_INDEX: dict[tuple, torch.Tensor] = {}


def tap_index(
    L: int,
    kernel: int,
    dilation: int,
    device: torch.device | str = "cpu",
    flat_sites: torch.Tensor | None = None,
    key: tuple | None = None,
) -> torch.Tensor:
    """Flat site indices (row * L + col) the convolution's output at each site reads.

    Shape [n_sites * kernel^2]: for output site s (in the order of `flat_sites`, all L^2 sites
    row-major if None) its taps (ky, kx) row-major, tap (ky, kx) reading the site
    (row + dilation (ky - c), col + dilation (kx - c)) mod L, c = (kernel - 1) / 2. Cached
    under `key` (with L, kernel, dilation and the device) when a key is given.
    """
    full_key = None
    if key is not None:
        full_key = (L, kernel, dilation, str(device), key)
        cached = _TAP_INDEX.get(full_key)
        if cached is not None:
            return cached
    if kernel % 2 != 1:
        raise ValueError(f"tap_index needs an odd kernel; got {kernel}")
    sites = torch.arange(L * L) if flat_sites is None else flat_sites.cpu()
    row, col = sites // L, sites % L
    offsets = dilation * (torch.arange(kernel) - (kernel - 1) // 2)
    rows = (row[:, None, None] + offsets[None, :, None]) % L
    cols = (col[:, None, None] + offsets[None, None, :]) % L
    index = (rows * L + cols).flatten().to(device)
    if full_key is not None:
        _TAP_INDEX[full_key] = index
    return index


def _channels_last_rows(a: torch.Tensor) -> torch.Tensor:
    """[B, C, L, L] -> [B, L * L, C] (a view for channels_last input, else a copy)."""
    return a.permute(0, 2, 3, 1).reshape(a.shape[0], a.shape[2] * a.shape[3], a.shape[1])


#: fewest gathered elements (batch x taps read x channels) for which `_gather_rows` indexes
#: one flat row matrix (with more than one thread), see there
FLAT_GATHER_MIN = 2**19


def _flat(batch: int, n_taps: int, channels: int) -> bool:
    """Whether to gather through one flat row matrix: with more than one thread and at least
    `FLAT_GATHER_MIN` elements (2 threads, L = 16, 64 channels, batch 64: select 1.9x and add
    2.1x faster; with one thread, or on the small lattices of the CPU demo, the per-sample
    index is faster; benchmarks/RESULTS.md, session 12)."""
    return torch.get_num_threads() > 1 and batch * n_taps * channels >= FLAT_GATHER_MIN


def _batch_index(index: torch.Tensor, batch: int, n_rows: int) -> torch.Tensor:
    """`index` into each sample's rows -> one index into the [batch * n_rows, C] row matrix:
    the same rows in the same order (``index_add_`` still adds each output row's taps in
    index order)."""
    offsets = torch.arange(0, batch * n_rows, n_rows, device=index.device)
    return (offsets[:, None] + index[None, :]).flatten()


def _gather_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows.index_select(1, index)`` for [B, n_rows, C] rows: [B, len(index), C]."""
    batch, n_rows, channels = rows.shape
    if _flat(batch, index.numel(), channels):
        flat = _batch_index(index, batch, n_rows)
        return rows.reshape(-1, channels).index_select(0, flat).view(batch, -1, channels)
    return rows.index_select(1, index)


def _scatter_rows(like: torch.Tensor, index: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Adjoint of `_gather_rows`: zeros shaped like `like` [B, n_rows, C] with the tap rows
    `taps` [B, len(index), C] added at `index`."""
    batch, n_rows, channels = like.shape
    if _flat(batch, index.numel(), channels):
        flat = _batch_index(index, batch, n_rows)
        out = like.new_zeros(batch * n_rows, channels)
        return out.index_add_(0, flat, taps.reshape(-1, channels)).view(batch, n_rows, channels)
    return torch.zeros_like(like).index_add_(1, index, taps)


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, k, k] -> [C_out, k * k * C_in], taps outer, channels inner."""
    c_out, c_in, kh, kw = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in)


class _GatherConv(torch.autograd.Function):
    """[leaky_relu,] circular convolution at the sites of `index`, by gather + matrix product.

    Saves the (activated) input as [B, L^2, C] rows and the weight; first derivatives only.
    With ``full_L`` the output is the lattice [B, C_out, L, L] (channels_last), else
    [B, n_sites, C_out].
    """

    @staticmethod
    def forward(ctx, x, weight, bias, index, slope, full_L):  # type: ignore[override]
        a = F.leaky_relu(x, slope) if slope is not None else x
        rows = _channels_last_rows(a)
        batch, c_out = x.shape[0], weight.shape[0]
        taps = weight.shape[2] * weight.shape[3]
        n_sites = index.numel() // taps
        cols = _gather_rows(rows, index).view(batch * n_sites, -1)
        wm = _weight_matrix(weight).t()
        y = cols @ wm if bias is None else torch.addmm(bias, cols, wm)
        ctx.save_for_backward(rows, weight, index)
        ctx.slope, ctx.lattice, ctx.has_bias = slope, x.shape[2:], bias is not None
        y = y.view(batch, n_sites, c_out)
        if full_L:
            return y.view(batch, full_L, full_L, c_out).permute(0, 3, 1, 2)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        rows, weight, index = ctx.saved_tensors
        c_out, c_in = weight.shape[0], weight.shape[1]
        if grad.dim() == 4:  # the full lattice: [B, C_out, L, L] -> site rows
            grad = grad.permute(0, 2, 3, 1)
        g = grad.reshape(-1, c_out)
        gx = gw = gb = None
        batch = rows.shape[0]
        if ctx.needs_input_grad[1]:
            cols = _gather_rows(rows, index).view(g.shape[0], -1)
            kh, kw = weight.shape[2], weight.shape[3]
            gw = (g.t() @ cols).view(c_out, kh, kw, c_in).permute(0, 3, 1, 2).contiguous()
        if ctx.needs_input_grad[2] and ctx.has_bias:
            gb = g.sum(dim=0)
        if ctx.needs_input_grad[0]:
            tap_grads = (g @ _weight_matrix(weight)).view(batch, -1, c_in)
            g_rows = _scatter_rows(rows, index, tap_grads)
            if ctx.slope is not None:  # from the output: positive exactly where the input is
                g_rows = torch.ops.aten.leaky_relu_backward(g_rows, rows, ctx.slope, True)
            L_h, L_w = ctx.lattice
            gx = g_rows.view(batch, L_h, L_w, c_in).permute(0, 3, 1, 2)
        return gx, gw, gb, None, None, None


def gather_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor,
    slope: float | None = None,
    full_L: int | None = None,
) -> torch.Tensor:
    """``conv2d(circular_pad(leaky_relu(x, slope)))`` read at the sites of `index`.

    `index` comes from `tap_index` with the convolution's kernel and dilation. Returns
    [B, n_sites, C_out], or with ``full_L`` (all sites, row-major) the lattice
    [B, C_out, L, L] in channels_last.
    """
    return _GatherConv.apply(x, weight, bias, index, slope, full_L)
