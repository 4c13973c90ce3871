"""Kind ``dag`` (Table 3): the size of the autograd graph of one loss call.

``nodes`` = unique autograd nodes (``grad_fn`` objects, including the ``AccumulateGrad`` leaves
of the parameters) reachable from the estimator's loss, found by an iterative walk over
``next_functions`` (graphs deeper than the recursion limit are fine), into the conditioner
graphs that REINFORCE's replay nodes run in their backward (gaugeflow.flows.replay). ``node_types`` counts
them by type name. :mod:`gaugeflow.measure.fits` fits nodes = a L^2 + b over several L.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ..flows.replay import replayed_graph_root
from .setup import MeasureSetup, gradient_step, loss_call

__all__ = [
    "graph_nodes",
    "count_graph_nodes",
    "node_name",
    "node_type_counts",
    "measure_dag",
    "summarize_dag",
]


def _root_node(root: torch.Tensor | Any) -> Any:
    if isinstance(root, torch.Tensor):
        if root.grad_fn is None:
            raise ValueError("the tensor has no grad_fn: it is not part of an autograd graph")
        return root.grad_fn
    return root


def graph_nodes(root: torch.Tensor | Any) -> list[Any]:
    """Unique autograd nodes reachable from `root` (a tensor or a node), walked iteratively.

    Node objects are kept alive in the result, so their identity is a valid key.
    """
    start = _root_node(root)
    seen: set[Any] = {start}
    order = [start]
    stack = [start]
    while stack:
        node = stack.pop()
        children = [child for child, _ in node.next_functions]
        # REINFORCE's replayed conditioners: their backward runs the graph recorded in the
        # sampling pass, so it is part of what the loss's backward does
        children.append(replayed_graph_root(node))
        for child in children:
            if child is not None and child not in seen:
                seen.add(child)
                order.append(child)
                stack.append(child)
    return order


def count_graph_nodes(root: torch.Tensor | Any) -> int:
    """Number of unique autograd nodes reachable from `root`."""
    return len(graph_nodes(root))


def node_name(node: Any) -> str:
    """A node's type name without the ``torch::autograd::`` prefix (CopySlices, ...)."""
    return node.name().removeprefix("torch::autograd::")


def node_type_counts(root: torch.Tensor | Any) -> dict[str, int]:
    """Count of reachable nodes per type name, most frequent first."""
    counts = Counter(node_name(n) for n in graph_nodes(root))
    return dict(counts.most_common())


def measure_dag(setup: MeasureSetup, warmup: int = 0) -> dict[str, Any]:
    """Size of the autograd graph of one loss call (the estimator's loss)."""
    for _ in range(warmup):
        gradient_step(setup)
    setup.zero_grad()
    _, out = loss_call(setup)
    types = node_type_counts(out.loss)
    nodes = sum(types.values())
    del out
    return {
        "nodes": nodes,
        "accumulate_grad_nodes": types.get("AccumulateGrad", 0),
        "node_types": types,
    }


def summarize_dag(results: dict[str, Any]) -> str:
    return f"{results['nodes']} graph nodes"
