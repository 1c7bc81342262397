import pandas as pd
import pytest
import torch
from torch_geometric.loader import DataLoader

from openvaccine.config import load_config
from openvaccine.graphs import EDGE_FEATURES, NUM_EDGE_FEATURES, NUM_NODE_FEATURES, build_graphs
from openvaccine.models import build_model
from openvaccine.models.gnn import dense_base_edges
from openvaccine.models.seq_attention import PairBiasedAttention, alibi_slopes


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
        b = layer.bias(edges, mask)
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
    out = layer(x, torch.ones(1, n, dtype=torch.bool), edges)
    ln = torch.nn.functional.layer_norm(x, (dim,))
    assert torch.allclose(out - x, ln[:, partner], atol=1e-4)


def test_dense_edges_index_bases_within_each_molecule(train_rows):
    rows = pd.DataFrame(train_rows[:2])
    for codons in (False, True):
        graphs = build_graphs(rows, {"codon_nodes": codons}, progress=False, workers=1)
        b = next(iter(DataLoader(graphs, batch_size=2)))
        base_batch = b.batch[b.is_base]
        dense = dense_base_edges(b, base_batch, 2, 107)
        assert dense.shape == (2, 107, 107, NUM_EDGE_FEATURES)
        fwd, pair = EDGE_FEATURES.index("fwd"), EDGE_FEATURES.index("pair")
        for k, row in enumerate(train_rows[:2]):
            assert dense[k, torch.arange(106), torch.arange(1, 107), fwd].eq(1).all()
            opens = [i for i, c in enumerate(row["structure"]) if c == "("]
            assert int(dense[k, ..., pair].sum()) == 2 * len(opens)
        if codons:                                              # codon nodes neither shift nor add base edges
            assert not b.is_base.all()


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
