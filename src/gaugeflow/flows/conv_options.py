"""Implementation switches of the conditioner (issue 18) and lattice sites as strided cosets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch

__all__ = [
    "GEMM_SITES_MAX_L",
    "SWAPPED_BACKWARD_MAX",
    "ConvOptions",
    "Sites",
    "conv_options",
    "current_options",
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
    - ``gemm_last_small``: with ``active_last``, on lattices up to ``GEMM_SITES_MAX_L`` the last
      convolution itself is one matrix product per coset on the sites' im2col rows: there
      oneDNN's strided convolution over the tall coset view runs at a fraction of its usual
      speed (L = 4, batch 128, 16 channels: 630 vs 217 us; at L = 16, 64 channels the
      convolution is faster; benchmarks/RESULTS.md, session 7).
    - ``gather_last``: with ``active_last``, the last convolution gathers the taps of the active
      sites through a wrapped index and multiplies once (gaugeflow.flows.conv_gather): no
      padded buffer, no per-tap loops, forward or backward; before the gemm paths above.
    - ``gather_first``: on lattices up to ``conv_gather.GATHER_FULL_MAX_L`` the first
      convolution likewise, on every site.
    - ``swapped_backward``: the backward of a dense hidden convolution (CPU, "same" padding,
      at most ``SWAPPED_BACKWARD_MAX`` output sites per batch) as two forward convolutions:
      the input gradient is the circular convolution of the output gradient with the flipped,
      transposed kernel (no padded gradient to fold), the weight gradient a convolution of the
      input with its batch and channel axes swapped, stride = dilation (oneDNN's weight
      gradient runs at about half its forward speed here; benchmarks/RESULTS.md, session 13).
    """

    active_last: bool = True
    padded_buffer: bool = True
    gemm_first: bool = True
    gemm_last: bool = True
    gemm_last_small: bool = True
    gather_last: bool = True
    gather_first: bool = True
    swapped_backward: bool = True


#: largest lattice on which ``gemm_last_small`` applies
GEMM_SITES_MAX_L = 8

#: most output sites per batch (batch x L x L) for which ``swapped_backward`` applies. Up to
#: there it was 1.13-2.26x faster than oneDNN's backward at 16, 32 and 64 channels, 1 and 2
#: threads (L = 16, batch 64, 64 channels, 2 threads: 21.9 -> 18.8 ms). Beyond it (batch 256
#: at L = 12 and 16) it was 1.03-1.71x with the allocator tuned (gaugeflow.allocator, as the
#: command line does) but 0.80-1.05x on one thread without (a plain Python caller: its large
#: transposed copies then come from fresh pages); benchmarks/RESULTS.md, session 13
SWAPPED_BACKWARD_MAX = 2**15

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
