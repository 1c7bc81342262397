"""Tables and figures for the notebooks: every computation the notebooks show lives here.

``per_base`` turns molecules into one row per base; ``draw_graph`` draws a bracket-pair graph
(backbone, base-pair, pseudoknot and bpp edges in different styles); ``draw_arcs`` an arc
diagram; ``draw_bpp`` the base-pair probability matrix; ``oof_per_base`` the out-of-fold errors
of a trained run; ``frame_sensitivity`` how much a run's predictions for molecules longer than the training ones
depend on where their positions are counted from.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import ERRORS, SCORED, SCORED_IDX, TARGETS
from .data import pair_table
from .graphs import EDGE_FEATURES, EDGE_TYPES, LOOPS

LOOP_NAMES = dict(E="external end", S="stem", H="hairpin", B="bulge", I="internal", M="multiloop", X="external")
BASE_COLORS = dict(A="#4c72b0", C="#dd8452", G="#55a868", U="#c44e52")
LOOP_COLORS = dict(zip(LOOPS, ["#8c8c8c", "#e377c2", "#17becf", "#bcbd22", "#1f77b4", "#ff7f0e", "#9467bd"]))


def per_base(df: pd.DataFrame, labelled: bool = True) -> pd.DataFrame:
    """One row per base: id, pos, base, structure symbol, loop type (+ targets/errors on scored bases)."""
    rows = []
    for r in df.to_dict("records"):
        n = len(r["sequence"])
        d = dict(id=[r["id"]] * n, pos=np.arange(n), length=n, base=list(r["sequence"]),
                 struct=list(r["structure"]), loop=list(r["predicted_loop_type"]))
        if labelled:
            sc = int(r["seq_scored"])
            for c in TARGETS + ERRORS:
                d[c] = np.r_[np.asarray(r[c], float), np.full(n - sc, np.nan)]
            d["signal_to_noise"] = r["signal_to_noise"]
            d["SN_filter"] = r["SN_filter"]
        rows.append(pd.DataFrame(d))
    return pd.concat(rows, ignore_index=True)


def structure_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per-molecule paired fraction, number of pairs and loop-type composition."""
    out = pd.DataFrame(dict(id=df["id"], length=df["seq_length"]))
    out["paired_frac"] = [1 - s.count(".") / len(s) for s in df["structure"]]
    out["pairs"] = [s.count("(") for s in df["structure"]]
    for c in LOOPS:
        out[f"frac_{c}"] = [lt.count(c) / len(lt) for lt in df["predicted_loop_type"]]
    return out


def _layout(structure: str) -> dict[int, tuple[float, float]]:
    import RNA
    nested = "".join(c if c in "()" else "." for c in structure)
    xy = RNA.simple_xy_coordinates(nested)
    return {i: (xy[i].X, xy[i].Y) for i in range(len(structure))}


def draw_graph(g, ax=None, color_by: str | np.ndarray = "loop", loops: str | None = None, seq: str | None = None,
               cmap: str = "viridis", title: str | None = None):
    """Draw a bracket-pair graph on ViennaRNA's layout of its nested structure.

    Backbone: grey solid; structure pairs: black solid; pseudoknot pairs: red dashed; bpp edges:
    blue dotted with alpha ∝ probability. ``color_by``: 'loop', 'base' or a per-base array
    (e.g. predicted degradation).
    """
    import matplotlib.pyplot as plt
    import networkx as nx
    ax = ax or plt.gca()
    n = int(g.is_base.sum())
    pos = _layout(g.structure)
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    styles = {"fwd": ("#999999", "solid", 1.2), "pair": ("black", "solid", 1.5),
              "pk_pair": ("red", "dashed", 1.5), "bpp": ("#1f77b4", "dotted", 1.0)}
    ei, ea = g.edge_index.numpy(), g.edge_attr.numpy()
    p_col = EDGE_FEATURES.index("p_ij")
    for kind, (col, style, w) in styles.items():
        t = EDGE_TYPES.index(kind)
        sel = [(s, d) for (s, d), a in zip(ei.T, ea) if a[t] == 1 and s < d < n]
        if kind == "bpp":
            sel = [(s, d) for (s, d), a in zip(ei.T, ea) if a[t] == 1 and s < d < n and a[EDGE_TYPES.index("pair")] == 0]
            alphas = [float(ea[(ei[0] == s) & (ei[1] == d)][0, p_col]) for s, d in sel]
            for e, a in zip(sel, alphas):
                nx.draw_networkx_edges(G, pos, edgelist=[e], ax=ax, edge_color=col, style=style, width=w,
                                       alpha=max(0.15, a), arrows=False)
        else:
            nx.draw_networkx_edges(G, pos, edgelist=sel, ax=ax, edge_color=col, style=style, width=w, arrows=False)
    if isinstance(color_by, str) and color_by == "loop":
        colors = [LOOP_COLORS[c] for c in loops]
        sc = None
    elif isinstance(color_by, str) and color_by == "base":
        colors = [BASE_COLORS[c] for c in seq]
        sc = None
    else:
        colors = np.asarray(color_by)[:n]
        sc = colors
    nodes = nx.draw_networkx_nodes(G, pos, ax=ax, node_size=45, node_color=colors, cmap=cmap if sc is not None else None,
                                   edgecolors="black", linewidths=0.3)
    if sc is not None:
        plt.colorbar(nodes, ax=ax, shrink=0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def draw_arcs(structure: str, ax=None, bpp: np.ndarray | None = None, threshold: float = 0.1, seq: str | None = None):
    """Arc diagram: structure pairs above the axis (pseudoknots red), bpp pairs below (alpha ∝ p)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Arc
    ax = ax or plt.gca()
    n = len(structure)
    nested = pair_table("".join(c if c in "()" else "." for c in structure))
    allp = pair_table(structure)
    hmax = 1
    for i in range(n):
        j = allp[i]
        if j > i:
            pk = nested[i] < 0
            ax.add_patch(Arc(((i + j) / 2, 0), j - i, j - i, theta1=0, theta2=180,
                             color="red" if pk else "black", lw=1.2 if pk else 0.8, ls="--" if pk else "-"))
            hmax = max(hmax, (j - i) / 2)
    if bpp is not None:
        I, J = np.nonzero(np.triu(bpp, 1) >= threshold)
        for i, j in zip(I, J):
            ax.add_patch(Arc(((i + j) / 2, 0), j - i, j - i, theta1=180, theta2=360, color="#1f77b4",
                             alpha=float(min(1, bpp[i, j])), lw=0.8))
    ax.set_xlim(-1, n)
    ax.set_ylim(-hmax - 1 if bpp is not None else -1, hmax + 1)
    ax.axhline(0, color="#999999", lw=0.5)
    ax.set_yticks([])
    ax.set_xlabel("position")
    return ax


def draw_bpp(bpp: np.ndarray, structure: str, ax=None):
    """Heat map of the base-pair probability matrix; the dot-bracket pairs are marked in the upper triangle."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    im = ax.imshow(np.tril(bpp), cmap="magma_r", vmin=0, vmax=1, origin="upper")
    pt = pair_table(structure)
    i = np.nonzero(pt > np.arange(len(pt)))[0]
    ax.scatter(pt[i], i, s=6, c="#1f77b4", marker="s", label="structure pair")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    plt.colorbar(im, ax=ax, shrink=0.7, label="P(i·j paired)")
    return ax


def oof_per_base(run, df: pd.DataFrame) -> pd.DataFrame:
    """Per-base OOF predictions vs measurements of a trained run, on scored positions."""
    z = np.load(run.path / "oof.npz", allow_pickle=True)
    idx = {i: k for k, i in enumerate(z["ids"])}
    long = per_base(df[df["id"].isin(idx)])
    long = long[long["reactivity"].notna()].copy()
    rows = np.array([idx[i] for i in long["id"]])
    pred = z["pred"][rows, long["pos"].to_numpy()]
    fold = z["fold"][rows]
    for c, t in enumerate(TARGETS):
        long[f"pred_{t}"] = pred[:, c]
        long[f"sqerr_{t}"] = (pred[:, c] - long[t]) ** 2
    long["fold"] = fold
    return long


def rmse_by(long: pd.DataFrame, key: str, cols=SCORED) -> pd.DataFrame:
    """RMSE of each scored column grouped by ``key`` (plus their mean, the MCRMSE)."""
    g = long.groupby(key)[[f"sqerr_{c}" for c in cols]].mean() ** 0.5
    g.columns = list(cols)
    g["MCRMSE"] = g[list(cols)].mean(1)
    g["bases"] = long.groupby(key).size()
    return g


def learning_curves(run) -> pd.DataFrame:
    rows = []
    for ck in run.checkpoints:
        for h in ck["history"]:
            rows.append(dict(fold=ck["fold"], epoch=h["epoch"], train_loss=h["train_loss"], val_mcrmse=h["val_mcrmse"]))
    return pd.DataFrame(rows)


def predict_one(run, rec: dict) -> np.ndarray:
    """Fold-averaged predictions of ``run`` for one molecule record (for colouring a graph)."""
    from .predict import run_predict
    return run_predict(run, pd.DataFrame([rec]), tta=False, progress=False)[0]


def frame_sensitivity(checkpoints: list[dict], graphs: list, length: int = 107, seam: int = 45,
                      windows=((0, 45), (45, 68), (68, 91), (91, None))) -> pd.DataFrame:
    """RMS difference (over the scored columns) between the fold-averaged predictions of ``checkpoints`` for
    ``graphs`` with their positions counted from the 5' end, as the model is given them, and in the 3'-aligned
    frame of a ``length``-base molecule (:func:`~.graphs.aligned_at_3_end`), per window of positions. Only
    molecules longer than ``length`` differ. Neither frame is known to be right (every labelled molecule
    is 107 nt long): a model that depends less on the frame relies less on absolute positions it has never
    seen labelled."""
    from .graphs import aligned_at_3_end
    from .train import load_model, predict_graphs
    other = [aligned_at_3_end(g, length, seam) for g in graphs]
    diff = []
    for ck in checkpoints:
        model = load_model(ck)
        a, b = predict_graphs(model, graphs), predict_graphs(model, other)
        diff.append([pa - pb for pa, pb in zip(a, b)])
    mean = [np.mean([d[k] for d in diff], 0)[:, SCORED_IDX] for k in range(len(graphs))]
    rows = []
    for lo, hi in windows:
        sq = np.concatenate([m[lo:hi].ravel() ** 2 for m in mean])
        rows.append(dict(positions=f"{lo}-{(hi or max(len(m) for m in mean)) - 1}", rms_difference=np.sqrt(sq.mean())
                         if len(sq) else np.nan))
    return pd.DataFrame(rows)
