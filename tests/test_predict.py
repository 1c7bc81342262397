import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from openvaccine import SCORED, TARGETS, cli
from openvaccine.config import parse_window
from openvaccine.data import DataError
from openvaccine.predict import (BlendError, NoModelsError, apply_floors, blend, blend_report, check_same_grouping, ensemble_predict, fit_blend, fit_floors, nested_blend, load_runs, make_submission,
                                 prediction_jobs, predict_file, read_sequences, submission_frame, validate_submission,
                                 write_submission)


def _sample(rows):
    ids = [f"{r['id']}_{k}" for r in rows for k in range(r["seq_length"])]
    s = pd.DataFrame({"id_seqpos": ids})
    for t in TARGETS:
        s[t] = 0.0
    return s


def test_validator_says_what_is_wrong(test_rows):
    sample = _sample(test_rows[:2])
    good = sample.copy()
    good[TARGETS] = 0.5
    validate_submission(good, sample)
    with pytest.raises(ValueError, match="columns"):
        validate_submission(good.drop(columns="deg_50C"), sample)
    with pytest.raises(ValueError, match="rows"):
        validate_submission(good.iloc[:-1], sample)
    swapped = good.copy()
    swapped.loc[[0, 1], "id_seqpos"] = swapped.loc[[1, 0], "id_seqpos"].to_numpy()
    with pytest.raises(ValueError, match="id_seqpos differs .* row 2"):
        validate_submission(swapped, sample)
    nan = good.copy()
    nan.loc[5, "deg_pH10"] = np.nan
    with pytest.raises(ValueError, match="non-finite deg_pH10 at row 7"):
        validate_submission(nan, sample)


def test_failed_write_leaves_previous_submission(tmp_path, test_rows):
    sample = _sample(test_rows[:2])
    out = tmp_path / "submission.csv"
    out.write_text("previous\n")
    df = pd.DataFrame(test_rows[:2])
    preds = [np.full((r["seq_length"], 5), np.nan) for r in test_rows[:2]]
    with pytest.raises(ValueError, match="non-finite"):
        write_submission(submission_frame(df, preds), sample, out)
    assert out.read_text() == "previous\n" and not list(tmp_path.glob(".*.tmp*"))


def test_blend_weights_are_a_convex_combination():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 130, 5))
    good = y + rng.normal(scale=0.1, size=y.shape)
    bad = y + rng.normal(scale=1.0, size=y.shape)
    mask = np.zeros((50, 130), bool)
    mask[:, :68] = True
    W = fit_blend([good, bad], y, mask)
    assert np.allclose(W.sum(0), 1) and (W >= 0).all() and (W[0] > 0.9).all()


def test_blend_weights_reach_the_optimum_of_two_close_members():
    # two members that differ by ~1 % of their error: the optimum (per target, found exactly by a
    # 1-D least squares) must be reached, not the equal-weight starting point
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 130, 5))
    noise = rng.normal(scale=0.5, size=y.shape)
    a, b = y + noise + 0.01 * rng.normal(size=y.shape), y + noise + 0.01 * rng.normal(size=y.shape)
    mask = np.zeros((200, 130), bool)
    mask[:, :68] = True
    W = fit_blend([a, b], y, mask)
    for c in range(5):
        d, r = (a - b)[..., c][mask], (y - b)[..., c][mask]
        best = np.clip(d @ r / (d @ d), 0, 1)
        assert W[0, c] == pytest.approx(best, abs=1e-3) and W[1, c] == pytest.approx(1 - best, abs=1e-3)
    assert not np.allclose(W, 0.5, atol=0.01)


def test_nested_blend_applies_weights_fitted_on_the_other_folds():
    # member a is exact on fold 1 and noisy on fold 0, member b the reverse: weights fitted on all
    # rows share the two, but each fold's nested weights come from the other fold, where the
    # member that fails here looks perfect
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 130, 5))
    folds = np.repeat([0, 1], 20)
    mask = np.zeros((40, 130), bool)
    mask[:, :68] = True
    noise = rng.normal(scale=0.5, size=y.shape)
    a, b = y + noise * (folds == 0)[:, None, None], y + noise * (folds == 1)[:, None, None]
    nested, _ = nested_blend([a, b], y, mask, folds)
    for f in (0, 1):
        va = folds == f
        W = fit_blend([a[~va], b[~va]], y[~va], mask[~va])
        assert np.allclose(nested[va], blend([a[va], b[va]], W))
        assert np.allclose(W[f], 1.0, atol=1e-3)                    # the member exact on the other fold
    fitted = blend([a, b], fit_blend([a, b], y, mask))
    err = lambda p: np.sqrt(((p - y)[mask] ** 2).mean())
    assert err(nested) > 1.5 * err(fitted)


def test_floors_are_the_exact_optimum_and_none_where_they_cannot_help():
    # labels are positive-leaning where the predictions run low (as the measured data are): lifting the
    # lowest predictions to a floor lowers the RMSE, and the floor found beats every point of a fine grid
    rng = np.random.default_rng(3)
    y = np.abs(rng.normal(scale=0.3, size=(30, 130, 5)))
    pred = y + rng.normal(scale=0.2, size=y.shape)
    mask = np.zeros((30, 130), bool)
    mask[:, :68] = True
    floors = fit_floors(pred, y, mask)
    err = lambda p, c: np.sqrt(((p[..., c] - y[..., c])[mask] ** 2).mean())
    for c, g in enumerate(floors):
        assert g is not None and err(np.maximum(pred, g), c) < err(pred, c)
        grid = np.linspace(g - 0.2, g + 0.2, 401)
        assert err(np.maximum(pred, g), c) <= min(err(np.maximum(pred, v), c) for v in grid) + 1e-12
    floored = apply_floors(pred, floors)
    assert np.all(floored >= np.array(floors)) and np.array_equal(floored[pred > max(floors)], pred[pred > max(floors)])
    assert fit_floors(y, y, mask) == [None] * 5                       # exact predictions: nothing to lift
    assert fit_floors(pred, y, np.zeros_like(mask)) == [None] * 5      # no scored position: nothing to fit
    assert np.array_equal(apply_floors(pred, [None] * 5), pred)
    by_target = dict(zip(TARGETS, floors))                            # blend_report's form: a dict by target
    assert np.array_equal(apply_floors(pred, by_target), floored)
    assert np.array_equal(apply_floors(pred, dict(by_target, reactivity=None))[..., 0], pred[..., 0])


def test_nested_floors_are_fitted_on_the_other_folds():
    rng = np.random.default_rng(4)
    y = np.abs(rng.normal(scale=0.3, size=(40, 130, 5)))
    a, b = (y + rng.normal(scale=s, size=y.shape) for s in (0.2, 0.3))
    folds = np.repeat([0, 1], 20)
    mask = np.zeros((40, 130), bool)
    mask[:, :68] = True
    _, nested = nested_blend([a, b], y, mask, folds)
    for f in (0, 1):
        va = folds == f
        W = fit_blend([a[~va], b[~va]], y[~va], mask[~va])
        lo = fit_floors(blend([a[~va], b[~va]], W), y[~va], mask[~va])
        assert np.allclose(nested[va], np.maximum(blend([a[va], b[va]], W), lo))


def test_submit_without_models_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="make train"):
        make_submission(models_dir=tmp_path)


def test_submission_from_tiny_run(trained, test_rows, tmp_path):
    d, run, train_df = trained
    sample = _sample(test_rows)
    out = make_submission(out=tmp_path / "submission.csv", models_dir=d, train=train_df,
                          test=pd.DataFrame(test_rows), sample=sample)
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["id_seqpos"] + TARGETS and len(sub) == len(sample)
    assert (sub["id_seqpos"] == sample["id_seqpos"]).all() and np.isfinite(sub[TARGETS].to_numpy()).all()
    assert len(list(tmp_path.glob("submission-*.csv"))) == 1 and (tmp_path / "submission.json").is_file()
    floors = json.loads((tmp_path / "submission.json").read_text())["blend"]["floors"]
    for t in TARGETS:                  # the blend's floors, fitted on the OOF, are applied to the test predictions
        assert floors[t] is None or sub[t].min() >= round(floors[t], 6) - 1e-6
    # 130-nt molecules are predicted at every base
    long_id = next(r["id"] for r in test_rows if r["seq_length"] == 130)
    assert sub["id_seqpos"].str.startswith(long_id + "_").sum() == 130


def test_prediction_passes_in_processes_match_passes_here(trained, test_rows, tmp_path):
    # two members (the same folds under two names, weighted apart per target): every fold × structure
    # pass in two spawned processes gives the blend the passes made here give
    d, run, train_df = trained
    for name in ("a", "b"):
        shutil.copytree(d / run, tmp_path / name)
    runs = load_runs(models_dir=tmp_path)
    w = {"a": dict(zip(TARGETS, [1.0, 0.3, 0.5, 0.0, 0.9])), "b": dict(zip(TARGETS, [0.0, 0.7, 0.5, 1.0, 0.1]))}
    df = pd.DataFrame(test_rows)
    here = ensemble_predict(runs, df, weights=w, progress=False, jobs=1)
    there = ensemble_predict(runs, df, weights=w, progress=False, jobs=2)
    assert [len(p) for p in here] == list(df["seq_length"])
    atol = 2e-3 if torch.cuda.is_available() else 1e-5     # the processes predict on the CPU, here on CUDA's fp16
    for a, b in zip(here, there):
        np.testing.assert_allclose(a, b, atol=atol)
    one = ensemble_predict(runs[:1], df, weights={"a": dict.fromkeys(TARGETS, 1.0)}, progress=False, jobs=1)
    for a, b in zip(here, one):                                         # the same folds: one run's prediction
        np.testing.assert_allclose(a, b, atol=atol)


def test_fold_predictions_are_kept_reused_and_refused_once_stale(trained, test_rows, tmp_path, monkeypatch):
    import openvaccine.predict as P
    import openvaccine.train as T
    from openvaccine.graphs import tta_structures
    d, run, train_df = trained
    shutil.copytree(d / run, tmp_path / "a", ignore=shutil.ignore_patterns("predictions"))
    runs = load_runs(models_dir=tmp_path)
    df, w = pd.DataFrame(test_rows), {"a": dict.fromkeys(TARGETS, 1.0)}
    fp, sts, fold = T.data_fingerprint(df), tta_structures(runs[0].graph), lambda k: tmp_path / "a" / f"fold{k}.pt"
    fresh = ensemble_predict(runs, df, weights=w, progress=False, jobs=1)
    kept = ensemble_predict(runs, df, weights=w, progress=False, jobs=1, keep=True)
    files = sorted(p.name for p in (tmp_path / "a" / "predictions").glob("*.npz"))
    assert files == [f"fold{k}-{'+'.join(sts)}-{fp}.npz" for k in range(2)]
    per_fold = [T.load_fold_prediction(fold(k), sts, fp) for k in range(2)]
    assert [len(q) for q in per_fold[0]] == list(df["seq_length"])
    for a, b, f0, f1 in zip(fresh, kept, *per_fold):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(a, (f0 + f1) / 2, atol=1e-6)          # the folds' mean
    monkeypatch.setattr(P, "_pass_predictions", lambda tasks, *a: iter(()) if not tasks else 1 / 0)
    again = ensemble_predict(runs, df, weights=w, progress=False, keep=True)      # no pass runs
    for a, b in zip(kept, again):
        np.testing.assert_array_equal(a, b)
    # a teacher's labels for a fold are that fold's kept prediction (and are kept when made)
    monkeypatch.setattr(T, "tta_predict", lambda *a, **k: 1 / 0)
    ck1 = torch.load(fold(1), weights_only=False)
    labels, _ = T.teacher_labels(["a"], 1, ck1["oof_index"], ck1["fingerprints"]["data"], df, tmp_path, progress=False)
    for a, b in zip(labels, per_fold[1]):
        np.testing.assert_array_equal(a, b)
    other = T.data_fingerprint(df.assign(sequence=df["sequence"].str.replace("A", "G", n=1)))
    assert T.load_fold_prediction(fold(1), sts, other) is None                  # other molecules
    ck0 = torch.load(fold(0), weights_only=False)
    ck0["score"] += 1e-3
    torch.save(ck0, fold(0))                                          # the fold retrained: its prediction is stale
    assert T.load_fold_prediction(fold(0), sts, fp) is None and T.load_fold_prediction(fold(1), sts, fp) is not None


def test_prediction_processes_follow_the_cores_and_the_work():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert prediction_jobs(cpu, passes=60, molecules=3634, cores=2) == 2
    assert prediction_jobs(cpu, passes=60, molecules=3634, cores=16) == 8
    assert prediction_jobs(cpu, passes=3, molecules=3634, cores=16) == 3
    assert prediction_jobs(cpu, passes=60, molecules=8, cores=16) == 1          # a process costs seconds to start
    assert prediction_jobs(cpu, passes=1, molecules=3634, cores=16) == 1
    assert prediction_jobs(gpu, passes=60, molecules=3634, cores=16) == 1


@pytest.mark.parametrize("content, suffix, match", [
    (">a\nACGX\n", ".fasta", r"record 1 \(id a\): field 'sequence': invalid character 'X'"),
    (">a\n\n>b\nACGU\n", ".fasta", r"id a.*empty"),
    (">a\nACGU\n>a\nACGU\n", ".fasta", r"record 3 \(id a\): field 'id': duplicate of record 1"),
    ("id,sequence,structure\nm1,ACGUACGU,((..))\n", ".csv", r"record 2 \(id m1\): field 'structure': length 6"),
    ('[{"id": "m1", "sequence": "ACGU", "structure": "((.."}]', ".json", r"unbalanced"),
])
def test_read_sequences_errors_name_the_record(tmp_path, content, suffix, match):
    p = tmp_path / f"in{suffix}"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        read_sequences(p)


def test_read_sequences_formats(tmp_path):
    fa = tmp_path / "a.fasta"
    fa.write_text(">x desc\nacgt\nACGU\n>y\nGGGAAACCC\n(((...)))\n")
    with pytest.warns(UserWarning, match="normalised"):
        df = read_sequences(fa)
    assert list(df["id"]) == ["x", "y"] and df["sequence"][0] == "ACGUACGU"
    assert pd.isna(df["structure"][0]) and df["structure"][1] == "(((...)))"
    js = tmp_path / "a.jsonl"
    js.write_text('{"id": "p", "sequence": "ACGU"}\n{"id": "q", "sequence": "GGCC"}\n')
    assert list(read_sequences(js)["id"]) == ["p", "q"]


def test_predict_short_and_long_sequences(trained, tmp_path):
    d, run, train_df = trained
    rng = np.random.default_rng(1)
    long_seq = "".join(rng.choice(list("ACGU"), 1100))
    fa = tmp_path / "in.fasta"
    fa.write_text(f">short\nGGGAAAUCCCGCGAAAGCGG\n(((......)))........\n>long\n{long_seq}\n")
    out = tmp_path / "preds.csv"
    summary = predict_file(fa, out, models_dir=d, train=train_df, window="0:10", plot_dir=tmp_path / "plots",
                           progress=False)
    per_base = pd.read_csv(out)
    assert list(per_base.columns) == ["id", "seqpos", "base"] + TARGETS
    assert len(per_base) == 20 + 1100 and np.isfinite(per_base[TARGETS].to_numpy()).all()
    assert "".join(per_base[per_base.id == "short"]["base"]) == "GGGAAAUCCCGCGAAAGCGG"
    s = pd.read_csv(tmp_path / "preds_summary.csv").set_index("id")
    assert s.loc["short", "structure_source"] == "given" and s.loc["long", "structure_source"] == "mfe"
    assert s.loc["short", "folding"] == "vienna-global" and s.loc["long", "folding"].startswith("vienna-local")
    np.testing.assert_allclose(s.loc["short", "window_mean_reactivity"],
                               per_base[per_base.id == "short"]["reactivity"][:10].mean(), atol=1e-4)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2
    assert len(summary) == 2 and load_runs(models_dir=d)[0].name == run
    # as make submit, even for one run: each target lifted to the floor fitted on the run's OOF
    floors = blend_report(runs=load_runs(models_dir=d), df=train_df)["floors"]
    assert any(f is not None for f in floors.values())
    for t, f in floors.items():
        assert f is None or per_base[t].min() >= round(f, 5) - 1e-5


@pytest.mark.parametrize("text", ["68", "5:2", "3:3", "-1:4", "a:b", "1:2:3", (5, 2), (1, 2, 3)])
def test_bad_windows_are_refused_before_any_work(text, tmp_path):
    with pytest.raises(ValueError, match="expected START:END"):
        parse_window(text)
    with pytest.raises(ValueError, match="expected START:END"):          # before reading the input file
        predict_file(tmp_path / "missing.fasta", tmp_path / "out.csv", window=text)
    assert parse_window("48:68") == (48, 68)


def test_scores_on_a_window_of_positions(trained):
    d, run, train_df = trained
    runs = load_runs(models_dir=d)
    whole = blend_report(runs=runs, df=train_df)
    oof = np.load(d / run / "oof.npz")["pred_tta"]                     # what the blend and submission use
    good = train_df["SN_filter"].to_numpy() == 1
    y = np.stack([np.stack([r[t] for t in TARGETS], 1) for r in train_df[good].to_dict("records")])
    for lo, hi in ((0, 68), (48, 68), (60, 200)):
        rep = blend_report(runs=runs, df=train_df, positions=(lo, hi))
        err = (oof[good][:, lo:min(hi, 68)] - y[:, lo:hi]) ** 2
        expected = np.mean([np.sqrt(err[..., TARGETS.index(t)].mean()) for t in SCORED])
        assert rep["members"][run] == pytest.approx(expected, rel=1e-5)
        assert rep["positions"] == [lo, min(hi, 68)]
    assert blend_report(runs=runs, df=train_df, positions=(0, 68))["members"] == whole["members"]
    with pytest.raises(ValueError, match="positions 70:90: no scored position there"):
        blend_report(runs=runs, df=train_df, positions=(70, 90))
    with pytest.raises(SystemExit):
        cli.main(["score", "--positions", "68"])                         # argparse: usage and the message


def test_runs_trained_on_some_folds_score_and_blend_on_those_folds(trained, tmp_path, monkeypatch):
    d, run, train_df = trained
    copy_run(d / run, tmp_path / "full")
    copy_run(d / run, tmp_path / "part")                       # as `train.only_folds=[0]` leaves a run
    (tmp_path / "part" / "fold1.pt").unlink()
    with np.load(tmp_path / "part" / "oof.npz", allow_pickle=True) as z:
        arrays = dict(z)
    for key in ("pred", "pred_tta"):
        arrays[key][arrays["fold"] == 1] = np.nan
    np.savez_compressed(tmp_path / "part" / "oof.npz", **arrays)
    with pytest.raises(NoModelsError, match="fold1.pt missing"):
        load_runs(["full", "part"], models_dir=tmp_path)
    with pytest.raises(NoModelsError, match="no fold 2: the run has folds 0-1"):
        load_runs(["full"], models_dir=tmp_path, folds=[2])
    runs = load_runs(["full", "part"], models_dir=tmp_path, folds=[0])
    assert [len(r.checkpoints) for r in runs] == [1, 1]
    rep = blend_report(runs=runs, df=train_df, folds=[0])
    good = (train_df["SN_filter"] == 1).to_numpy() & (arrays["fold"] == 0)
    assert 0 < good.sum() < (train_df["SN_filter"] == 1).sum()
    y = np.stack([np.stack([r[t] for t in TARGETS], 1) for r in train_df[good].to_dict("records")])
    err = (arrays["pred_tta"][good][:, :68] - y) ** 2
    expected = np.mean([np.sqrt(err[..., TARGETS.index(t)].mean()) for t in SCORED])
    assert rep["members"] == {"full": pytest.approx(expected, rel=1e-5), "part": pytest.approx(expected, rel=1e-5)}
    assert np.isfinite(rep["blend_mcrmse"]) and rep["n_molecules"] == good.sum()
    assert "blend_mcrmse_nested" not in rep                     # one fold: no other fold to fit weights on
    with pytest.raises(BlendError, match=r"part/oof.npz has no predictions for the molecules of fold\(s\) \[1\]"):
        blend_report(runs=runs, df=train_df, folds=[1])          # not what the runs were loaded for
    both = blend_report(runs=load_runs(["full"], models_dir=tmp_path), df=train_df, folds=[0, 1])
    assert both["members"] == blend_report(runs=load_runs(["full"], models_dir=tmp_path), df=train_df)["members"]
    monkeypatch.setattr("openvaccine.predict.MODELS_DIR", tmp_path)
    with pytest.raises(SystemExit, match="no fold 3"):
        cli.main(["score", "--runs", "part", "--folds", "3"])
    shutil.copy(tmp_path / "part" / "fold0.pt", tmp_path / "part" / "fold1.pt")   # saved, its call stopped before oof.npz
    with pytest.raises(SystemExit, match=r"no predictions for the molecules of fold\(s\) \[1\]"):
        cli.main(["score", "--runs", "part", "--folds", "1"])


def test_frame_sensitivity_is_the_rms_change_of_the_fold_mean_on_longer_molecules(trained, test_rows, capsys,
                                                                                  monkeypatch):
    from openvaccine.analysis import frame_sensitivity
    from openvaccine.graphs import aligned_at_3_end, build_graphs
    from openvaccine.train import load_model, predict_graphs
    d, run, _ = trained
    cks = [torch.load(d / run / f"fold{f}.pt", weights_only=False) for f in (0, 1)]
    gs = build_graphs(pd.DataFrame(test_rows), progress=False, workers=1)
    table = frame_sensitivity(cks, gs)
    assert list(table["positions"]) == ["0-44", "45-67", "68-90", "91-129"]
    diff = np.mean([np.stack(predict_graphs(load_model(ck), gs[4:])) -
                    np.stack(predict_graphs(load_model(ck), [aligned_at_3_end(g, 107, 45) for g in gs[4:]]))
                    for ck in cks], 0)[..., [TARGETS.index(t) for t in SCORED]]
    for (lo, hi), got in zip(((0, 45), (45, 68), (68, 91)), table["rms_difference"]):
        # four 130-nt molecules, and four 107-nt ones whose differences are zero, three columns each
        assert got == pytest.approx(np.sqrt((diff[:, lo:hi] ** 2).sum() / (2 * 4 * 3 * (hi - lo))), rel=1e-5) and got > 0
    assert frame_sensitivity(cks, gs[:4])["rms_difference"].eq(0).all()      # 107 nt: nothing to align
    monkeypatch.setattr("openvaccine.predict.MODELS_DIR", d)
    cli.main(["report-frames", "--runs", run, "--folds", "0", "--n", "3"])
    assert "tiny (folds 0; 3 molecules of more than 107 nt): 0-44: " in capsys.readouterr().out


def copy_run(src, dst, seed=None, **train):
    """A copy of the run ``src`` at ``dst`` whose saved config has another ``seed`` and ``train`` options."""
    shutil.copytree(src, dst)
    cvp = dst / "cv.json"
    cv = json.loads(cvp.read_text())
    cv["config"]["train"].update(train)
    if seed is not None:
        cv["config"]["seed"] = seed
    cvp.write_text(json.dumps(cv))


def test_runs_of_different_cv_groupings_are_not_blended(trained, tmp_path):
    # a random-fold run's OOF reads lower (near-duplicates in validation): blending it with grouped
    # runs would hand it weight it has not earned, so submit refuses and names both runs
    d, run, train_df = trained
    copy_run(d / run, tmp_path / "grouped")
    copy_run(d / run, tmp_path / "random", similarity=1.0)
    with pytest.raises(SystemExit, match=r"different CV groupings: grouped \(similarity 0.8\), random \(similarity 1\)"):
        make_submission(out=tmp_path / "s.csv", models_dir=tmp_path, train=train_df)
    assert not (tmp_path / "s.csv").exists()
    shutil.copytree(tmp_path / "grouped", tmp_path / "grouped2")      # one protocol: blends as before
    rep = blend_report(runs=load_runs(["grouped", "grouped2"], models_dir=tmp_path), df=train_df)
    assert set(rep["weights"]) == {"grouped", "grouped2"}


def test_runs_on_different_fold_splits_are_not_blended(trained, tmp_path):
    # another seed without train.fold_seed draws another split: its OOF errors decorrelate from the
    # others' more than its test predictions do, so the blend would read better than it is
    d, run, train_df = trained
    base = json.loads((d / run / "cv.json").read_text())["config"]
    seed, k = int(base["seed"]), int(base["train"]["folds"])
    copy_run(d / run, tmp_path / "a")
    copy_run(d / run, tmp_path / "b", seed=seed + 1)
    copy_run(d / run, tmp_path / "c", seed=seed + 1, fold_seed=seed)
    with pytest.raises(BlendError, match=rf"different fold splits: a \({k} folds, fold seed {seed}\), "
                                         rf"b \({k} folds, fold seed {seed + 1}\)"):
        check_same_grouping(load_runs(["a", "b"], models_dir=tmp_path))
    a = load_runs(["a"], models_dir=tmp_path)[0]
    other_k = dataclasses.replace(a, name="d", config={**a.config, "train": {**a.config["train"], "folds": k + 1}})
    with pytest.raises(BlendError, match=rf"d \({k + 1} folds, fold seed {seed}\)"):
        check_same_grouping([a, other_k])
    rep = blend_report(runs=load_runs(["a", "c"], models_dir=tmp_path), df=train_df)   # fold_seed keeps the split
    assert set(rep["weights"]) == {"a", "c"}


def test_runs_whose_folds_held_out_other_molecules_are_not_blended(trained, tmp_path):
    # configs alike, but the folds' molecules differ (other data, another make_folds): refused on the oof.npz
    d, run, train_df = trained
    for name in "abc":
        copy_run(d / run, tmp_path / name)

    def edit_folds(name, change):
        with np.load(tmp_path / name / "oof.npz", allow_pickle=True) as z:
            arrays = dict(z)
        arrays["fold"] = change(arrays["fold"].copy())
        np.savez_compressed(tmp_path / name / "oof.npz", **arrays)

    k = int(json.loads((d / run / "cv.json").read_text())["config"]["train"]["folds"])
    edit_folds("b", lambda f: (f + 1) % k)                  # the same split, folds numbered otherwise: fine
    check_same_grouping(load_runs(["a", "b"], models_dir=tmp_path))

    def move_one(f):                                        # one molecule held out in another fold
        f[0] = (f[0] + 1) % k
        return f

    edit_folds("c", move_one)
    with pytest.raises(BlendError, match=r"folds held out different molecules: c against a \(the same folds"):
        check_same_grouping(load_runs(["a", "b", "c"], models_dir=tmp_path))
    with pytest.raises(SystemExit, match="held out different molecules"):
        make_submission(out=tmp_path / "s.csv", models_dir=tmp_path, train=train_df)
    assert not (tmp_path / "s.csv").exists()
