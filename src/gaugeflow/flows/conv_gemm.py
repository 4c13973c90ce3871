"""Convolution backward passes as matrix products on im2col matrices (issue 18), and the
memory layout the conditioner's convolutions use.

Used by `conv_ops._CircularConv2d` where oneDNN's convolution backward is slow: the first
convolution (few input channels) and the last one at the active sites only.
"""

from __future__ import annotations

import torch

from .conv_options import Sites


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for 4-d tensors on the CPU (oneDNN convolutions run ~1.4x faster on it,
    benchmarks/RESULTS_flow.md); elsewhere the usual contiguous layout (not measured there)."""
    if x.dim() == 4 and x.device.type == "cpu":
        return torch.channels_last
    return torch.contiguous_format


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


def _site_columns(
    xh: torch.Tensor, coset: tuple[int, int, int, int], L: int, kernel: int, dilation: int
) -> torch.Tensor:
    """im2col rows of one coset's sites: [B * n_r * n_c, k^2 C] (a copy).

    `xh` is the padded input as [B, H, W, C] (any strides); row (b, i, j) holds the k x k taps,
    all channels, that the convolution's output at site (r0 + i dr, c0 + j dc) reads.
    """
    r0, c0, dr, dc = coset
    n_r, n_c = L // dr, L // dc
    batch, c_in = xh.shape[0], xh.shape[-1]
    s = xh.stride()
    return xh.as_strided(
        (batch, n_r, n_c, kernel, kernel, c_in),
        (s[0], dr * s[1], dc * s[2], dilation * s[1], dilation * s[2], s[3]),
        xh.storage_offset() + r0 * s[1] + c0 * s[2],
    ).reshape(batch * n_r * n_c, kernel * kernel * c_in)


def _gemm_at_sites(
    padded: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    sites: Sites,
) -> torch.Tensor:
    """`conv_ops._conv_at_sites` as one matrix product per coset on the sites' im2col rows
    (`_site_columns`); any layout of `padded`. [B, n_sites, C_out] in the order of
    ``sites.flat``."""
    xh = padded.permute(0, 2, 3, 1)
    c_out, c_in, kh, kw = weight.shape
    wm = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in).t()
    batch = padded.shape[0]
    parts = []
    for coset in sites.cosets:
        cols = _site_columns(xh, coset, sites.L, kh, dilation)
        y = cols @ wm if bias is None else torch.addmm(bias, cols, wm)
        parts.append(y.view(batch, -1, c_out))
    return torch.cat(parts, dim=1).index_select(1, sites.order)


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
    wm = weight.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in) if need_x else None
    gpad = torch.zeros_like(xh) if need_x else None
    gw = gb = None
    start = 0
    for r0, c0, dr, dc in sites.cosets:
        n_r, n_c = sites.L // dr, sites.L // dc
        g = in_cosets[:, start : start + n_r * n_c].reshape(batch * n_r * n_c, c_out)
        start += n_r * n_c
        if need_w:
            part = g.t() @ _site_columns(xh, (r0, c0, dr, dc), sites.L, kh, dilation)
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
