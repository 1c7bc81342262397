"""Models: one idea per file (``edge_gated`` and ``seq_attention`` our layers, ``dropout`` a CPU-fast
``nn.Dropout``, ``gnn`` the full network)."""
from .dropout import Dropout
from .edge_gated import EdgeGatedConv
from .gnn import CONVS, DegradationGNN, build_model, model_signature
from .seq_attention import PairBiasedAttention

__all__ = ["Dropout", "EdgeGatedConv", "PairBiasedAttention", "DegradationGNN", "build_model", "model_signature", "CONVS"]
