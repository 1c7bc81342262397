"""PairBiasedAttention: self-attention over a molecule's bases, biased by the pair graph and by distance.

For bases :math:`i, j` of one molecule, head :math:`h` of :math:`H`, and :math:`e_{ij}` the raw edge
features of the bracket-pair graph between them (backbone/pair/bpp flags, the two engines'
pair probabilities, distance; all zero where the graph has no edge):

.. math::
    s^h_{ij} &= \\frac{q^h_i \\cdot k^h_j}{\\sqrt{d}} + w_h^\\top e_{ij} - m_h\\,|i - j| \\\\
    x_i' &= x_i + W_o \\big\\Vert_h \\sum_j \\operatorname{softmax}_j(s^h_{ij})\\, v^h_j,
    \\qquad x_i'' = x_i' + \\mathrm{FFN}(\\mathrm{LN}(x_i'))

(pre-norm: :math:`q, k, v` are projections of :math:`\\mathrm{LN}(x)`). The slopes
:math:`m_h = 2^{-8(h+1)/H}` are fixed (ALiBi): a distance decay from a few bases (:math:`m_0`)
to the whole molecule (:math:`m_{H-1}`) that is defined for any length, so the 130-nt test
molecules meet no position the 107-nt training molecules lacked. The learned :math:`w_h` let a
head attend along base pairs, probable pairs or the backbone, as the GNN does, but to every base at
once. Padding keys are masked out, so a molecule's output does not depend on what it is batched with.

:math:`w_h^\\top e_{ij}` is computed on the graph's edges (:class:`BaseEdges`, a few per base) and scattered into
the dense scores, not on a dense :math:`N \\times N` feature tensor: the same sum, since the map is linear, at ~3 %
of the products for 107-nt molecules. Attention dropout on a CPU uses :func:`.dropout.dropout` on the softmax
weights (:func:`attend`), as ``scaled_dot_product_attention`` would with ``bernoulli_``'s slower mask.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout, dropout


def alibi_slopes(heads: int) -> Tensor:
    """:math:`2^{-8(h+1)/H}` for :math:`h = 0..H-1`: geometric, from steep (local) to flat (global)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


class BaseEdges(NamedTuple):
    """The edges between the bases of a batch of molecules: each edge's molecule, the positions of its two
    bases within that molecule, and its features [E, F]. Several edges between one pair of bases add up."""
    graph: Tensor
    src: Tensor
    dst: Tensor
    attr: Tensor

    def dense(self, values: Tensor, num_graphs: int, n: int) -> Tensor:
        """``values`` [E, C] (one row per edge) as a dense [num_graphs, n, n, C] tensor, zero where no edge."""
        out = values.new_zeros(num_graphs, n, n, values.size(-1))
        return out.index_put_((self.graph, self.src, self.dst), values, accumulate=True)

    @classmethod
    def from_dense(cls, edges: Tensor) -> "BaseEdges":
        """The edges of a dense [B, N, N, F] feature tensor: every (b, i, j) with a non-zero feature."""
        b, i, j = (edges != 0).any(-1).nonzero(as_tuple=True)
        return cls(b, i, j, edges[b, i, j])


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float = 0.0) -> Tensor:
    """:math:`\\operatorname{dropout}_p(\\operatorname{softmax}(q k^\\top / \\sqrt{d} + b))\\, v` over the last two
    dimensions, ``bias`` in ``q``'s dtype. Without dropout, or off the CPU, this is
    ``scaled_dot_product_attention`` (its fused kernels); with dropout on a CPU the weights are
    formed explicitly, as that function's own CPU path does, and dropped by :func:`.dropout.dropout`."""
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.size(-1))).add_(bias)
    return torch.matmul(dropout(scores.softmax(-1), p).to(v.dtype), v)


class PairBiasedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, edge_dim: int, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.p = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.edge_bias = nn.Linear(edge_dim, heads, bias=False)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = Dropout(dropout)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def bias(self, edges: BaseEdges, mask: Tensor) -> Tensor:
        """Additive scores [B, H, N, N] (float32) from the base edges and the base mask [B, N]."""
        bsz, n = mask.shape
        pos = torch.arange(n, device=mask.device)
        dist = (pos[:, None] - pos[None, :]).abs().float()
        pair = edges.dense(self.edge_bias(edges.attr), bsz, n).permute(0, 3, 1, 2)
        b = pair - self.slopes[:, None, None] * dist
        return b.masked_fill(~mask[:, None, None, :], float("-inf"))

    def forward(self, x: Tensor, mask: Tensor, edges: BaseEdges) -> Tensor:
        """``x`` [B, N, D] padded bases, ``mask`` [B, N] real bases, ``edges`` between them."""
        bsz, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(bsz, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # under autocast q/k/v are half precision while the distance term keeps the bias in float32
        a = attend(q, k, v, self.bias(edges, mask).to(q.dtype), self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(bsz, n, dim)))
        return x + self.drop(self.ffn(self.norm2(x)))
