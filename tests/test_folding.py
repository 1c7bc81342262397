import numpy as np
import pytest

from openvaccine import folding
from openvaccine.folding import FoldParams, base_pair_distance, fold, fold_cached, loop_types


@pytest.mark.parametrize("structure, expected", [
    ("..((((....))))..", "EESSSSHHHHSSSSEE"),              # hairpin + dangling ends
    ("((..((...))))", "SSBBSSHHHSSSS"),                    # bulge
    ("((..((...))..))", "SSIISSHHHSSIISS"),                # internal loop
    ("((.((...)).((...)).))", "SSMSSHHHSSMSSHHHSSMSS"),    # multiloop
    ("((...))..((...))", "SSHHHSSXXSSHHHSS"),              # external loop between stems
    ("......", "EEEEEE"),
    ("((..[[..))..]]", "SSHHSSHHSSEESS"),                  # pseudoknot pairs are stems
])
def test_loop_types_rules(structure, expected):
    assert loop_types(structure) == expected


def test_loop_types_reproduce_training_annotation(train_rows):
    same = sum(loop_types(r["structure"]) == r["predicted_loop_type"] for r in train_rows)
    assert same >= 0.75 * len(train_rows)
    for r in train_rows:
        ours = loop_types(r["structure"])
        # the only disagreement bpRNA's output shows is X (ours) vs M in the external loop
        assert {(a, b) for a, b in zip(ours, r["predicted_loop_type"]) if a != b} <= {("X", "M")}


def test_vienna_mfe_matches_given_structure_and_bpps_are_probabilities(train_rows):
    r = train_rows[0]
    f = fold(r["sequence"])
    assert f.structure == r["structure"]
    assert f.method == "vienna-global"
    assert np.all((f.i < f.j) & (f.p >= folding.MIN_PROB) & (f.p <= 1))
    assert np.all(f.pair_prob() <= 1.0) and f.dense().shape == (107, 107)
    assert np.allclose(f.dense(), f.dense().T)


def test_linearpartition_engine(train_rows):
    f = fold(train_rows[0]["sequence"], FoldParams(engine="linearpartition"))
    assert len(f.structure) == 107 and f.method == "linearpartition-eterna"
    assert np.all((f.i < f.j) & (f.j < 107)) and 0 < f.pair_prob().max() <= 1


def test_long_sequences_fold_locally():
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGU"), 300))
    f = fold(seq, FoldParams(window_above=200, window=80, span=60))
    assert f.method.startswith("vienna-local") and len(f.structure) == 300
    assert np.all(f.j - f.i <= 60)


def test_cache_hit_costs_no_folding(train_rows, cache_dir, monkeypatch):
    seqs = [r["sequence"] for r in train_rows[:3]]
    first = fold_cached(seqs, cache_dir=cache_dir, workers=1, progress=False)

    def boom(*a, **k):
        raise AssertionError("folded again despite the cache")
    monkeypatch.setattr(folding, "fold", boom)
    second = fold_cached(seqs, cache_dir=cache_dir, workers=2, progress=False)
    for a, b in zip(first, second):
        assert a.structure == b.structure and np.array_equal(a.p, b.p)
    # other parameters are another cache key
    with pytest.raises(AssertionError, match="folded again"):
        fold_cached(seqs[:1], FoldParams(temperature=50.0), cache_dir=cache_dir, workers=1, progress=False)


def test_parallel_fold_matches_serial(train_rows, cache_dir, tmp_path):
    seqs = [r["sequence"] for r in train_rows[:4]] + [train_rows[0]["sequence"]]
    par = fold_cached(seqs, cache_dir=cache_dir, workers=2, progress=False)
    ser = fold_cached(seqs, cache_dir=tmp_path / "other", workers=1, progress=False)
    assert [f.structure for f in par] == [f.structure for f in ser]
    assert np.allclose(par[-1].p, par[0].p)


def test_base_pair_distance():
    assert base_pair_distance("((..))", "((..))") == 0
    assert base_pair_distance("((..))", ".(..)." ) == 1


def test_structure_agreement_scores_given_structures(train_rows):
    from openvaccine.folding import structure_agreement
    rows = train_rows[:3]
    seqs, given = [r["sequence"] for r in rows], [r["structure"] for r in rows]
    t = structure_agreement(seqs, given, {"default": {}, "hot": dict(temperature=95.0),
                                          "T99": dict(params="Turner1999")}, progress=False)
    # the 107-nt given structures are ViennaRNA's default MFE; at 95 °C little stays paired
    assert t.loc["default", "mean_bp_distance"] == 0 and t.loc["default", "exact"] == 1.0
    assert t.loc["hot", "mean_bp_distance"] > 5 and t.loc["hot", "exact"] == 0.0
    assert list(t["molecules"]) == [3, 3, 3]


def test_mfe_structures_rejects_unknown_settings():
    from openvaccine.folding import mfe_structures
    with pytest.raises(ValueError, match="temprature"):
        mfe_structures(["GGGAAACCC"], dict(temprature=30))
    with pytest.raises(ValueError, match="Turner1066"):
        mfe_structures(["GGGAAACCC"], dict(params="Turner1066"))
    with pytest.raises(ValueError, match="unknown folding engine 'nupack'"):
        mfe_structures(["GGGAAACCC"], dict(engine="nupack"))


def test_boltzmann_samples_are_reproducible_valid_structures(train_rows, cache_dir, tmp_path, monkeypatch):
    from openvaccine.data import pair_table
    seqs = [r["sequence"] for r in train_rows[:3]]
    a = folding.sample_structures(seqs[0])
    assert len(a) == folding.SAMPLES and a == folding.sample_structures(seqs[0])      # same seed, same draw
    for s in a:
        assert len(s) == 107 and set(s) <= set("().")
        pt = pair_table(s)                                     # nested, and only canonical or GU pairs
        assert all({seqs[0][i], seqs[0][j]} in ({"G", "C"}, {"A", "U"}, {"G", "U"}) for i, j in enumerate(pt) if j > i)
    draws = [folding.sample_structures(seqs[0], seed=s) for s in range(5)]
    assert len({tuple(d) for d in draws}) > 1                  # the seed matters
    # cached in worker processes = computed here, in any order; then read back without sampling again
    par = folding.sampled_cached(seqs[::-1], cache_dir=cache_dir, workers=2, progress=False)
    assert par[::-1] == [folding.sample_structures(s) for s in seqs]
    monkeypatch.setattr(folding, "sample_structures", lambda *a, **k: pytest.fail("sampled again despite the cache"))
    assert folding.sampled_cached(seqs, cache_dir=cache_dir, workers=1, progress=False) == par[::-1]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="structure samples need the vienna engine"):
        folding.sample_structures(seqs[0], FoldParams(engine="linearpartition"))
    with pytest.raises(ValueError, match="above the global-folding limit 50"):
        folding.sample_structures(seqs[0], FoldParams(window_above=50))


def test_other_parameter_sets_fold_in_processes_of_their_own(train_rows, cache_dir):
    seqs = [r["sequence"] for r in train_rows[:3]]
    default = [fold(s) for s in seqs]                # this process folds, with the default set
    andr = FoldParams(params="Andronescu2007")
    assert andr.key() != FoldParams().key() and FoldParams(params="").key() == FoldParams().key()
    other = fold_cached(seqs, andr, cache_dir=cache_dir, workers=1, progress=False)
    # another energy model: another ensemble, though the same kind of output
    assert any(a.energy != b.energy for a, b in zip(default, other))
    assert not np.allclose(default[0].pair_prob(), other[0].pair_prob(), atol=1e-3)
    assert all(f.n == 107 and np.all((f.p > 0) & (f.p <= 1)) for f in other)
    # the two-worker run (own processes again) gives the same folds; then both come from the cache
    again = fold_cached(seqs, andr, cache_dir=cache_dir / "other", workers=2, progress=False)
    assert [f.energy for f in again] == [f.energy for f in other]
    assert all(np.array_equal(a.p, b.p) for a, b in zip(again, other))
    # this process has folded with the default set: loading another here would be silently ignored
    with pytest.raises(RuntimeError, match="needs a process of its own"):
        folding.use_params("Andronescu2007")
    with pytest.raises(RuntimeError, match="fold other sets through fold_cached"):
        fold(seqs[0], andr)
    with pytest.raises(ValueError, match=r"graph.vienna_params: unknown ViennaRNA parameter set 'Turner1066'; known: \["):
        folding.check_params("Turner1066", "graph.vienna_params")
    with pytest.raises(ValueError, match="unknown ViennaRNA parameter set 'Turner1066'"):
        fold_cached(seqs, FoldParams(params="Turner1066"), cache_dir=cache_dir, progress=False)
