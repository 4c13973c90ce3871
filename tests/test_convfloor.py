"""Issue 18: the faster conditioner evaluations compute the same training gradients.

The reference here is written out with stock torch (``F.pad(mode='circular')``,
``F.conv2d``, ``F.leaky_relu`` on the whole lattice, then the active sites read out), not with
any of gaugeflow's own convolution code, so a change in the optimised paths that alters the
numbers beyond float64 rounding fails these tests.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gaugeflow.estimators import get_estimator
from gaugeflow.flows import UniformPrior, build_flow
from gaugeflow.flows.coupling import _active_cosets
from gaugeflow.flows.masks import coupling_masks
from gaugeflow.flows.nets import ConvOptions, Sites, conv_options, current_options
from gaugeflow.physics.action import SchwingerAction

SWITCHES = (
    "active_last",
    "padded_buffer",
    "gemm_first",
    "gemm_last",
    "gather_last",
    "gather_first",
    "swapped_backward",
)


def reference_net(net: nn.Sequential, features: torch.Tensor, sites: Sites | None = None):
    """The conditioner as plain torch: circular F.pad, F.conv2d, F.leaky_relu."""
    x = features
    for module in net:
        if isinstance(module, nn.LeakyReLU):
            x = F.leaky_relu(x, module.negative_slope)
            continue
        p = module.padding[0]
        x = F.conv2d(
            F.pad(x, (p, p, p, p), mode="circular"),
            module.weight,
            module.bias,
            dilation=module.dilation,
        )
    if sites is None:
        return x
    return x.flatten(2)[:, :, sites.flat].transpose(1, 2)


def small_flow(L: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    flow = build_flow(
        {"L": L, "n_layers": 8, "hidden_channels": 8, "dtype": "float64", "device": "cpu"}
    )
    with torch.no_grad():  # splines far from the identity
        for layer in flow.layers:
            layer.net[-1].weight.mul_(3.0)
            layer.net[-1].bias.mul_(3.0)
    return flow


def step_gradients(flow, estimator: str, L: int, reference: bool):
    """Loss, logq and the parameter gradients of one training step's loss on fixed inputs."""
    nets = [layer.net for layer in flow.layers]
    if reference:
        for net in nets:
            net.forward = lambda f, s=None, net=net: reference_net(net, f, s)
    try:
        prior = UniformPrior(L, dtype=torch.float64)
        z = prior.sample(6, torch.Generator().manual_seed(5))
        action = SchwingerAction(beta=2.0, kappa=0.26, method="eo", assembly="scatter")
        flow.zero_grad(set_to_none=True)
        out = get_estimator(estimator)(flow, prior, action.log_prob, z)
        out.loss.backward()
        grads = [p.grad.clone() for p in flow.parameters()]
        return out.loss.detach(), out.logq, grads
    finally:
        for net in nets:
            net.__dict__.pop("forward", None)


@pytest.mark.parametrize("estimator", ["reinforce", "rt", "path"])
@pytest.mark.parametrize("L", [4, 8])
def test_training_step_gradient_matches_the_plain_torch_conditioner(estimator, L):
    flow = small_flow(L)
    assert current_options() == ConvOptions()  # all switches on: the default
    loss, logq, grads = step_gradients(flow, estimator, L, reference=False)
    loss_ref, logq_ref, grads_ref = step_gradients(flow, estimator, L, reference=True)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(logq, logq_ref, rtol=0, atol=1e-10)
    scale = max(g.abs().max().item() for g in grads_ref)
    assert scale > 1e-3  # the gradient is not trivially zero
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_alone_keeps_the_reinforce_gradient(switch):
    L = 8
    flow = small_flow(L, seed=1)
    # gemm_last(_small) and gather_last evaluate active_last's convolution differently: they
    # need that switch
    needs_active = switch.startswith("gemm_last") or switch == "gather_last"
    on = {switch, "active_last"} if needs_active else {switch}
    with conv_options(all=False, **dict.fromkeys(on, True)) as opts:
        assert [getattr(opts, s) for s in SWITCHES] == [s in on for s in SWITCHES]
        _, _, grads = step_gradients(flow, "reinforce", L, reference=False)
    _, _, grads_ref = step_gradients(flow, "reinforce", L, reference=True)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    assert current_options() == ConvOptions()  # restored


def test_the_switches_change_only_rounding_in_float32():
    """Same flow in float32: all switches on against all off, forward and gradients."""
    L = 8
    flow = small_flow(L, seed=2).float()
    z = UniformPrior(L).sample(8, torch.Generator().manual_seed(0))

    def run():
        flow.zero_grad(set_to_none=True)
        phi, log_det = flow(z)
        (log_det.sum() + phi.sin().sum()).backward()
        return [phi.detach(), log_det.detach()] + [p.grad.clone() for p in flow.parameters()]

    new = run()
    with conv_options(all=False):
        ref = run()
    for a, b in zip(new, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("L", [4, 8, 12])
def test_active_cosets_are_the_active_sites(L):
    for mu in (0, 1):
        for k in range(4):
            active = coupling_masks(L, mu, k).active
            sites = Sites.from_mask(active, _active_cosets(L, mu, k))
            assert torch.equal(sites.flat, active.flatten().nonzero().squeeze(1))
            listed = torch.cat(
                [
                    (torch.arange(r0, L, dr)[:, None] * L + torch.arange(c0, L, dc)).flatten()
                    for r0, c0, dr, dc in sites.cosets
                ]
            )
            assert torch.equal(listed[sites.order], sites.flat)


def test_sites_refuse_cosets_that_miss_the_mask():
    active = coupling_masks(8, 0, 1).active
    with pytest.raises(ValueError, match="cover"):
        Sites.from_mask(active, _active_cosets(8, 0, 2))
    with pytest.raises(ValueError, match="cover"):
        Sites.from_mask(active, _active_cosets(8, 0, 1)[:1])


@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("gemm_small", [False, True])
@pytest.mark.parametrize("padded_buffer", [True, False])
def test_last_convolution_at_the_sites_matches_the_full_one(padded_buffer, gemm_small, gather):
    """Both layouts of the padded input (the copy-free tall view and plain slices), with and
    without grad, by strided convolutions and by im2col matrix products (`gemm_last_small`),
    against the plain-torch conditioner read out at the active sites."""
    from gaugeflow.flows import nets

    torch.manual_seed(4)
    L = 8
    net = nets.ConditionerCNN(6, 24, hidden_channels=5).double()
    for mu, k in [(0, 1), (1, 3)]:
        sites = Sites.from_mask(coupling_masks(L, mu, k).active, _active_cosets(L, mu, k))
        x = torch.randn(3, 6, L, L, dtype=torch.float64)
        ref = reference_net(net, x, sites)
        with conv_options(
            all=False,
            active_last=True,
            padded_buffer=padded_buffer,
            gemm_last_small=gemm_small,
            gather_last=gather,
            gather_first=gather,
        ):
            with torch.no_grad():
                torch.testing.assert_close(net(x, sites), ref, rtol=0, atol=1e-12)
            torch.testing.assert_close(net(x, sites), ref, rtol=0, atol=1e-12)
    padded = nets._leaky_pad_into(torch.randn(2, 3, L, L), 3, 0.01, rows=4)
    assert nets._coset_view(padded, 1, 1, 4) is not None  # the tall view applies
    assert nets._coset_view(nets._pad_into(torch.randn(2, 3, L, L), 3), 1, 1, 4) is None


@pytest.mark.parametrize("flat", [False, True], ids=["per-sample-index", "flat-rows"])
@pytest.mark.parametrize("L, kernel, dilation", [(4, 3, 1), (8, 3, 3), (8, 5, 2), (12, 3, 2)])
def test_gather_conv_is_the_circular_convolution_and_its_gradient(
    L, kernel, dilation, flat, monkeypatch
):
    """`gather_conv` against F.pad(mode='circular') + F.conv2d (+ leaky_relu before), on the
    whole lattice and at a coset of sites, values and all first derivatives, in float64; with
    the taps gathered per sample and through one flat row matrix (chosen by size and threads,
    forced here)."""
    from gaugeflow.flows import conv_gather
    from gaugeflow.flows.conv_gather import gather_conv, tap_index

    calls = []
    monkeypatch.setattr(conv_gather, "_flat", lambda *shape: calls.append(shape) or flat)

    gen = torch.Generator().manual_seed(L + kernel + dilation)
    x = torch.randn(3, 4, L, L, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(5, 4, kernel, kernel, dtype=torch.float64, generator=gen)
    weight.requires_grad_()
    bias = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    pad = dilation * (kernel - 1) // 2
    sites = Sites.from_mask(coupling_masks(L, 1, 2).active, _active_cosets(L, 1, 2))
    for slope in (None, 0.01):
        a = x if slope is None else F.leaky_relu(x, slope)
        ref = F.conv2d(F.pad(a, (pad,) * 4, mode="circular"), weight, bias, dilation=dilation)
        full = gather_conv(x, weight, bias, tap_index(L, kernel, dilation), slope, full_L=L)
        at_sites = gather_conv(
            x, weight, bias, tap_index(L, kernel, dilation, "cpu", sites.flat), slope
        )
        ref_sites = ref.flatten(2)[:, :, sites.flat].transpose(1, 2)
        torch.testing.assert_close(full, ref, rtol=0, atol=1e-12)
        assert full.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(at_sites, ref_sites, rtol=0, atol=1e-12)
        for out, out_ref in ((full, ref), (at_sites, ref_sites)):
            g = torch.randn(out.shape, dtype=torch.float64, generator=gen)
            got = torch.autograd.grad(out, (x, weight, bias), g, retain_graph=True)
            want = torch.autograd.grad(out_ref, (x, weight, bias), g, retain_graph=True)
            for a_, b_ in zip(got, want, strict=True):
                torch.testing.assert_close(a_, b_, rtol=0, atol=1e-11)
    assert calls  # the path under test was the one taken


def test_flat_gather_only_with_threads_and_size(monkeypatch):
    from gaugeflow.flows import conv_gather

    big = (64, 576, 64)  # L = 16, batch 64, the active sites' 9 taps, 64 channels
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert conv_gather._flat(*big) and not conv_gather._flat(128, 36, 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not conv_gather._flat(*big)


def test_tap_index_wraps_around_the_torus():
    from gaugeflow.flows.conv_gather import tap_index

    index = tap_index(4, 3, 1).view(16, 3, 3)
    # site (0, 0) reads rows 3, 0, 1 and columns 3, 0, 1
    assert index[0].tolist() == [[15, 12, 13], [3, 0, 1], [7, 4, 5]]
    # dilation 2 on L = 4: offsets -2, 0, 2 wrap onto the same rows
    assert tap_index(4, 3, 2).view(16, 3, 3)[5].tolist() == [[15, 13, 15], [7, 5, 7], [15, 13, 15]]
    with pytest.raises(ValueError, match="odd kernel"):
        tap_index(4, 2, 1)


@pytest.mark.parametrize("slope", [None, 0.01])
@pytest.mark.parametrize(
    "L, c_in, c_out, kernel, dilation",
    [(4, 3, 5, 3, 1), (8, 4, 4, 3, 2), (12, 5, 3, 3, 3), (8, 2, 3, 5, 1)],
)
def test_swapped_backward_is_the_circular_convolution_gradient(
    L, c_in, c_out, kernel, dilation, slope, monkeypatch
):
    """`swapped_backward` (input gradient by the flipped kernel, weight gradient by the
    batch/channel-swapped convolution) against autograd through F.pad(mode='circular') +
    F.conv2d (+ leaky_relu before): every first derivative, float64, through the
    conditioner's own `_CircularConv2d`, with and without the padded buffer kept."""
    from gaugeflow.flows import conv_ops

    torch.manual_seed(L + kernel + dilation)
    pad = dilation * (kernel - 1) // 2
    x = torch.randn(3, c_in, L, L, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_out, c_in, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, c_out, L, L, dtype=torch.float64)
    a = x if slope is None else F.leaky_relu(x, slope)
    ref = F.conv2d(F.pad(a, (pad,) * 4, mode="circular"), w, b, dilation=dilation)
    expected = torch.autograd.grad((ref * up).sum(), (x, w, b))
    used = []
    real = conv_ops._swapped_conv_backward
    monkeypatch.setattr(conv_ops, "_swapped_conv_backward", lambda *a: used.append(1) or real(*a))
    for keep_padded in (True, False):
        used.clear()
        with conv_options(all=False, swapped_backward=True, padded_buffer=keep_padded):
            y = conv_ops._CircularConv2d.apply(x, w, b, pad, dilation, slope, None, False)
            got = torch.autograd.grad((y * up).sum(), (x, w, b))
        assert used, "the swapped backward was not taken"
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-11)
    # only the weight's gradient asked for (an input that needs none, like fixed features)
    xd = x.detach()
    with conv_options(all=False, swapped_backward=True):
        y = conv_ops._CircularConv2d.apply(xd, w, None, pad, dilation, slope, None, False)
        (gw,) = torch.autograd.grad((y * up).sum(), (w,))
    torch.testing.assert_close(gw, expected[1], rtol=0, atol=1e-11)


def test_swapped_backward_rule():
    """Taken on the CPU for "same" odd square kernels up to SWAPPED_BACKWARD_MAX output sites
    per batch; not for other paddings, even kernels, larger batches, or with the switch off."""
    from gaugeflow.flows.conv_ops import _swapped_backward
    from gaugeflow.flows.conv_options import SWAPPED_BACKWARD_MAX

    opts = ConvOptions()
    w = torch.zeros(4, 4, 3, 3)
    x = torch.zeros(SWAPPED_BACKWARD_MAX // 64, 4, 8, 8)
    assert _swapped_backward(opts, x, w, 2, 2)
    assert not _swapped_backward(opts, torch.zeros(x.shape[0] + 1, 4, 8, 8), w, 2, 2)
    assert not _swapped_backward(opts, x, w, 1, 2)  # padding other than "same"
    assert not _swapped_backward(opts, x, torch.zeros(4, 4, 2, 2), 1, 1)  # even kernel
    assert not _swapped_backward(opts, x, torch.zeros(4, 4, 3, 5), 2, 1)  # not square
    with conv_options(swapped_backward=False) as off:
        assert not _swapped_backward(off, x, w, 2, 2)


def test_conv_options_names_unknown_switches():
    with pytest.raises(ValueError, match="unknown conv option"):
        with conv_options(fast=True):
            pass


def test_conv_backward_benchmark_compares_equal_gradients(tmp_path):
    """benchmarks/bench_conv_backward.py times the same gradients both ways (float32
    rounding apart), states the rule's choice per shape, writes its JSON, refuses bad sizes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_conv_backward

    row = bench_conv_backward.time_shape(channels=4, L=4, batch=3, dilation=2, rounds=1)
    assert row["max_abs_difference"] < 1e-4
    assert row["rule_takes_swapped"] and row["onednn_ms"] > 0 and row["swapped_ms"] > 0
    out = tmp_path / "rows.json"
    bench_conv_backward.main(
        ["--channels", "4", "--L", "4", "--batch", "2", "--threads", "1", "--rounds", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert len(json.loads(out.read_text())["rows"]) == 1
    with pytest.raises(SystemExit):
        bench_conv_backward.main(["--L", "0"])
