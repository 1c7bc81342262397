"""EdgeGatedConv: a message-passing layer whose messages are conditioned on the edge features.

For node :math:`i` with neighbours :math:`j \\in \\mathcal{N}(i)` and edge features :math:`e_{ij}`:

.. math::
    g_{ij} &= \\sigma\\big(W_g [x_i \\,\\|\\, x_j \\,\\|\\, e_{ij}] + b_g\\big) \\\\
    m_{ij} &= g_{ij} \\odot \\big(W_v [x_j \\,\\|\\, e_{ij}] + b_v\\big) \\\\
    x_i' &= W_o \\Big[x_i \\,\\Big\\|\\, \\frac{\\sum_j m_{ij}}{\\sum_j g_{ij} + \\epsilon}\\Big]

The gate sees both ends and the edge type (backbone direction, structure pair, pseudoknot,
bpp with its probability, distance), so a base can weigh its 5' neighbour, its 3' neighbour and
its pairing partners differently, per channel. This is the design the PGL vaccine baseline meant
to have: there the edge features were embedded but never entered the message.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter


class EdgeGatedConv(MessagePassing):
    def __init__(self, channels: int, edge_dim: int, eps: float = 1e-6):
        super().__init__(aggr="add", node_dim=0)
        self.gate = nn.Linear(2 * channels + edge_dim, channels)
        self.value = nn.Linear(channels + edge_dim, channels)
        self.out = nn.Linear(2 * channels, channels)
        self.eps = eps

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(torch.cat([x[edge_index[1]], x[edge_index[0]], edge_attr], -1)))
        agg = self.propagate(edge_index, x=x, edge_attr=edge_attr, gate=g)
        norm = scatter(g, edge_index[1], 0, dim_size=x.size(0), reduce="sum")
        return self.out(torch.cat([x, agg / (norm + self.eps)], -1))

    def message(self, x_j: Tensor, edge_attr: Tensor, gate: Tensor) -> Tensor:
        return gate * self.value(torch.cat([x_j, edge_attr], -1))
