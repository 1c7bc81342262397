"""Bracket-pair graphs: one PyTorch Geometric ``Data`` per molecule.

Nodes are bases (optionally plus one codon node per three bases). Edges go both ways and carry
typed features::

    edge_attr = [fwd, bwd, pair, pk_pair, bpp, bpp2, codon_base, codon_codon, p_ij, p2_ij, |i-j|/100]

``fwd``/``bwd`` are the backbone i→i+1 / i+1→i, ``pair`` a ``()`` pair of the dot-bracket
structure, ``pk_pair`` a pseudoknot pair (``[] {} <>``), ``bpp`` a pair whose base-pair probability
is at least ``bpp_threshold``, ``bpp2`` the same under the second folding engine; an edge that is
several of these at once carries several flags. ``p_ij`` / ``p2_ij`` are the base-pair
probabilities of the two bases under the main / second engine (0 on backbone edges).

A second folding engine (``graph.engine2``, by default LinearPartition with EternaFold-like
parameters) gives a second opinion: its pairing probability, max bpp and entropy per base
(``bpp2_*`` node features), its bpp edges, and its MFE structure (``structure="mfe2"``), used as
an alternative structure for training augmentation and test-time averaging. With
``engine2: none`` those features are zero.

Further ViennaRNA energy parameter sets (``graph.vienna_params``, e.g. ``[Andronescu2007,
Langdon2018, Turner1999]``; none by default) add more opinions of the same kind, each appended at the
end: ``bpp_<set>_sum``, ``bpp_<set>_max``, ``bpp_<set>_entropy`` per base and ``p_<set>_ij`` on every
edge between two bases that are not backbone neighbours (:func:`node_feature_names`,
:func:`edge_feature_names`). ViennaRNA at further temperatures (``graph.vienna_temps``, e.g. ``[50,
70]`` °C; none by default) adds the same four columns per temperature, named ``T50`` etc., after the
parameter sets' (the melting that a measurement at 50 °C sees begins with the pairs a hotter fold
loses). They add no edges.

Node features (see :data:`NODE_FEATURES`): base, structure symbol and loop type one-hots, pairing
probability (bpp row sum), max bpp, unpaired probability, sum − max, base-pair entropy, pair type
of the structure partner (GC/AU/GU), partner distance, absolute and relative position, codon flag.

Targets ``y`` (5 columns), ``score_mask`` (scored positions), per-base measurement errors
``err``, and the molecule's ``sn`` (signal_to_noise) and ``sn_filter`` travel with the graph.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from . import ERRORS, TARGETS
from .config import atomic_path, fingerprint, without_later_options
from .data import PAIR_OPEN, DataError, pair_table
from .folding import CACHE_DIR, SAMPLES, Fold, FoldParams, check_params, fold_cached, loop_types, sampled_cached

BASES = "ACGU"
LOOPS = "EHBIMSX"
NODE_FEATURES = (
    [f"base_{b}" for b in BASES] + ["struct_open", "struct_close", "struct_unpaired"]
    + [f"loop_{c}" for c in LOOPS]
    + ["bpp_sum", "bpp_max", "p_unpaired", "bpp_sum_minus_max", "bpp_entropy"]
    + ["pair_GC", "pair_AU", "pair_GU", "partner_dist", "pos_abs", "pos_rel", "is_codon"]
    + ["bpp2_sum", "bpp2_max", "bpp2_entropy"]
)
EDGE_TYPES = ["fwd", "bwd", "pair", "pk_pair", "bpp", "bpp2", "codon_base", "codon_codon"]
EDGE_FEATURES = EDGE_TYPES + ["p_ij", "p2_ij", "seq_dist"]
NUM_NODE_FEATURES = len(NODE_FEATURES)
NUM_EDGE_FEATURES = len(EDGE_FEATURES)

DEFAULT_GRAPH = dict(engine="vienna", temperature=37.0, mode="eterna", bpp_threshold=0.05,
                     codon_nodes=False, structure="given", engine2="none", mode2="eterna", vienna_params=[],
                     vienna_temps=[])
# graph options added after runs were trained, with the value that leaves the graphs as they were
LATER_GRAPH_OPTIONS_OFF = {"vienna_params": [], "vienna_temps": []}
STRUCTURES = ("given", "mfe", "mfe2") + tuple(f"sample{i}" for i in range(1, SAMPLES + 1))


def _onehot(idx: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(idx), k), dtype=np.float32)
    ok = idx >= 0
    out[np.nonzero(ok)[0], idx[ok]] = 1.0
    return out


def bpp_stats(f: Fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per base: pairing probability (bpp row sum), max bpp, base-pair entropy
    :math:`-\sum_j p_{ij} \log p_{ij} - p^u_i \log p^u_i` with :math:`p^u_i = 1 - \sum_j p_{ij}`."""
    n = f.n
    psum, pmax = f.pair_prob(), f.max_prob()
    punp = 1.0 - psum
    plogp = f.p * np.log(np.maximum(f.p, 1e-12))
    ent = -(np.bincount(f.i, plogp, n) + np.bincount(f.j, plogp, n)) - punp * np.log(np.maximum(punp, 1e-12))
    return psum, pmax, ent.astype(np.float32)


def node_features(seq: str, structure: str, loops: str, f: Fold, f2: Fold | None = None,
                  extra: Sequence[Fold] = ()) -> np.ndarray:
    n = len(seq)
    base = _onehot(np.array([BASES.index(c) for c in seq]), 4)
    sym = np.array([0 if c in PAIR_OPEN else 2 if c in ".-:,_" else 1 for c in structure])
    struct = _onehot(sym, 3)
    loop = _onehot(np.array([LOOPS.index(c) for c in loops]), 7)
    psum, pmax, ent = bpp_stats(f)
    punp = 1.0 - psum
    second = np.stack(bpp_stats(f2), 1) if f2 is not None else np.zeros((n, 3), dtype=np.float32)
    partner = pair_table(structure)
    ptype = np.full(n, -1)
    for i in np.nonzero(partner >= 0)[0]:
        pair = {seq[i], seq[partner[i]]}
        ptype[i] = 0 if pair == {"G", "C"} else 1 if pair == {"A", "U"} else 2 if pair == {"G", "U"} else -1
    pos = np.arange(n, dtype=np.float32)
    dense = np.stack([
        psum, pmax, punp, psum - pmax, ent.astype(np.float32),
    ], 1)
    tail = np.stack([
        np.where(partner >= 0, np.abs(partner - pos) / 100.0, 0.0),
        pos / 100.0, pos / max(n - 1, 1), np.zeros(n),
    ], 1).astype(np.float32)
    more = [np.stack(bpp_stats(fx), 1) for fx in extra]
    return np.concatenate([base, struct, loop, dense, _onehot(ptype, 3), tail, second, *more], 1).astype(np.float32)


def _prob_lookup(f: Fold, key: np.ndarray, m: int) -> np.ndarray:
    """Base-pair probability of each edge key ``src * m + dst`` (0 where the engine has none)."""
    if not len(f.p):
        return np.zeros(len(key), dtype=np.float32)
    k = np.concatenate([f.i.astype(np.int64) * m + f.j, f.j.astype(np.int64) * m + f.i])
    p = np.concatenate([f.p, f.p]).astype(np.float32)
    order = np.argsort(k)
    k, p = k[order], p[order]
    pos = np.clip(np.searchsorted(k, key), 0, len(k) - 1)
    return np.where(k[pos] == key, p[pos], 0.0).astype(np.float32)


def edges(seq: str, structure: str, f: Fold, bpp_threshold: float, codon_nodes: bool, f2: Fold | None = None,
          extra: Sequence[Fold] = ()):
    """(edge_index [2, E], edge_attr [E, NUM_EDGE_FEATURES + len(extra)]); duplicates merged, flags OR-ed."""
    n = len(seq)
    src, dst, typ = [], [], []

    def add(a, b, t):
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        src.append(a); dst.append(b); typ.append(np.full(len(a), EDGE_TYPES.index(t)))

    i = np.arange(n - 1)
    add(i, i + 1, "fwd")
    add(i + 1, i, "bwd")
    nested = pair_table("".join(c if c in "()" else "." for c in structure))
    allp = pair_table(structure)
    a = np.nonzero(nested >= 0)[0]
    add(a, nested[a], "pair")
    pk = np.nonzero((allp >= 0) & (nested < 0))[0]
    add(pk, allp[pk], "pk_pair")
    keep = f.p >= bpp_threshold
    add(np.concatenate([f.i[keep], f.j[keep]]), np.concatenate([f.j[keep], f.i[keep]]), "bpp")
    if f2 is not None:
        keep2 = f2.p >= bpp_threshold
        add(np.concatenate([f2.i[keep2], f2.j[keep2]]), np.concatenate([f2.j[keep2], f2.i[keep2]]), "bpp2")
    if codon_nodes:
        k = np.arange(n // 3)
        b = (3 * k[:, None] + np.arange(3)).ravel()
        c = n + np.repeat(k, 3)
        add(b, c, "codon_base")
        add(c, b, "codon_base")
        if len(k) > 1:
            add(n + k[:-1], n + k[1:], "codon_codon")
            add(n + k[1:], n + k[:-1], "codon_codon")
    src, dst, typ = np.concatenate(src), np.concatenate(dst), np.concatenate(typ)
    m = n + (n // 3 if codon_nodes else 0)
    key, inv = np.unique(src * m + dst, return_inverse=True)
    attr = np.zeros((len(key), NUM_EDGE_FEATURES + len(extra)), dtype=np.float32)
    np.maximum.at(attr, (inv, typ), 1.0)
    s, d = key // m, key % m
    bases = (s < n) & (d < n)
    pairish = bases & (attr[:, 0] == 0) & (attr[:, 1] == 0)          # not a backbone edge
    col = EDGE_FEATURES.index
    attr[:, col("p_ij")] = np.where(pairish, _prob_lookup(f, key, m), 0.0)
    if f2 is not None:
        attr[:, col("p2_ij")] = np.where(pairish, _prob_lookup(f2, key, m), 0.0)
    for k, fx in enumerate(extra):
        attr[:, NUM_EDGE_FEATURES + k] = np.where(pairish, _prob_lookup(fx, key, m), 0.0)
    attr[:, col("seq_dist")] = np.where(bases, np.abs(s - d) / 100.0, 0.0)
    return np.stack([s, d]), attr


def molecule_graph(rec: dict, f: Fold, structure: str | None = None, loops: str | None = None,
                   bpp_threshold: float = 0.05, codon_nodes: bool = False, f2: Fold | None = None,
                   extra: Sequence[Fold] = ()) -> Data:
    """Graph of one molecule. ``rec`` has ``id``, ``sequence`` and, when labelled, targets; ``extra``:
    folds of the further ViennaRNA opinions (``graph.vienna_params``, ``graph.vienna_temps``)."""
    seq = rec["sequence"]
    n = len(seq)
    structure = structure if structure is not None else rec.get("structure") or f.structure
    if len(structure) != n:
        raise DataError(f"molecule {rec['id']}: field 'structure': length {len(structure)} != sequence length {n}")
    if loops is None:
        given = rec.get("predicted_loop_type")
        loops = given if given and structure == rec.get("structure") else loop_types(structure)
    x = node_features(seq, structure, loops, f, f2, extra)
    ei, ea = edges(seq, structure, f, bpp_threshold, codon_nodes, f2, extra)
    n_codon = n // 3 if codon_nodes else 0
    if n_codon:
        cx = np.zeros((n_codon, x.shape[1]), dtype=np.float32)
        cx[:, NODE_FEATURES.index("is_codon")] = 1.0
        x = np.concatenate([x, cx])
    m = n + n_codon
    y = np.zeros((m, len(TARGETS)), dtype=np.float32)
    err = np.zeros_like(y)
    mask = np.zeros(m, dtype=bool)
    if all(t in rec and rec[t] is not None and not (isinstance(rec[t], float)) for t in TARGETS):
        sc = int(rec["seq_scored"])
        y[:sc] = np.stack([np.asarray(rec[t], dtype=np.float32) for t in TARGETS], 1)
        err[:sc] = np.stack([np.asarray(rec[e], dtype=np.float32) for e in ERRORS], 1)
        mask[:sc] = True
    is_base = np.zeros(m, dtype=bool)
    is_base[:n] = True
    return Data(
        x=torch.from_numpy(x), edge_index=torch.from_numpy(ei), edge_attr=torch.from_numpy(ea),
        y=torch.from_numpy(y), err=torch.from_numpy(err), score_mask=torch.from_numpy(mask),
        is_base=torch.from_numpy(is_base),
        sn=torch.tensor([float(rec.get("signal_to_noise", 0.0) or 0.0)]),
        sn_filter=torch.tensor([float(rec.get("SN_filter", 0.0) or 0.0)]),
        seq_len=torch.tensor([n]), id=rec["id"], structure=structure,
    )


def reverse_graph(g: Data) -> Data:
    r"""The molecule read from its 3' end: base :math:`i` of :math:`n` becomes base :math:`n-1-i`.

    Node features, targets, errors, masks (and per-base loss weights) follow their base; the positions (``pos_abs``,
    ``pos_rel``) are counted anew from the new 5' end, a pair's opening and closing brackets swap,
    and so do the backbone flags (the edge :math:`i \to i+1` was ``fwd`` and now runs from base
    :math:`n-1-i` to :math:`n-2-i`, i.e. ``bwd``): the copy is the graph of the reversed sequence
    folded into the mirrored structure with the same pair probabilities. Loop types, pair types
    and flags, probabilities and distances stay. The model is not told: a training augmentation
    (``train.reverse_p``) that shows it labels at positions :math:`n-68 \ldots n-1`, where a
    107-nt molecule read forwards has none."""
    n = int(g.seq_len)
    if int(g.x.shape[0]) != n:
        raise ValueError(f"molecule {g.id}: graphs with codon nodes cannot be reversed (graph.codon_nodes)")
    order = torch.arange(n - 1, -1, -1)
    h = copy.copy(g)
    for key in ("x", "y", "err", "score_mask", "is_base") + (("base_w",) if "base_w" in g else ()):
        setattr(h, key, getattr(g, key)[order].clone())
    _set_positions(h.x, torch.arange(n, dtype=g.x.dtype), n)
    sopen, sclose = NODE_FEATURES.index("struct_open"), NODE_FEATURES.index("struct_close")
    h.x[:, [sopen, sclose]] = h.x[:, [sclose, sopen]]
    h.edge_index = (n - 1) - g.edge_index
    h.edge_attr = g.edge_attr.clone()
    fwd, bwd = EDGE_FEATURES.index("fwd"), EDGE_FEATURES.index("bwd")
    h.edge_attr[:, [fwd, bwd]] = g.edge_attr[:, [bwd, fwd]]
    mirror = str.maketrans("()[]{}<>", ")(][}{><")
    h.structure = g.structure[::-1].translate(mirror)
    return h


def shifted_graph(g: Data, seam: int, k: int) -> Data:
    r"""The molecule's position features as if :math:`k` bases had been inserted after base ``seam``:
    base :math:`i` keeps ``pos_abs`` :math:`= i/100` up to the seam and takes :math:`(i+k)/100` after it,
    and ``pos_rel`` is counted over :math:`n+k` bases. Nothing else changes (sequence, structure, edges,
    labels): a training augmentation (``train.pos_shift``) that shows the model labelled design
    bases at absolute positions a longer molecule has them at, as the 130-nt test molecules have
    their scored positions 68–90, which no 107-nt training molecule has a label at."""
    n = int(g.seq_len)
    if not 0 <= seam < n or k < 0:
        raise ValueError(f"molecule {g.id}: a shift needs 0 <= seam < {n} and k >= 0, got seam={seam}, k={k}")
    pos = torch.arange(n, dtype=g.x.dtype)
    pos[seam + 1:] += k
    return _with_positions(g, pos, n + k)


def aligned_at_3_end(g: Data, length: int, seam: int) -> Data:
    r"""The position features a molecule of :math:`n > L` bases (``length`` :math:`L`) would have if its bases past
    the seam were counted back from its 3' end as in a molecule of :math:`L` bases: base :math:`i` keeps
    :math:`i` up to ``seam`` :math:`s`, takes :math:`i-(n-L)` over its last :math:`L-1-s` bases, and :math:`s`
    between (``pos_rel`` over :math:`L` bases). A molecule of :math:`L` bases or fewer stays as it is. The other
    frame for the 130-nt test molecules, whose scored positions end 39 bases before the 3' end, as the 107-nt ones'
    do: :func:`~.analysis.frame_sensitivity` measures how much a model's predictions depend on the frame."""
    n = int(g.seq_len)
    if not 0 <= seam < length:
        raise ValueError(f"a 3'-aligned frame needs 0 <= seam < length, got seam={seam}, length={length}")
    if n <= length:
        return g
    i = torch.arange(n, dtype=g.x.dtype)
    tail = length - 1 - seam                     # bases counted from the 3' end
    pos = torch.clamp(i, max=seam) + (tail - torch.clamp((n - 1) - i, max=tail))
    return _with_positions(g, pos, length)


def _set_positions(x: torch.Tensor, pos: torch.Tensor, length: int) -> None:
    """Write ``pos`` (one per base) into the first rows' ``pos_abs`` and ``pos_rel`` (over ``length`` bases)."""
    x[:len(pos), NODE_FEATURES.index("pos_abs")] = pos / 100.0
    x[:len(pos), NODE_FEATURES.index("pos_rel")] = pos / max(length - 1, 1)


def _with_positions(g: Data, pos: torch.Tensor, length: int) -> Data:
    """A copy of ``g`` whose bases have the positions ``pos`` (:func:`_set_positions`); the rest is shared."""
    h = copy.copy(g)
    h.x = g.x.clone()
    _set_positions(h.x, pos, length)
    return h


def graph_params(cfg: dict | None) -> dict:
    p = dict(DEFAULT_GRAPH)
    p.update((cfg or {}).get("graph", {}) or {})
    for k in ("vienna_params", "vienna_temps"):                        # one set or temperature may be given bare
        v = p.get(k) or []
        p[k] = list(v) if isinstance(v, (list, tuple)) else [v]
    return p


def graph_signature(section: dict) -> dict:
    """A ``graph`` section as fingerprints see it: options added later are left out at their "off"
    value, so runs and graph caches made before the option existed still match."""
    return without_later_options(section, LATER_GRAPH_OPTIONS_OFF)


def extra_opinions(p: dict) -> list[tuple[str, FoldParams]]:
    """(name, folding parameters) of each further ViennaRNA opinion, in column order: the energy
    parameter sets of ``vienna_params`` at the main temperature, then the default set at each
    temperature of ``vienna_temps`` (°C, 0-100, named ``T<t>``: ``T50``, ``T62.5``)."""
    out = []
    for name in p.get("vienna_params") or []:
        check_params(name, "graph.vienna_params")
        out.append((str(name), FoldParams(temperature=float(p["temperature"]), params=str(name))))
    for t in p.get("vienna_temps") or []:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 100:
            raise ValueError(f"graph.vienna_temps: {t!r} is not a temperature in °C from 0 to 100")
        if float(t) == float(p["temperature"]):
            raise ValueError(f"graph.vienna_temps: {t!r} °C is the main fold's graph.temperature already")
        name = f"T{float(t):g}"
        if any(name == n for n, _ in out):
            raise ValueError(f"graph.vienna_temps: {t!r} °C is given twice")
        out.append((name, FoldParams(temperature=float(t))))
    return out


def extra_fold_params(p: dict) -> list[FoldParams]:
    """Folding parameters of the further ViennaRNA opinions (:func:`extra_opinions`)."""
    return [fx for _, fx in extra_opinions(p)]


def node_feature_names(p: dict) -> list[str]:
    """Node feature columns of graphs built with params ``p``: :data:`NODE_FEATURES`, then three per
    further ViennaRNA opinion (:func:`extra_opinions`)."""
    return NODE_FEATURES + [f"bpp_{n}_{s}" for n, _ in extra_opinions(p) for s in ("sum", "max", "entropy")]


def edge_feature_names(p: dict) -> list[str]:
    """Edge feature columns of graphs built with params ``p``: :data:`EDGE_FEATURES`, then one per
    further ViennaRNA opinion."""
    return EDGE_FEATURES + [f"p_{n}_ij" for n, _ in extra_opinions(p)]


def feature_dims(cfg: dict) -> tuple[int, int]:
    """(node features, edge features) of the graphs a config's model reads."""
    p = graph_params(cfg)
    return len(node_feature_names(p)), len(edge_feature_names(p))


def fold_params(p: dict) -> FoldParams:
    return FoldParams(engine=p["engine"], temperature=float(p["temperature"]), mode=p["mode"])


def fold_params2(p: dict) -> FoldParams | None:
    """The second engine's parameters, or None when ``engine2`` is ``none``."""
    e2 = str(p.get("engine2") or "none")
    return None if e2 == "none" else FoldParams(engine=e2, mode=p.get("mode2", "eterna"))


def tta_structures(p: dict) -> list[str]:
    """Structures a molecule is predicted on (and the predictions averaged): given, the main
    engine's MFE and, with a second engine, its MFE."""
    return ["given", "mfe"] + (["mfe2"] if fold_params2(p) else [])


def feature_key(p: dict) -> str:
    """Fingerprint of everything that shapes the features: graph params and the versions of every engine
    and parameter set folded."""
    f2 = fold_params2(p)
    extra = [fx.key() for fx in extra_fold_params(p)]
    return fingerprint([graph_signature(p), fold_params(p).key(), f2.key() if f2 else None] + ([extra] if extra else []))


def build_graphs(df: pd.DataFrame, params: dict | None = None, structure: str | None = None,
                 cache: bool = True, workers: int | None = None, progress: bool = True,
                 cache_dir: Path | str | None = None) -> list[Data]:
    """Graphs for every molecule of ``df``, built once and cached on disk.

    ``structure``: ``"given"`` uses each row's ``structure`` (folding what is missing), ``"mfe"``
    the main engine's MFE structure and ``"mfe2"`` the second engine's (test-time augmentation,
    alternative training structures); ``"sample1"``…``"sample4"`` the i-th structure drawn from
    ViennaRNA's Boltzmann ensemble (``folding.sample_structures``; alternative training structures).
    """
    p = graph_params({"graph": params or {}})
    if structure is not None:
        p["structure"] = structure
    if p["structure"] not in STRUCTURES:
        raise ValueError(f"graph.structure: {p['structure']!r} is not one of {STRUCTURES}")
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    fp, fp2 = fold_params(p), fold_params2(p)
    if p["structure"] == "mfe2" and fp2 is None:
        raise ValueError("structure 'mfe2' needs a second folding engine (graph.engine2)")
    from .data import data_fingerprint
    key = fingerprint([feature_key(p), data_fingerprint(df), NODE_FEATURES, EDGE_FEATURES, 3])
    path = cache_dir / "graphs" / f"graphs-{key}.pt"
    if cache and path.is_file():
        return torch.load(path, weights_only=False)
    seqs = list(df["sequence"])
    folds = fold_cached(seqs, fp, workers=workers, cache_dir=cache_dir, progress=progress)
    folds2 = (fold_cached(seqs, fp2, workers=workers, cache_dir=cache_dir, progress=progress) if fp2
              else [None] * len(seqs))
    extra = [fold_cached(seqs, fx, workers=workers, cache_dir=cache_dir, progress=progress)
             for fx in extra_fold_params(p)]
    extra = list(zip(*extra)) if extra else [()] * len(seqs)
    sample_i = int(p["structure"][len("sample"):]) - 1 if p["structure"].startswith("sample") else None
    sampled = (sampled_cached(seqs, fp, workers=workers, cache_dir=cache_dir, progress=progress)
               if sample_i is not None else [None] * len(seqs))
    out = []
    for rec, f, f2, fx, smp in tqdm(zip(df.to_dict("records"), folds, folds2, extra, sampled), total=len(df),
                                    desc="graphs", disable=not progress, unit="mol"):
        if p["structure"] == "mfe":
            s = f.structure
        elif p["structure"] == "mfe2":
            s = f2.structure
        elif smp is not None:
            s = smp[sample_i]
        else:
            s = rec.get("structure") if isinstance(rec.get("structure"), str) and rec.get("structure") else f.structure
        out.append(molecule_graph(rec, f, structure=s, bpp_threshold=float(p["bpp_threshold"]),
                                  codon_nodes=bool(p["codon_nodes"]), f2=f2, extra=fx))
    if cache:
        with atomic_path(path) as tmp:
            torch.save(out, tmp)
    return out
