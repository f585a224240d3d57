"""GNN-MIL (notebook ``MilGCN``) in plain PyTorch: graph, propagation, parameter count, tiny bags."""
from __future__ import annotations

import torch

from milkit.models import create_model
from milkit.models.milgcn import knn_adjacency


def notebook_propagation(x: torch.Tensor) -> torch.Tensor:
    """The notebook's graph (``topk(cdist, 3)``, edges self → 1st and 2nd neighbour) with PyG ``gcn_norm``
    (self-loops added, degree at the target), as a dense (target, source) matrix for one bag ``(N, D)``."""
    order = torch.topk(torch.cdist(x, x), 3, largest=False).indices
    src = torch.cat([order[:, 0], order[:, 0]])
    dst = torch.cat([order[:, 1], order[:, 2]])
    n = x.shape[0]
    src, dst = torch.cat([src, torch.arange(n)]), torch.cat([dst, torch.arange(n)])
    deg = torch.zeros(n).index_add_(0, dst, torch.ones(len(dst)))
    prop = torch.zeros(n, n)
    prop.index_put_((dst, src), deg[src].rsqrt() * deg[dst].rsqrt(), accumulate=True)
    return prop


def test_propagation_matches_the_notebook_graph_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    x[1, 5:] = 1e3
    prop = knn_adjacency(x, mask, k=2)
    torch.testing.assert_close(prop[0], notebook_propagation(x[0]))
    torch.testing.assert_close(prop[1, :5, :5], notebook_propagation(x[1, :5]))
    assert (prop[1, 5:] == 0).all() and (prop[1, :, 5:] == 0).all()


def test_parameter_count_is_the_notebooks() -> None:
    model = create_model("milgcn", in_dim=16, num_classes=1)  # notebook: MilGCN(16, 128)
    assert sum(p.numel() for p in model.parameters()) == (16 * 128 + 128) + 2 * (128 * 128 + 128) + (128 + 1)


def test_forward_on_bags_of_one_and_two_instances() -> None:
    model = create_model("milgcn", in_dim=4, num_classes=1, dim=8).eval()
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        one = model(x[:, :1])
        # a single instance is its own graph: P = [1], so the GCN stack is an MLP on it
        h = x[0, :1]
        for i, conv in enumerate(model.convs):
            h = conv.lin(h) + conv.bias
            h = h.relu() if i < len(model.convs) - 1 else h
        torch.testing.assert_close(one.logits[0], model.head[1](h[0]))
        two = model(x)
        # two instances are each other's only neighbour: P = [[1/2, 1/2], [1/2, 1/2]], both nodes end equal
        torch.testing.assert_close(knn_adjacency(x, torch.ones(1, 2, dtype=torch.bool), 2)[0], torch.full((2, 2), 0.5))
        torch.testing.assert_close(two.instance_scores[0, 0], two.instance_scores[0, 1])
        batched = model(torch.cat([x, torch.full_like(x, 7.0)]), torch.tensor([[True, False], [True, True]]))
        torch.testing.assert_close(batched.logits[0], one.logits[0])
