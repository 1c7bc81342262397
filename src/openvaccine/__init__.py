"""openvaccine-gnn: per-base mRNA degradation prediction with edge-aware GNNs.

The modules read like the pipeline:

``data`` (load + validate the competition files) → ``folding`` (ViennaRNA / LinearPartition
base-pair probabilities, MFE structures, bpRNA loop types, cached) → ``graphs`` (bracket-pair
graphs as PyG ``Data``) → ``models`` (edge-aware GNN + BiGRU) → ``train`` (grouped K-fold CV)
→ ``predict`` (fold/run ensemble, blending, Kaggle submission, new sequences).
"""

TARGETS = ["reactivity", "deg_Mg_pH10", "deg_pH10", "deg_Mg_50C", "deg_50C"]
ERRORS = ["reactivity_error", "deg_error_Mg_pH10", "deg_error_pH10", "deg_error_Mg_50C", "deg_error_50C"]
SCORED = ["reactivity", "deg_Mg_pH10", "deg_Mg_50C"]
SCORED_IDX = [TARGETS.index(t) for t in SCORED]

__version__ = "0.1.0"
