"""DegradationGNN: edge-aware message passing over the bracket-pair graph, then a BiGRU over
sequence order, optionally pair- and distance-biased self-attention over all bases
(:class:`PairBiasedAttention`, ``model.attn_layers``), then a per-base head for the five targets.

Each block is pre-norm residual: ``h = h + Dropout(GELU(conv(LayerNorm(h))))`` followed by a
residual feed-forward ``h = h + Dropout(FFN(LayerNorm(h)))``. The convolution is chosen by name:

* ``transformer`` – UniMP-style ``TransformerConv(edge_dim=…)`` (edge features enter keys/values)
* ``gatv2``       – ``GATv2Conv(edge_dim=…)`` (edge features enter the attention score)
* ``gine``        – ``GINEConv`` (edge features added to the neighbour message)
* ``edgegated``   – our :class:`EdgeGatedConv` (edge features gate and shape the message)
* ``sage``        – ``SAGEConv``, which ignores edge features: the no-edge-feature reference
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, GINEConv, SAGEConv, TransformerConv
from torch_geometric.utils import to_dense_batch

from ..config import without_later_options
from .dropout import Dropout
from .edge_gated import EdgeGatedConv
from .seq_attention import BaseEdges, PairBiasedAttention

CONVS = ("transformer", "gatv2", "gine", "edgegated", "sage")
RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


def make_conv(kind: str, h: int, edge_dim: int, heads: int) -> nn.Module:
    if kind == "transformer":
        return TransformerConv(h, h // heads, heads=heads, edge_dim=edge_dim, beta=True)
    if kind == "gatv2":
        return GATv2Conv(h, h // heads, heads=heads, edge_dim=edge_dim, add_self_loops=False)
    if kind == "gine":
        return GINEConv(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h)), edge_dim=edge_dim, train_eps=True)
    if kind == "edgegated":
        return EdgeGatedConv(h, edge_dim)
    if kind == "sage":
        return SAGEConv(h, h)
    raise ValueError(f"unknown conv {kind!r}: one of {CONVS}")


class Block(nn.Module):
    def __init__(self, kind: str, h: int, edge_dim: int, heads: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.conv = make_conv(kind, h, edge_dim, heads)
        self.ffn = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), Dropout(dropout), nn.Linear(2 * h, h))
        self.drop = Dropout(dropout)
        self.act = nn.GELU()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        z = self.norm1(h)
        z = self.conv(z, edge_index) if self.kind == "sage" else self.conv(z, edge_index, edge_attr)
        h = h + self.drop(self.act(z))
        return h + self.drop(self.ffn(self.norm2(h)))


class DegradationGNN(nn.Module):
    def __init__(self, in_dim: int, edge_dim: int, out_dim: int = 5, conv: str = "transformer",
                 hidden: int = 128, layers: int = 4, heads: int = 4, dropout: float = 0.1,
                 gru_layers: int = 2, keep_features: list[int] | None = None, rnn: str = "gru",
                 attn_layers: int = 0):
        super().__init__()
        keep = torch.as_tensor(keep_features if keep_features is not None else range(in_dim), dtype=torch.long)
        self.register_buffer("keep", keep, persistent=False)
        in_dim = len(keep)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.edge_embed = nn.Sequential(nn.Linear(edge_dim, hidden // 2), nn.GELU())
        self.blocks = nn.ModuleList(Block(conv, hidden, hidden // 2, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        if rnn not in RNNS:
            raise ValueError(f"unknown rnn {rnn!r}: one of {tuple(RNNS)}")
        self.gru = (RNNS[rnn](hidden, hidden, num_layers=gru_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if gru_layers > 1 else 0.0) if gru_layers else None)
        head_in = 2 * hidden if self.gru is not None else hidden
        if attn_layers < 0:
            raise ValueError(f"model.attn_layers must be >= 0, got {attn_layers}")
        self.attn = nn.ModuleList(PairBiasedAttention(head_in, heads, edge_dim, dropout) for _ in range(attn_layers))
        self.head = nn.Sequential(Dropout(dropout), nn.Linear(head_in, out_dim))

    def forward(self, data) -> Tensor:
        """Predictions for the base nodes of the batch, in node order: [num_bases, out_dim]."""
        return self.head(self.encode(data))

    @property
    def out_features(self) -> int:
        """Width of :meth:`encode`'s output (the head's input)."""
        return self.head[-1].in_features

    def encode(self, data) -> Tensor:
        """Representations of the base nodes of the batch, in node order: [num_bases, out_features]."""
        h = self.embed(data.x[:, self.keep])
        e = self.edge_embed(data.edge_attr)
        for blk in self.blocks:
            h = blk(h, data.edge_index, e)
        h = self.norm(h)
        is_base = data.is_base
        hb = h[is_base]
        if self.gru is None and not len(self.attn):
            return hb
        batch = data.batch[is_base] if hasattr(data, "batch") and data.batch is not None \
            else torch.zeros(hb.size(0), dtype=torch.long, device=hb.device)
        dense, mask = to_dense_batch(hb, batch)               # bases are in sequence order per graph
        if self.gru is not None:
            dense = self._rnn(dense, mask)
        if len(self.attn):
            edges = base_edges(data, batch)
            for layer in self.attn:
                dense = layer(dense, mask, edges)
        return dense[mask]

    def _rnn(self, dense: Tensor, mask: Tensor) -> Tensor:
        """The recurrent layer over each molecule's own bases (zeros at the padding), as packing would run it.

        A batch of equal lengths runs as one dense tensor; one of a few lengths (107- and 130-nt
        molecules together: pseudo-labelled training, test prediction) as one dense run per length,
        which on a CPU is ~4× faster than packed sequences (oneDNN's LSTM takes no packed input)."""
        if bool(mask.all()):
            return self.gru(dense)[0]
        lengths = mask.sum(1)
        sizes = lengths.unique()
        if len(sizes) > 4:                                     # many lengths (user sequences): pack them
            packed = nn.utils.rnn.pack_padded_sequence(dense, lengths.cpu(), batch_first=True, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                    total_length=dense.size(1))[0]
        out = None
        for n in sizes.tolist():
            rows = (lengths == n).nonzero().squeeze(1)
            h = self.gru(dense[rows, :n])[0]
            if out is None:                                    # the RNN's width and (autocast) dtype
                out = h.new_zeros(dense.size(0), dense.size(1), h.size(-1))
            out[rows, :n] = h
        return out


def base_edges(data, base_batch: Tensor) -> BaseEdges:
    """The edges between the bases of each molecule (codon nodes and their edges left out), with each
    base's position within its molecule; ``base_batch`` is the molecule of each base, in node order."""
    is_base = data.is_base
    base_index = torch.cumsum(is_base.long(), 0) - 1                 # node -> index among the bases
    counts = torch.bincount(base_batch)                              # bases per molecule
    start = torch.cumsum(counts, 0) - counts                         # first base of each molecule
    src, dst = data.edge_index
    keep = is_base[src] & is_base[dst]
    src, dst = base_index[src[keep]], base_index[dst[keep]]
    graph = base_batch[src]
    return BaseEdges(graph, src - start[graph], dst - start[graph], data.edge_attr[keep])


# model options added after runs were trained, with the value that leaves the model as it was
LATER_MODEL_OPTIONS_OFF = {"attn_layers": 0}


def model_signature(model_cfg: dict) -> dict:
    """The ``model`` section as fingerprints see it: options added later are left out at their "off"
    value, so runs (and pretrained encoders) made before the option existed still match."""
    return without_later_options(model_cfg, LATER_MODEL_OPTIONS_OFF)


def build_model(cfg: dict, in_dim: int, edge_dim: int) -> DegradationGNN:
    """Model from the ``model`` section; ``model.exclude_features`` drops node features by name."""
    from ..graphs import graph_params, node_feature_names
    names = node_feature_names(graph_params(cfg))
    m = cfg.get("model", {})
    excl = set(m.get("exclude_features") or [])
    unknown = excl - set(names)
    if unknown:
        raise ValueError(f"model.exclude_features: unknown feature(s) {sorted(unknown)}; known: {names}")
    keep = [k for k, f in enumerate(names[:in_dim]) if f not in excl]
    return DegradationGNN(in_dim, edge_dim, conv=m.get("conv", "transformer"), hidden=int(m.get("hidden", 128)),
                          layers=int(m.get("layers", 4)), heads=int(m.get("heads", 4)),
                          dropout=float(m.get("dropout", 0.1)), gru_layers=int(m.get("gru_layers", 2)), keep_features=keep,
                          rnn=m.get("rnn", "gru"), attn_layers=int(m.get("attn_layers", 0)))
