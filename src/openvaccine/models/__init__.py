"""Models: one idea per file (``edge_gated`` our layer, ``gnn`` the full network)."""
from .edge_gated import EdgeGatedConv
from .gnn import CONVS, DegradationGNN, build_model

__all__ = ["EdgeGatedConv", "DegradationGNN", "build_model", "CONVS"]
