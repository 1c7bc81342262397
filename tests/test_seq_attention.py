import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.utils import to_dense_adj

from openvaccine.config import load_config
from openvaccine.graphs import EDGE_FEATURES, NUM_EDGE_FEATURES, NUM_NODE_FEATURES, build_graphs
from openvaccine.models import build_model
from openvaccine.models.dropout import dropout
from openvaccine.models.gnn import base_edges
from openvaccine.models.seq_attention import BaseEdges, PairBiasedAttention, alibi_slopes, attend


def test_alibi_slopes_run_from_local_to_global():
    s = alibi_slopes(4)
    assert torch.allclose(s, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]))


def test_bias_masks_padding_and_decays_with_distance():
    layer = PairBiasedAttention(8, 2, edge_dim=3)
    with torch.no_grad():
        layer.edge_bias.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    edges = torch.zeros(1, 4, 4, 3)
    edges[0, 0, 2, 0] = 1.0                                    # a flag-0 edge 0 -> 2
    edges[0, 1, 0, 1] = 0.5
    mask = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        b = layer.bias(BaseEdges.from_dense(edges), mask)
    assert b.shape == (1, 2, 4, 4)
    assert torch.isinf(b[..., 3]).all() and (b[..., :3] > -1e9).all()
    assert b[0, 0, 0, 2] == pytest.approx(1.0 - 2 * 2 ** -4)   # w . e - m |i - j|
    assert b[0, 1, 1, 0] == pytest.approx(1.0 - 1 * 2 ** -8)
    assert b[0, 0, 1, 1] == 0.0


def test_a_strong_pair_bias_makes_each_base_read_its_partner():
    """q = k = 0, values and output the identity, no feed-forward: x_i' = x_i + LN(x)_partner(i)."""
    dim, n = 4, 6
    layer = PairBiasedAttention(dim, 2, edge_dim=1, dropout=0.0).eval()
    with torch.no_grad():
        for prm in layer.parameters():
            prm.zero_()
        layer.norm1.weight.fill_(1.0)
        layer.qkv.weight[2 * dim:].copy_(torch.eye(dim))
        layer.out.weight.copy_(torch.eye(dim))
        layer.edge_bias.weight.fill_(60.0)
    partner = torch.tensor([5, 4, 3, 2, 1, 0])
    edges = torch.zeros(1, n, n, 1)
    edges[0, torch.arange(n), partner, 0] = 1.0
    x = torch.randn(1, n, dim)
    out = layer(x, torch.ones(1, n, dtype=torch.bool), BaseEdges.from_dense(edges))
    ln = torch.nn.functional.layer_norm(x, (dim,))
    assert torch.allclose(out - x, ln[:, partner], atol=1e-4)


def test_base_edges_index_bases_within_each_molecule(train_rows, test_rows):
    rows = pd.DataFrame(train_rows[:2] + test_rows[-1:])                    # 107, 107 and 130 nt
    for codons in (False, True):
        graphs = build_graphs(rows, {"codon_nodes": codons}, progress=False, workers=1)
        b = next(iter(DataLoader(graphs, batch_size=3)))
        base_batch = b.batch[b.is_base]
        edges = base_edges(b, base_batch)
        dense = edges.dense(edges.attr, 3, 130)
        assert dense.shape == (3, 130, 130, NUM_EDGE_FEATURES)
        fwd, pair = EDGE_FEATURES.index("fwd"), EDGE_FEATURES.index("pair")
        for k, row in enumerate(rows.to_dict("records")):
            n = len(row["sequence"])
            assert dense[k, torch.arange(n - 1), torch.arange(1, n), fwd].eq(1).all()
            assert dense[k, n:].eq(0).all() and dense[k, :, n:].eq(0).all()
            opens = [i for i, c in enumerate(row["structure"]) if c == "("]
            assert int(dense[k, ..., pair].sum()) == 2 * len(opens)
        # the dense tensor PyG builds from the same base edges, indexed among all bases of the batch
        base_index = torch.cumsum(b.is_base.long(), 0) - 1
        keep = b.is_base[b.edge_index[0]] & b.is_base[b.edge_index[1]]
        ref = to_dense_adj(base_index[b.edge_index[:, keep]], base_batch, b.edge_attr[keep], max_num_nodes=130,
                           batch_size=3)
        assert torch.equal(dense, ref)
        if codons:                                              # codon nodes neither shift nor add base edges
            assert not b.is_base.all()


def test_edge_bias_on_sparse_edges_equals_it_on_dense_features():
    torch.manual_seed(0)
    layer = PairBiasedAttention(8, 2, edge_dim=3)
    dense = torch.randn(2, 5, 5, 3) * (torch.rand(2, 5, 5, 1) < 0.4)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    pos = torch.arange(5)
    want = layer.edge_bias(dense).permute(0, 3, 1, 2) - layer.slopes[:, None, None] * (pos[:, None] - pos).abs()
    want = want.masked_fill(~mask[:, None, None, :], float("-inf"))
    with torch.no_grad():
        assert torch.allclose(layer.bias(BaseEdges.from_dense(dense), mask), want, atol=1e-6)
    twice = BaseEdges(*(torch.cat([t, t]) for t in BaseEdges.from_dense(dense)))   # parallel edges add up
    assert torch.allclose(twice.dense(twice.attr, 2, 5), 2 * dense)


def test_attend_matches_sdpa_and_drops_weights_on_the_cpu():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    bias = torch.randn(2, 4, 7, 7)
    bias[1, :, :, 5:] = float("-inf")                        # padding keys
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.allclose(attend(q, k, v, bias), want, atol=1e-6)
    torch.manual_seed(1)
    got = attend(q, k, v, bias, p=0.3)
    torch.manual_seed(1)
    weights = dropout(torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5 + bias, -1), 0.3)
    assert torch.allclose(got, weights @ v, atol=1e-5)
    assert 0.2 < float((weights[0] == 0).float().mean()) < 0.4      # ~30 % of the weights dropped
    assert not torch.allclose(got, want, atol=1e-3)
    torch.manual_seed(2)
    big = torch.randn(64, 4, 16, 8, requires_grad=True)
    small = big / 10                                                  # near-uniform weights over 16 keys
    mean = torch.stack([attend(small, small, big, torch.zeros(64, 4, 16, 16), p=0.3) for _ in range(200)]).mean(0)
    want = F.scaled_dot_product_attention(small, small, big)
    assert torch.allclose(mean, want, atol=0.1) and float((mean - want).abs().mean()) < 0.02   # E[dropped] = kept
    mean.sum().backward()
    assert big.grad is not None and big.grad.abs().sum() > 0


def test_attention_model_trains_and_refuses_negative_layers(train_rows):
    graphs = build_graphs(pd.DataFrame(train_rows[:3]), progress=False, workers=1)
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    torch.manual_seed(0)
    m = build_model(load_config("smoke", ["model.attn_layers=2"]), NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    assert len(m.attn) == 2
    out = m(batch)
    assert out.shape == (3 * 107, 5)
    out.pow(2).mean().backward()
    assert m.attn[0].edge_bias.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="attn_layers must be >= 0"):
        build_model(load_config("smoke", ["model.attn_layers=-1"]), NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
