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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout


def alibi_slopes(heads: int) -> Tensor:
    """:math:`2^{-8(h+1)/H}` for :math:`h = 0..H-1`: geometric, from steep (local) to flat (global)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


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

    def bias(self, edges: Tensor, mask: Tensor) -> Tensor:
        """Additive scores [B, H, N, N] from dense edge features [B, N, N, F] and the base mask [B, N]."""
        n = mask.size(1)
        pos = torch.arange(n, device=mask.device)
        dist = (pos[:, None] - pos[None, :]).abs().to(edges.dtype)
        b = self.edge_bias(edges).permute(0, 3, 1, 2) - self.slopes.to(edges.dtype)[:, None, None] * dist
        return b.masked_fill(~mask[:, None, None, :], float("-inf"))

    def forward(self, x: Tensor, mask: Tensor, edges: Tensor) -> Tensor:
        """``x`` [B, N, D] padded bases, ``mask`` [B, N] real bases, ``edges`` [B, N, N, F]."""
        bsz, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(bsz, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # under autocast q/k/v are half precision while the distance term keeps the bias in float32
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(edges, mask).to(q.dtype),
                                           dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(bsz, n, dim)))
        return x + self.drop(self.ffn(self.norm2(x)))
