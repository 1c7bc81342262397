"""Models: one idea per file (``edge_gated`` and ``seq_attention`` our layers, ``gnn`` the full network)."""
from .edge_gated import EdgeGatedConv
from .gnn import CONVS, DegradationGNN, build_model, model_signature
from .seq_attention import PairBiasedAttention

__all__ = ["EdgeGatedConv", "PairBiasedAttention", "DegradationGNN", "build_model", "model_signature", "CONVS"]
