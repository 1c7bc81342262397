import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from openvaccine import ERRORS, TARGETS
from openvaccine.folding import fold
from openvaccine.graphs import (EDGE_FEATURES, EDGE_TYPES, NODE_FEATURES, bpp_stats, build_graphs, molecule_graph,
                                aligned_at_3_end, reverse_graph, shifted_graph)


def _edge_dict(g):
    return {(int(s), int(d)): a for (s, d), a in zip(g.edge_index.T.tolist(), g.edge_attr)}


def _assert_opinion_appended(a, b, f, col: int = len(EDGE_FEATURES)) -> dict:
    """Graph ``b`` is graph ``a`` with the further ViennaRNA opinion ``f`` appended: ``f``'s bpp statistics as
    node columns and its pair probability in edge column ``col`` (0 on backbone edges). Returns ``b``'s edges."""
    assert torch.equal(a.x, b.x[:, :len(NODE_FEATURES)]) and torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.edge_attr, b.edge_attr[:, :len(EDGE_FEATURES)])
    assert torch.allclose(b.x[:, len(NODE_FEATURES):], torch.from_numpy(np.stack(bpp_stats(f), 1)))
    e, dense = _edge_dict(b), f.dense()
    assert all(abs(float(v[col]) - (0.0 if abs(s - d) == 1 and v[:2].any() else dense[s, d])) < 1e-6
               for (s, d), v in e.items())
    return e


def test_graph_shapes_targets_and_mask(train_rows):
    r = train_rows[0]
    g = molecule_graph(r, fold(r["sequence"]))
    assert g.x.shape == (107, len(NODE_FEATURES)) and g.edge_attr.shape[1] == len(EDGE_FEATURES)
    assert g.y.shape == (107, 5) and int(g.score_mask.sum()) == 68
    assert torch.allclose(g.y[:68, 0], torch.tensor(r["reactivity"], dtype=torch.float32))
    assert abs(float(g.sn) - r["signal_to_noise"]) < 1e-5 and float(g.sn_filter) == r["SN_filter"]
    base = g.x[:, :4].argmax(1)
    assert "".join("ACGU"[i] for i in base) == r["sequence"]
    assert torch.allclose(g.x[:, NODE_FEATURES.index("p_unpaired")] + g.x[:, NODE_FEATURES.index("bpp_sum")],
                          torch.ones(107))


def test_edges_are_symmetric_with_direction_swapped(train_rows):
    r = train_rows[1]
    g = molecule_graph(r, fold(r["sequence"]), bpp_threshold=0.1)
    e = _edge_dict(g)
    fwd, bwd = EDGE_TYPES.index("fwd"), EDGE_TYPES.index("bwd")
    for (s, d), a in e.items():
        b = e[(d, s)].clone()
        b[[fwd, bwd]] = b[[bwd, fwd]]
        assert torch.equal(a, b), (s, d)
    assert all(e[(i, i + 1)][fwd] == 1 and e[(i + 1, i)][bwd] == 1 for i in range(106))
    pair = EDGE_TYPES.index("pair")
    n_pairs = r["structure"].count("(")
    assert int(g.edge_attr[:, pair].sum()) == 2 * n_pairs


def test_pseudoknot_and_bpp_edges():
    seq = "GGGGAAACCCCAAAAGGGGAAACCCC"
    st = "((((...[[[[....))))...]]]]"
    rec = dict(id="pk", sequence=seq)
    g = molecule_graph(rec, fold(seq), structure=st, bpp_threshold=0.01)
    e = _edge_dict(g)
    pk = EDGE_TYPES.index("pk_pair")
    assert e[(7, 25)][pk] == 1 and e[(25, 7)][pk] == 1 and e[(0, 18)][EDGE_TYPES.index("pair")] == 1
    assert int(g.edge_attr[:, pk].sum()) == 8
    bpp = g.edge_attr[:, EDGE_TYPES.index("bpp")] == 1
    assert bpp.any() and (g.edge_attr[bpp, EDGE_FEATURES.index("p_ij")] >= 0.01).all()
    assert g.score_mask.sum() == 0                        # unlabelled
    loops = g.x[:, NODE_FEATURES.index("loop_S")]
    assert loops[7] == 1 and loops[25] == 1


def test_codon_nodes(train_rows):
    r = train_rows[0]
    g = molecule_graph(r, fold(r["sequence"]), codon_nodes=True)
    n_cod = 107 // 3
    assert g.x.shape[0] == 107 + n_cod and int(g.is_base.sum()) == 107
    assert g.x[107:, NODE_FEATURES.index("is_codon")].eq(1).all()
    e = _edge_dict(g)
    cb = EDGE_TYPES.index("codon_base")
    assert e[(0, 107)][cb] == 1 and e[(107, 2)][cb] == 1 and e[(107, 108)][EDGE_TYPES.index("codon_codon")] == 1
    assert not g.score_mask[107:].any()


def test_reversed_graph_is_the_graph_of_the_reversed_molecule(train_rows):
    r = train_rows[2]
    f = fold(r["sequence"])
    g = molecule_graph(r, f, bpp_threshold=0.05)
    n = len(r["sequence"])
    # the same molecule written from its 3' end: reversed strings and labels, the fold mirrored
    mirror = str.maketrans("()", ")(")
    rr = dict(r, sequence=r["sequence"][::-1], structure=r["structure"][::-1].translate(mirror), seq_scored=n)
    for col in TARGETS + ERRORS:
        rr[col] = list(np.r_[r[col], np.zeros(n - 68)][::-1])
    fr = dataclasses.replace(f, i=(n - 1 - f.j).astype(f.i.dtype), j=(n - 1 - f.i).astype(f.j.dtype),
                             structure=f.structure[::-1].translate(mirror))
    want = molecule_graph(rr, fr, loops=r["predicted_loop_type"][::-1], bpp_threshold=0.05)
    want.score_mask[:n - 68] = False                      # the reversed molecule is scored at its last 68 bases
    x0, e0 = g.x.clone(), g.edge_attr.clone()
    h = reverse_graph(g)
    assert torch.equal(g.x, x0) and torch.equal(g.edge_attr, e0)  # a copy: the original stays as it was
    assert torch.allclose(h.x, want.x) and torch.allclose(h.y, want.y) and torch.allclose(h.err, want.err)
    assert torch.equal(h.score_mask, want.score_mask) and int(h.score_mask[n - 68:].sum()) == 68
    assert _edge_dict(h).keys() == _edge_dict(want).keys()
    assert all(torch.allclose(a, _edge_dict(want)[k]) for k, a in _edge_dict(h).items())
    assert h.structure == rr["structure"] and h.id == r["id"] and float(h.sn) == float(g.sn)
    back = reverse_graph(h)                               # twice: the molecule as it was
    for key in ("x", "y", "err", "score_mask", "edge_index", "edge_attr"):
        assert torch.equal(getattr(back, key), getattr(g, key)), key
    assert back.structure == r["structure"]
    with pytest.raises(ValueError, match="codon nodes"):
        reverse_graph(molecule_graph(r, f, codon_nodes=True))


def test_shifted_graph_moves_only_the_positions_after_its_seam(train_rows):
    r = train_rows[1]
    g = molecule_graph(r, fold(r["sequence"]), bpp_threshold=0.05)
    n, x0 = len(r["sequence"]), g.x.clone()
    h = shifted_graph(g, 30, 23)
    assert torch.equal(g.x, x0)                                        # a copy: the original stays as it was
    pa, pr = NODE_FEATURES.index("pos_abs"), NODE_FEATURES.index("pos_rel")
    i = torch.arange(n, dtype=torch.float32)
    assert torch.allclose(h.x[:31, pa], i[:31] / 100) and torch.allclose(h.x[31:, pa], (i[31:] + 23) / 100)
    assert float(h.x[n - 1, pa]) == pytest.approx(1.29) and float(h.x[n - 1, pr]) == pytest.approx(1.0)
    assert torch.allclose(h.x[:, pr], h.x[:, pa] * 100 / (n + 22))
    rest = [c for c in range(g.x.shape[1]) if c not in (pa, pr)]
    assert torch.equal(h.x[:, rest], g.x[:, rest])
    for key in ("y", "err", "score_mask", "edge_index", "edge_attr"):
        assert getattr(h, key) is getattr(g, key), key
    assert torch.equal(shifted_graph(g, 5, 0).x, g.x)
    for seam, k in ((n, 3), (-1, 3), (10, -1)):
        with pytest.raises(ValueError, match=f"molecule {r['id']}: a shift needs 0 <= seam < {n} and k >= 0"):
            shifted_graph(g, seam, k)


def test_3_end_aligned_frame_counts_the_last_bases_back_from_the_3_end(test_rows, cache_dir):
    gs = build_graphs(pd.DataFrame(test_rows), cache_dir=cache_dir, progress=False, workers=1)
    short, long_ = (next(g for g in gs if int(g.seq_len) == n) for n in (107, 130))
    assert aligned_at_3_end(short, 107, 45) is short
    x0 = long_.x.clone()
    h = aligned_at_3_end(long_, 107, 45)
    assert torch.equal(long_.x, x0)
    pa, pr = NODE_FEATURES.index("pos_abs"), NODE_FEATURES.index("pos_rel")
    pos = torch.round(h.x[:, pa] * 100).long()
    i = torch.arange(130)
    assert torch.equal(pos[:46], i[:46]) and (pos[46:69] == 45).all() and torch.equal(pos[69:], i[69:] - 23)
    assert int(pos[90]) == 67 and int(pos[129]) == 106             # the last scored base and the 3' end, as at 107 nt
    assert torch.allclose(h.x[:, pr], pos / 106.0)
    rest = [c for c in range(h.x.shape[1]) if c not in (pa, pr)]
    assert torch.equal(h.x[:, rest], long_.x[:, rest])
    for seam in (-1, 107):
        with pytest.raises(ValueError, match=f"0 <= seam < length, got seam={seam}, length=107"):
            aligned_at_3_end(long_, 107, seam)


def test_build_graphs_cached_and_mfe_variant(train_rows, cache_dir):
    df = pd.DataFrame(train_rows[:4])
    a = build_graphs(df, cache_dir=cache_dir, progress=False, workers=1)
    files = list((cache_dir / "graphs").glob("*.pt"))
    assert len(a) == 4 and len(files) == 1
    b = build_graphs(df, cache_dir=cache_dir, progress=False, workers=1)
    assert all(torch.equal(x.edge_index, y.edge_index) for x, y in zip(a, b))
    c = build_graphs(df, structure="mfe", cache_dir=cache_dir, progress=False, workers=1)
    assert len(list((cache_dir / "graphs").glob("*.pt"))) == 2
    # 107-nt structures are ViennaRNA's MFE: same graphs
    assert all(x.structure == y.structure for x, y in zip(a, c))
    assert np.isclose(float(a[0].x.sum()), float(c[0].x.sum()))


def test_structure_of_wrong_length_is_an_error():
    import pytest
    from openvaccine.data import DataError
    with pytest.raises(DataError, match=r"molecule m: field 'structure': length 3 != sequence length 4"):
        molecule_graph(dict(id="m", sequence="GGCC"), fold("GGCC"), structure="(.)")


def test_second_engine_features_edges_and_structure(train_rows, cache_dir):
    from openvaccine.folding import FoldParams
    r = train_rows[2]
    f2 = fold(r["sequence"], FoldParams(engine="linearpartition", mode="eterna"))
    g0 = molecule_graph(r, fold(r["sequence"]))
    g = molecule_graph(r, fold(r["sequence"]), f2=f2)
    s2 = g.x[:, NODE_FEATURES.index("bpp2_sum")]
    assert g0.x[:, NODE_FEATURES.index("bpp2_sum")].eq(0).all()          # no second engine: zeros
    assert (s2 >= 0).all() and (s2 <= 1).all() and s2.sum() > 10
    assert torch.allclose(s2, torch.from_numpy(f2.pair_prob()))
    e = _edge_dict(g)
    b2, p2 = EDGE_TYPES.index("bpp2"), EDGE_FEATURES.index("p2_ij")
    dense = f2.dense()
    flagged = [(s, d) for (s, d), a in e.items() if a[b2] == 1]
    assert flagged and all(abs(float(e[k][p2]) - dense[k]) < 1e-6 and dense[k] >= 0.05 for k in flagged)
    assert all(float(a[p2]) == 0 for (s, d), a in e.items() if abs(s - d) == 1 and a[b2] == 0)
    # the cached builder: "mfe2" is the second engine's MFE, and needs a second engine
    df = pd.DataFrame(train_rows[:3])
    params = {"engine2": "linearpartition"}
    alt = build_graphs(df, params, structure="mfe2", cache_dir=cache_dir, progress=False, workers=1)
    assert alt[2].structure == f2.structure != r["structure"]
    import pytest
    with pytest.raises(ValueError, match="needs a second folding engine"):
        build_graphs(df, {}, structure="mfe2", cache_dir=cache_dir, progress=False, workers=1)
    with pytest.raises(ValueError, match="not one of"):
        build_graphs(df, {}, structure="centroid", cache_dir=cache_dir, progress=False, workers=1)


def test_sampled_structure_graphs(train_rows, cache_dir):
    import pytest
    from openvaccine.folding import loop_types, sample_structures
    df = pd.DataFrame(train_rows[:3])
    g = build_graphs(df, structure="sample2", cache_dir=cache_dir, progress=False, workers=1)
    for x, r in zip(g, train_rows[:3]):
        s = sample_structures(r["sequence"])[1]
        assert x.structure == s
        pairs = _edge_dict(x)
        n_pair = sum(1 for a in pairs.values() if a[EDGE_TYPES.index("pair")] == 1)
        assert n_pair == 2 * s.count("(")                  # its own pairs, both directions
        hp = x.x[:, NODE_FEATURES.index("loop_H")].numpy()  # loop types annotated from the sample
        assert np.array_equal(hp == 1, np.array([c == "H" for c in loop_types(s)]))
    with pytest.raises(ValueError, match="'sample9' is not one of"):
        build_graphs(df, structure="sample9", cache_dir=cache_dir, progress=False, workers=1)


def test_further_vienna_parameter_sets_append_features(train_rows, cache_dir):
    import pytest
    from openvaccine.config import load_config
    from openvaccine.folding import FoldParams, fold_cached
    from openvaccine.graphs import edge_feature_names, feature_dims, feature_key, graph_params, node_feature_names
    from openvaccine.models import build_model
    df = pd.DataFrame(train_rows[:3])
    p = {"engine2": "linearpartition", "vienna_params": ["Turner1999"]}
    plain = build_graphs(df, {"engine2": "linearpartition"}, cache_dir=cache_dir, progress=False, workers=1)
    more = build_graphs(df, p, cache_dir=cache_dir, progress=False, workers=1)
    names, enames = node_feature_names(graph_params({"graph": p})), edge_feature_names(graph_params({"graph": p}))
    assert names[len(NODE_FEATURES):] == ["bpp_Turner1999_sum", "bpp_Turner1999_max", "bpp_Turner1999_entropy"]
    assert enames[len(EDGE_FEATURES):] == ["p_Turner1999_ij"]
    folds = fold_cached(list(df.sequence), FoldParams(params="Turner1999"), cache_dir=cache_dir, progress=False)
    for a, b, f in zip(plain, more, folds):
        assert b.x.shape == (107, len(names)) and b.edge_attr.shape[1] == len(enames)
        e = _assert_opinion_appended(a, b, f)     # the graph is the same, with the new set's opinion appended
        assert sum(float(v[len(EDGE_FEATURES)]) > 0 for v in e.values()) > 20
    # no further sets = the graphs, caches and fingerprints of before the option existed
    assert feature_key(graph_params({"graph": {"vienna_params": []}})) == feature_key(graph_params({}))
    assert graph_params({"graph": {"vienna_params": "Turner1999"}})["vienna_params"] == ["Turner1999"]   # one set, bare
    assert feature_key(graph_params({"graph": p})) != feature_key(graph_params({"graph": {"engine2": "linearpartition"}}))
    cfg = load_config("smoke", ["graph.vienna_params=[Turner1999]", "model.exclude_features=[bpp_Turner1999_max]"])
    assert feature_dims(cfg) == (len(NODE_FEATURES) + 3, len(EDGE_FEATURES) + 1)
    model = build_model(cfg, *feature_dims(cfg)).eval()
    from torch_geometric.data import Batch
    assert model(Batch.from_data_list(more)).shape == (3 * 107, 5)
    with pytest.raises(ValueError, match="graph.vienna_params: unknown ViennaRNA parameter set 'Turner2044'"):
        build_graphs(df, {"vienna_params": ["Turner2044"]}, cache_dir=cache_dir, progress=False, workers=1)


def test_further_vienna_temperatures_append_features(train_rows, cache_dir):
    """``graph.vienna_temps``: ViennaRNA's default parameters folded at each further temperature add the
    four columns of an opinion, after the parameter sets'; no temperatures = the graphs of before."""
    from openvaccine.folding import FoldParams, fold_cached
    from openvaccine.graphs import edge_feature_names, extra_opinions, feature_key, graph_params, node_feature_names
    df = pd.DataFrame(train_rows[:2])
    p = {"vienna_params": ["Turner1999"], "vienna_temps": [50, 62.5]}
    gp = graph_params({"graph": p})
    assert node_feature_names(gp)[len(NODE_FEATURES):] == [f"bpp_{n}_{s}" for n in ("Turner1999", "T50", "T62.5")
                                                         for s in ("sum", "max", "entropy")]
    assert edge_feature_names(gp)[len(EDGE_FEATURES):] == ["p_Turner1999_ij", "p_T50_ij", "p_T62.5_ij"]
    plain = build_graphs(df, {}, cache_dir=cache_dir, progress=False, workers=1)
    hot = build_graphs(df, {"vienna_temps": 50}, cache_dir=cache_dir, progress=False, workers=1)   # one, bare
    f37 = fold_cached(list(df.sequence), FoldParams(), cache_dir=cache_dir, progress=False)
    f50 = fold_cached(list(df.sequence), FoldParams(temperature=50.0), cache_dir=cache_dir, progress=False)
    for a, b, f, g in zip(plain, hot, f37, f50):
        _assert_opinion_appended(a, b, g)
        assert float(g.pair_prob().sum()) < float(f.pair_prob().sum())       # hotter: fewer pairs
    assert feature_key(graph_params({"graph": {"vienna_temps": []}})) == feature_key(graph_params({}))
    assert feature_key(graph_params({"graph": {"vienna_temps": [50]}})) != feature_key(graph_params({}))
    for bad, msg in (([37], "37 °C is the main fold's graph.temperature"), ([50, 50.0], "50.0 °C is given twice"),
                     (["hot"], "'hot' is not a temperature in °C from 0 to 100"), ([101], "101 is not a temperature")):
        with pytest.raises(ValueError, match=f"graph.vienna_temps: {msg}"):
            extra_opinions(graph_params({"graph": {"vienna_temps": bad}}))
