"""GDAT specifics beyond the registry-wide contract tests: the strided grouping and real-instance group tokens."""
from __future__ import annotations

import torch

from milkit.models import create_model
from milkit.models.gdat import GroupedDoubleAttention, group_index


def test_group_index_is_strided_over_a_square_grid() -> None:
    # n = 10, r = 2: side = ceil(sqrt(10)) = 4 (already a multiple of 2); index i -> (i // 4 % 2) * 2 + i % 4 % 2
    mask = torch.ones(1, 10, dtype=torch.bool)
    expected = [(i // 4 % 2) * 2 + (i % 4) % 2 for i in range(10)]
    assert group_index(mask, 2)[0].tolist() == expected
    # n = 5, r = 4: side = 3 -> 4; all instances on row 0/1: 0,1,2,3 | 4 -> row 1, col 0 -> group 4
    assert group_index(torch.ones(1, 5, dtype=torch.bool), 4)[0].tolist() == [0, 1, 2, 3, 4]


def test_group_index_ignores_padding_position() -> None:
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    g = group_index(mask, 2)
    assert g[0, 3:].tolist() == [4, 4]  # padding goes to the dropped group r²
    assert g[0, :3].tolist() == group_index(mask[:1, :3], 2)[0].tolist()


def test_group_tokens_are_means_of_real_instances_only() -> None:
    attn = GroupedDoubleAttention(dim=4, num_heads=2, region_size=2)
    x = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, True, True, False]])
    x[0, 5] = 1e6  # padding content must not enter
    tokens, nonempty = attn.group_tokens(x, mask)
    groups = group_index(mask, 2)[0]
    for j in range(4):
        members = [i for i in range(5) if groups[i] == j]
        assert bool(nonempty[0, j]) == bool(members)
        if members:
            torch.testing.assert_close(tokens[0, j], x[0, members].mean(0))


def test_gdat_exposes_instance_embeddings_for_bppl() -> None:
    model = create_model("gdat", 6, 2, dim=8, depth=1, num_heads=2, region_size=2, attn_dim=4).eval()
    out = model(torch.randn(2, 7, 6), torch.tensor([[True] * 7, [True] * 4 + [False] * 3]))
    h = out.extras["instance_embeddings"]
    assert h.shape == (2, 7, 8)
    # the bag embedding is the attention-weighted mean of the instance embeddings
    a = torch.softmax(out.instance_scores, dim=1)
    torch.testing.assert_close(out.bag_embedding, (a.unsqueeze(-1) * h).sum(1))
