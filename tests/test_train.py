import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from openvaccine import cli, train as T
from openvaccine.config import CONFIG_DIR, ConfigError, apply_overrides, load_config
from openvaccine.graphs import NODE_FEATURES, NUM_EDGE_FEATURES, NUM_NODE_FEATURES, build_graphs
from openvaccine.models import CONVS, build_model

# runs predict on T.get_device(): under CUDA's fp16 autocast, a CPU recomputation agrees to ~1e-3 only
PRED_ATOL = 2e-3 if torch.cuda.is_available() else 1e-5


def test_config_inheritance_and_overrides():
    cfg = load_config("gine", ["model.hidden=64", "train.lr=0.01", "graph.codon_nodes=true"])
    assert cfg["model"]["conv"] == "gine" and cfg["model"]["hidden"] == 64
    assert cfg["train"]["lr"] == 0.01 and cfg["graph"]["codon_nodes"] is True
    assert cfg["train"]["folds"] == 5                     # inherited from default.yaml
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["model.hidden"])


def test_unknown_config_keys_are_errors_naming_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"smoke.yaml with overrides train.epoch=5: unknown key 'train.epoch' "
                                          r"\(did you mean 'epochs'\?\)"):
        load_config("smoke", ["train.epoch=5"])
    bad = tmp_path / "bad.yaml"                     # a comment's continuation line that lost its '#'
    bad.write_text(f"# a student of the pair, on its folds\nteacher's run: 0.2355\nbase: {CONFIG_DIR / 'smoke.yaml'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key \"teacher's run\""):
        load_config(bad)
    bad.write_text(f"base: {CONFIG_DIR / 'smoke.yaml'}\nmodel: 3\n")
    with pytest.raises(ConfigError, match="'model' must be a section"):
        load_config(bad)
    good = load_config("smoke", ["train.pseudo_from=[default_gatv2]", "train.fold_seed=3"])   # optional keys
    assert good["train"]["fold_seed"] == 3
    with pytest.raises(SystemExit, match="openvaccine train: error: .*unknown key 'model.hiden'"):
        cli.main(["train", "--config", "smoke", "model.hiden=8"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_builds_its_model(path):
    cfg = load_config(path)
    assert cfg["name"] == path.stem                     # `make train MEMBERS=<stem>` trains models/<stem>
    assert cfg["model"]["conv"] in CONVS and int(cfg["train"]["folds"]) >= 2
    assert T.upstream_runs(cfg) <= {p.stem for p in CONFIG_DIR.glob("*.yaml")}      # teachers, starting runs
    build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)


@pytest.mark.parametrize("conv", CONVS)
def test_every_architecture_runs_forward_and_backward(conv, train_rows):
    graphs = build_graphs(pd.DataFrame(train_rows[:3]), {"codon_nodes": conv == "edgegated"}, progress=False, workers=1)
    from torch_geometric.loader import DataLoader
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    cfg = load_config("smoke", [f"model.conv={conv}"])
    model = build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    out = model(batch)
    assert out.shape == (3 * 107, 5)
    T.weighted_mcrmse_loss(out, batch, cfg["train"]).backward()
    assert all(p.grad is not None for p in model.embed.parameters())


def test_target_weights_weigh_each_targets_rmse_and_bad_ones_are_errors(train_rows):
    from torch_geometric.loader import DataLoader
    batch = next(iter(DataLoader(build_graphs(pd.DataFrame(train_rows[:3]), progress=False, workers=1), batch_size=3)))
    pred = torch.randn(batch.y.shape, generator=torch.Generator().manual_seed(0))
    t = load_config("smoke")["train"]

    def loss(weights: str) -> float:
        return float(T.weighted_mcrmse_loss(pred, batch, apply_overrides(t, [f"target_weights={weights}"])))

    def alone(c: str) -> str:                            # weight 1 on target c, 0 on the rest
        return "{" + ", ".join(f"{n}: {int(n == c)}" for n in T.TARGETS) + "}"

    rmse = [loss(alone(c)) for c in T.SCORED]            # each scored target's weighted RMSE
    equal = float(T.weighted_mcrmse_loss(pred, batch, t))
    assert loss("{}") == pytest.approx(equal)             # targets left out weigh 1
    assert loss("{deg_pH10: 0, deg_50C: 0}") == pytest.approx(np.mean(rmse), rel=1e-5)
    unscored = 5 * equal - sum(rmse)                      # RMSE of deg_pH10 + deg_50C
    assert loss("{deg_pH10: 0.5, deg_50C: 0.5}") == pytest.approx((sum(rmse) + 0.5 * unscored) / 4, rel=1e-5)
    assert T.target_weights(t) is None and T.target_weights({"target_weights": {"deg_50C": 2}}) == [1, 1, 1, 1, 2]
    for bad, msg in (("{deg_ph10: 0.5}", r"unknown target\(s\) \['deg_ph10'\]"),
                     ("{deg_pH10: -1}", r"train.target_weights.deg_pH10 must be a number >= 0, got -1"),
                     ("[1, 1, 1, 0, 0]", "must map targets to weights"),
                     ("{reactivity: 0, deg_Mg_pH10: 0, deg_Mg_50C: 0}", "every scored target .* weighs 0")):
        with pytest.raises(ValueError, match=msg):
            loss(bad)
        with pytest.raises(ValueError, match=msg):                  # before a run trains anything
            T.fingerprints(load_config("smoke", [f"train.target_weights={bad}"]), pd.DataFrame(train_rows[:3]))


def test_edge_features_change_the_output_only_for_edge_aware_layers(train_rows):
    graphs = build_graphs(pd.DataFrame(train_rows[:1]), progress=False, workers=1)
    from torch_geometric.loader import DataLoader
    b = next(iter(DataLoader(graphs, batch_size=1)))
    b2 = b.clone()
    b2.edge_attr = torch.zeros_like(b2.edge_attr)
    for conv, aware in (("edgegated", True), ("transformer", True), ("sage", False)):
        torch.manual_seed(0)
        m = build_model(load_config("smoke", [f"model.conv={conv}", "model.gru_layers=0", "model.attn_layers=0"]),
                        NUM_NODE_FEATURES, NUM_EDGE_FEATURES).eval()
        changed = not torch.allclose(m(b), m(b2))
        assert changed == aware, conv


def test_folds_group_similar_sequences():
    rng = np.random.default_rng(0)
    base = ["".join(rng.choice(list("ACGU"), 50)) for _ in range(10)]
    seqs = []
    for s in base:
        for k in range(3):                               # 3 near-copies of each
            seqs.append(s[:k] + ("A" if s[k] != "A" else "C") + s[k + 1:])
    df = pd.DataFrame(dict(sequence=seqs, SN_filter=1))
    folds = T.make_folds(df, 5, 0, 0.8)
    for g in range(10):
        assert len(set(folds[3 * g:3 * g + 3])) == 1
    assert sorted(np.bincount(folds)) == [6, 6, 6, 6, 6]


def test_smoke_training_loss_falls(train_rows, tiny_cfg):
    graphs = build_graphs(pd.DataFrame(train_rows), progress=False, workers=1)
    cfg = apply_overrides(tiny_cfg, ["train.epochs=6", "train.max_steps=4", "train.lr=0.005"])
    _, best, hist = T.train_fold(cfg, graphs[:32], graphs[32:], 0, torch.device("cpu"), progress=False)
    losses = [h["train_loss"] for h in hist]
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.isfinite(best) and best == min(h["val_mcrmse"] for h in hist)


def test_run_outputs_and_checkpoint_round_trip(trained):
    d, run, df = trained
    out = d / run
    cv = json.loads((out / "cv.json").read_text())
    assert {"cv_mcrmse", "cv_rmse", "folds", "position_rmse"} <= set(cv) and len(cv["folds"]) == 2
    assert len(cv["position_rmse"]) == 68 and (out / "cv.md").read_text().startswith("# CV report")
    for f in cv["folds"]:                       # the kept (best) epoch and what the last one scored
        hist = torch.load(out / f"fold{f['fold']}.pt", weights_only=False)["history"]
        vals = [h["val_mcrmse"] for h in hist]
        assert f["val_mcrmse"] == pytest.approx(min(vals)) and vals[f["kept_epoch"] - 1] == pytest.approx(min(vals))
        assert f["last_val_mcrmse"] == pytest.approx(vals[-1])
    assert "last epochs read" in (out / "cv.md").read_text()
    k, fold_seed, similarity = T.fold_settings(cv["config"])
    assert f"Folds: {k}, split by fold seed {fold_seed}, molecules of positional identity ≥ {similarity:g}" in (
        out / "cv.md").read_text()
    oof = np.load(out / "oof.npz", allow_pickle=True)
    assert oof["pred"].shape == (len(df), 130, 5) and list(oof["ids"]) == list(df["id"])
    ck = torch.load(out / "fold0.pt", weights_only=False)
    assert ck["fingerprints"]["data"] and ck["config"]["name"] == "smoke"
    model = T.load_model(ck, torch.device("cpu"))
    from openvaccine.graphs import graph_params, tta_structures
    graphs = build_graphs(df, graph_params(ck["config"]), progress=False)
    again = T.predict_graphs(model, [graphs[i] for i in ck["oof_index"]])
    for a, b in zip(again, ck["oof"]):
        np.testing.assert_allclose(a, b, atol=PRED_ATOL)
    # the TTA OOF (what the blend is fitted on) is the mean over the run's TTA structures
    p = graph_params(ck["config"])
    assert ck["tta"] == tta_structures(p) and "cv_mcrmse_tta" in cv and np.isfinite(cv["cv_mcrmse_tta"])
    per_v = [T.predict_graphs(model, [gs[i] for i in ck["oof_index"]])
             for gs in (build_graphs(df, p, structure=v, progress=False) for v in ck["tta"])]
    for k, b in enumerate(ck["oof_tta"]):
        np.testing.assert_allclose(np.mean([v[k] for v in per_v], 0), b, atol=PRED_ATOL)
    i0 = int(ck["oof_index"][0])
    np.testing.assert_allclose(oof["pred_tta"][i0, :107], ck["oof_tta"][0], atol=1e-6)


def test_kept_epoch_is_the_first_better_by_more_than_the_tolerance():
    h = [dict(epoch=1, val_mcrmse=0.30), dict(epoch=2, val_mcrmse=0.25), dict(epoch=3, val_mcrmse=0.249995),
         dict(epoch=4, val_mcrmse=0.26)]
    assert T.kept_epoch(h) == dict(kept_epoch=2, last_val_mcrmse=0.26)     # 3 is not better by 1e-5
    assert T.kept_epoch([]) == {}


def test_tta_predict_is_the_mean_over_models_and_structures_with_a_progress_bar(trained, capsys):
    d, run, df = trained
    from openvaccine.graphs import graph_params, tta_structures
    cks = [torch.load(d / run / f"fold{k}.pt", weights_only=False) for k in (0, 1)]
    models = [T.load_model(ck, torch.device("cpu")) for ck in cks]
    p = graph_params(cks[0]["config"])
    by = {v: build_graphs(df.head(3), p, structure=v, progress=False) for v in tta_structures(p)}
    got = T.tta_predict(models, by, progress=True, desc="tiny passes")
    n = len(models) * len(by)
    err = capsys.readouterr().err
    assert n >= 4 and "tiny passes: 100%" in err and f"{n}/{n}" in err
    manual = [T.predict_graphs(m, gs) for gs in by.values() for m in models]
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, np.mean([q[k] for q in manual], 0), atol=1e-6)
    T.tta_predict(models, by)                          # quiet by default
    assert "tiny passes" not in capsys.readouterr().err


def test_resume_trains_only_unfinished_folds(trained, tiny_cfg, monkeypatch, tmp_path):
    d, run, df = trained
    import shutil
    dst = tmp_path / run
    shutil.copytree(d / run, dst)
    (dst / "fold1.pt").unlink()                            # interrupted during fold 1
    (dst / "cv.json").unlink()
    calls = []
    real = T.train_fold

    def spy(cfg, tr, va, fold, device, progress=True, **kw):
        calls.append(fold)
        return real(cfg, tr, va, fold, device, progress, **kw)
    monkeypatch.setattr(T, "train_fold", spy)
    rep = T.train_run(tiny_cfg, run_name=run, df=df, models_dir=tmp_path, progress=False)
    assert calls == [1] and (dst / "fold1.pt").is_file() and (dst / "cv.json").is_file()
    assert rep["folds"][0]["val_mcrmse"] == json.loads((d / run / "cv.json").read_text())["folds"][0]["val_mcrmse"]
    # same folder, different config: refuse rather than mix models
    with pytest.raises(RuntimeError, match="other config"):
        T.train_run(apply_overrides(tiny_cfg, ["model.hidden=16"]), run_name=run, df=df, models_dir=tmp_path,
                    progress=False)


def test_folds_side_by_side_match_a_sequential_run(trained, tiny_cfg, test_rows, tmp_path, capsys):
    d, run, df = trained
    rep = T.train_run(apply_overrides(tiny_cfg, ["train.jobs=2"]), run_name=run, df=df, models_dir=tmp_path)
    assert f"{run}: training folds 0, 1 in 2 processes side by side" in capsys.readouterr().out
    seq = json.loads((d / run / "cv.json").read_text())
    for f in (0, 1):
        a = torch.load(d / run / f"fold{f}.pt", weights_only=False)
        b = torch.load(tmp_path / run / f"fold{f}.pt", weights_only=False)
        assert a["fingerprints"] == b["fingerprints"]                # train.jobs is not part of the model
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)
        for x, y in zip(a["oof"], b["oof"]):
            np.testing.assert_allclose(x, y, atol=1e-6)
    assert not rep["partial"] and rep["cv_mcrmse"] == pytest.approx(seq["cv_mcrmse"], abs=1e-6)
    assert (tmp_path / run / "oof.npz").is_file()
    # a fold that fails in its own process is an error naming the run, the fold and the cause
    bad = apply_overrides(tiny_cfg, ["train.jobs=2", "train.pseudo_from=[nope]"])
    with pytest.raises(RuntimeError, match=r"bad: fold \d failed in its process: .*train.pseudo_from: run 'nope' has no fold"):
        T.train_run(bad, run_name="bad", df=df, models_dir=tmp_path, progress=False, test_df=pd.DataFrame(test_rows))
    assert not list((tmp_path / "bad").glob("fold*.pt"))


def test_several_runs_share_one_pool_and_students_wait_for_their_teachers(trained, tiny_cfg, test_rows, tmp_path,
                                                                          capsys):
    d, run, df = trained
    def cfg(name, *more):
        return apply_overrides(tiny_cfg, [f"name={name}", "train.jobs=2", *more])
    student = cfg("student", f"train.pseudo_from=[{run}]", "seed=5", f"train.fold_seed={tiny_cfg['seed']}")
    reps = T.train_runs([student, cfg(run), cfg("other", "seed=7")], models_dir=tmp_path, df=df,
                        test_df=pd.DataFrame(test_rows))
    out = capsys.readouterr().out
    shared = out.index(f"training {run} folds 0, 1; other folds 0, 1 in 2 processes side by side")
    assert out.index("student: training folds 0, 1 in 2 processes side by side") > shared   # after its teacher
    assert [r["run"] for r in reps] == ["student", run, "other"] and not any(r["partial"] for r in reps)
    for f in (0, 1):                                   # the teacher's folds are the sequential run's
        a = torch.load(d / run / f"fold{f}.pt", weights_only=False)
        b = torch.load(tmp_path / run / f"fold{f}.pt", weights_only=False)
        assert a["fingerprints"] == b["fingerprints"] and b["score"] == pytest.approx(a["score"], abs=1e-6)
        for x, y in zip(a["oof"], b["oof"]):
            np.testing.assert_allclose(x, y, atol=1e-6)
        assert torch.load(tmp_path / "student" / f"fold{f}.pt", weights_only=False)["teachers"] == {run: a["fingerprints"]}
    assert reps[2]["cv_mcrmse"] != reps[1]["cv_mcrmse"]          # another seed: another run
    assert all((tmp_path / n / "cv.json").is_file() for n in ("student", run, "other"))
    with pytest.raises(ValueError, match=r"the runs \['a', 'b'\] wait for one another"):
        T.train_runs([cfg("a", "train.pseudo_from=[b]"), cfg("b", "train.pseudo_from=[a]")], models_dir=tmp_path, df=df)
    with pytest.raises(ValueError, match=r"the runs \['a', 'b'\] wait for one another"):
        T.train_runs([cfg("a", "train.init_from=b"), cfg("b", "train.pseudo_from=[a]")], models_dir=tmp_path, df=df)
    with pytest.raises(ValueError, match="runs named twice"):
        T.train_runs([cfg("a"), cfg("a")], models_dir=tmp_path, df=df)
    # a run folder of another config stops the call before any other run's fold trains
    with pytest.raises(RuntimeError, match=r"other holds fold 0 trained with other config"):
        T.train_runs([cfg("fresh"), cfg("other", "seed=8")], models_dir=tmp_path, df=df)
    assert not (tmp_path / "fresh").exists()


def test_fold_jobs_and_their_threads(monkeypatch):
    monkeypatch.setattr(T.os, "cpu_count", lambda: 16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert T.fold_jobs({}, cpu, 5) == 1 and T.fold_jobs({}, gpu, 5) == 1          # no option: one at a time
    assert T.fold_jobs({"jobs": "auto"}, gpu, 5) == 5 and T.fold_jobs({"jobs": "auto"}, gpu, 2) == 2
    assert T.fold_jobs({"jobs": "auto"}, cpu, 5) == 5
    assert T.fold_jobs({"jobs": 3}, cpu, 5) == 3 and T.fold_jobs({"jobs": 3}, cpu, 0) == 1
    monkeypatch.setattr(T.os, "cpu_count", lambda: 4)
    assert T.fold_jobs({"jobs": "auto"}, gpu, 5) == 2 and T.fold_jobs({"jobs": "auto"}, cpu, 5) == 4
    monkeypatch.setattr(T.os, "cpu_count", lambda: 1)
    assert T.fold_jobs({"jobs": "auto"}, cpu, 5) == 1 and T.fold_jobs({"jobs": "auto"}, gpu, 5) == 1
    for bad in (0, "two", 1.5, True):
        with pytest.raises(ValueError, match="train.jobs must be"):
            T.fold_jobs({"jobs": bad}, cpu, 5)
    # rounds of `jobs` folds share the cores; a short last round gets more threads each
    assert T.fold_threads(5, 2, 2) == [1, 1, 1, 1, 2]
    assert T.fold_threads(5, 5, 16) == [3] * 5 and T.fold_threads(3, 2, 16) == [8, 8, 16]
    assert T.fold_threads(4, 4, 2) == [1] * 4


def test_device_agnostic_prediction(trained):
    d, run, df = trained
    ck = torch.load(d / run / "fold0.pt", weights_only=False)
    dev = T.get_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    graphs = build_graphs(df.head(3), progress=False)
    a = T.predict_graphs(T.load_model(ck, torch.device("cpu")), graphs)
    b = T.predict_graphs(T.load_model(ck, dev), graphs)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-2)


def test_fold_subset_run_is_reported_but_not_an_ensemble_member(trained, tiny_cfg, tmp_path):
    from openvaccine.predict import load_runs
    d, run, df = trained
    cfg = apply_overrides(tiny_cfg, ["train.only_folds=[0]", "train.epochs=1"])
    rep = T.train_run(cfg, run_name="part", df=df, models_dir=tmp_path, progress=False)
    assert rep["partial"] and [f["fold"] for f in rep["folds"]] == [0]
    assert not (tmp_path / "part" / "fold1.pt").exists()
    with pytest.raises(Exception, match="make train"):
        load_runs(models_dir=tmp_path)
    table = T.experiments_table(tmp_path)
    m = cfg["model"]
    assert f"| part | transformer | {m['gru_layers']} | {m.get('attn_layers', 0)} | " in table
    assert T.rnn_layers({"gru_layers": 2, "rnn": "lstm"}) == "2 LSTM" and T.rnn_layers({"gru_layers": 0, "rnn": "lstm"}) == "0"
    t = cfg["train"]                                                 # folds, CV grouping, epochs, batch, lr
    assert f"| 0 | identity ≥ 0.8 | 1 | {t['batch_size']} | {float(t['lr']):g} |" in table
    assert f"{rep['cv_mcrmse']:.4f}" in table
    (tmp_path / "part").rename(tmp_path / "part-v1")                 # a run moved aside keeps its new name
    assert "| part-v1 | transformer |" in T.experiments_table(tmp_path)
    every = apply_overrides(cfg, [f"train.only_folds={list(range(t['folds']))}"])      # resumed with every fold listed
    rep = T.train_run(every, run_name="part-v1", df=df, models_dir=tmp_path, progress=False)
    assert not rep["partial"] and [f["fold"] for f in rep["folds"]] == list(range(t["folds"]))
    assert [r.name for r in load_runs(models_dir=tmp_path)] == ["part-v1"]


def test_packed_and_unpacked_rnn_paths_agree(train_rows):
    """Equal-length batches skip packing; a batch with a shorter molecule is packed: same numbers
    (with the sequence attention too: padded bases are masked out of its keys)."""
    from torch_geometric.loader import DataLoader
    rows = [dict(r) for r in train_rows[:3]]
    short = dict(id="short", sequence=rows[0]["sequence"][:60], structure=None)
    graphs = build_graphs(pd.DataFrame(rows), progress=False, workers=1)
    g_short = build_graphs(pd.DataFrame([short]), progress=False, workers=1)
    for rnn, attn in (("gru", 0), ("lstm", 0), ("gru", 1)):
        torch.manual_seed(0)
        m = build_model(load_config("smoke", [f"model.rnn={rnn}", "model.gru_layers=2", f"model.attn_layers={attn}"]),
                        NUM_NODE_FEATURES, NUM_EDGE_FEATURES).eval()
        equal = m(next(iter(DataLoader(graphs, batch_size=3))))
        mixed = m(next(iter(DataLoader(graphs + g_short, batch_size=4))))
        assert torch.allclose(equal, mixed[: 3 * 107], atol=1e-5), rnn
        alone = m(next(iter(DataLoader(g_short, batch_size=1))))
        assert torch.allclose(alone, mixed[3 * 107:], atol=1e-5), rnn
    with pytest.raises(ValueError, match="unknown rnn 'rnn'"):
        build_model(load_config("smoke", ["model.rnn=rnn"]), NUM_NODE_FEATURES, NUM_EDGE_FEATURES)


@pytest.mark.parametrize("lengths", [[9, 9, 5, 9, 5], [9, 8, 7, 6, 5, 4]], ids=["two-lengths", "six-lengths"])
def test_rnn_over_mixed_lengths_equals_each_molecule_alone(lengths):
    """Two lengths run as one dense batch per length, many are packed: either way each molecule's
    outputs and gradients are those of the molecule run alone, and the padding is zero."""
    torch.manual_seed(0)
    m = build_model(load_config("smoke", ["model.rnn=lstm", "model.gru_layers=2", "model.hidden=8"]),
                    NUM_NODE_FEATURES, NUM_EDGE_FEATURES).eval()
    n = max(lengths)
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    dense = (torch.randn(len(lengths), n, 8) * mask[..., None]).requires_grad_()
    out = m._rnn(dense, mask)
    grad = torch.autograd.grad((out * torch.linspace(-1, 1, out.size(-1))).sum(), dense)[0]
    assert out.shape == (len(lengths), n, 16) and not out[~mask].any()
    for i, k in enumerate(lengths):
        x = dense[i:i + 1, :k].detach().requires_grad_()
        alone = m.gru(x)[0]
        g = torch.autograd.grad((alone * torch.linspace(-1, 1, alone.size(-1))).sum(), x)[0]
        assert torch.allclose(out[i, :k], alone[0], atol=1e-6) and torch.allclose(grad[i, :k], g[0], atol=1e-6)


def test_structure_augmentation_mixes_variants_per_epoch():
    rng = np.random.default_rng(0)
    given, alt1, alt2 = list(range(0, 1000)), list(range(1000, 2000)), list(range(2000, 3000))
    assert T.epoch_graphs([given], 0.5, rng) is given
    assert T.epoch_graphs([given, alt1], 0.0, rng) is given
    pick = np.array(T.epoch_graphs([given, alt1, alt2], 0.5, rng))
    assert len(pick) == 1000 and np.array_equal(pick % 1000, np.arange(1000))    # one graph per molecule
    frac = np.bincount(pick // 1000, minlength=3) / 1000
    assert abs(frac[0] - 0.5) < 0.06 and abs(frac[1] - 0.25) < 0.05 and abs(frac[2] - 0.25) < 0.05
    again = np.array(T.epoch_graphs([given, alt1, alt2], 0.5, rng))
    assert not np.array_equal(pick, again)                                        # redrawn every epoch


def test_augmented_run_trains_on_alternative_structures(train_rows, tiny_cfg, tmp_path, monkeypatch):
    seen = []
    orig = T.epoch_graphs

    def spy(variants, p, rng):
        out = orig(variants, p, rng)
        seen.append(sum(g.structure != v.structure for g, v in zip(out, variants[0])))
        return out
    monkeypatch.setattr(T, "epoch_graphs", spy)
    cfg = apply_overrides(json.loads(json.dumps(tiny_cfg)),
                          ["graph.engine2=linearpartition", "train.aug_structures=[mfe2]", "train.aug_prob=0.5",
                           "train.only_folds=[0]"])
    rep = T.train_run(cfg, run_name="aug", df=pd.DataFrame(train_rows), models_dir=tmp_path, progress=False)
    assert len(seen) == 2 and all(k > 0 for k in seen)                # some molecules on eterna MFE each epoch
    assert np.isfinite(rep["cv_mcrmse"])


def test_codon_node_run_scores_bases_only(train_rows, tiny_cfg, tmp_path):
    # codon nodes follow the bases in each graph: predictions and the CV report are per base
    cfg = apply_overrides(json.loads(json.dumps(tiny_cfg)), ["graph.codon_nodes=true", "train.epochs=1",
                                                             "train.only_folds=[0]"])
    rep = T.train_run(cfg, run_name="codon", df=pd.DataFrame(train_rows), models_dir=tmp_path, progress=False)
    assert np.isfinite(rep["cv_mcrmse"]) and len(rep["position_rmse"]) == 68
    assert np.all(np.isfinite(rep["position_rmse"]))
    ck = torch.load(tmp_path / "codon" / "fold0.pt", weights_only=False)
    assert all(p.shape == (107, 5) for p in ck["oof"])


def test_pseudo_graphs_carry_labels_mask_and_weight(test_rows):
    graphs = build_graphs(pd.DataFrame(test_rows), progress=False, workers=1)
    labels = [np.full((len(g.structure), 5), k, dtype=np.float32) for k, g in enumerate(graphs)]
    scored = [r["seq_scored"] for r in test_rows]
    ps = T.pseudo_graphs(graphs, labels, scored, 0.4)
    for k, (g, h, sc) in enumerate(zip(graphs, ps, scored)):
        assert int(h.score_mask.sum()) == sc and bool(h.score_mask[:sc].all())
        assert torch.all(h.y[:sc] == k) and torch.all(h.y[sc:] == 0)
        assert float(h.loss_w) == pytest.approx(0.4)
        assert not bool(g.score_mask.any()) and "loss_w" not in g          # the cached graph is untouched
    from torch_geometric.loader import DataLoader
    b = next(iter(DataLoader(ps[:3], batch_size=3)))
    assert torch.allclose(T.graph_weights(b, {}), torch.full((3,), 0.4))
    plain = next(iter(DataLoader(graphs[:3], batch_size=3)))
    assert torch.allclose(T.graph_weights(plain, {}), 0.5 * torch.log(1.1 + plain.sn))


def test_label_positions_hide_the_later_targets_from_training_only(train_rows, tiny_cfg, tmp_path, monkeypatch):
    graphs = build_graphs(pd.DataFrame(train_rows[:4]), progress=False, workers=1)
    cut = T.with_labels_before(graphs, 20)
    for g, h in zip(graphs, cut):
        assert bool(h.score_mask[:20].all()) and not bool(h.score_mask[20:].any())
        assert int(g.score_mask.sum()) == 68 and h.y is g.y                # the cached graph keeps its labels
    assert T.with_labels_before(graphs, None) == graphs
    with pytest.raises(ValueError, match="label_positions must be a positive number of positions, got 0"):
        T.with_labels_before(graphs, 0)
    masks = []
    orig = T.train_fold

    def spy(cfg, train_g, val_g, *a, **k):
        masks.append(([int(g.score_mask.sum()) for gs in train_g for g in gs], [int(g.score_mask.sum()) for g in val_g]))
        return orig(cfg, train_g, val_g, *a, **k)
    monkeypatch.setattr(T, "train_fold", spy)
    cfg = apply_overrides(json.loads(json.dumps(tiny_cfg)), ["train.label_positions=30", "train.epochs=1",
                                                             "train.only_folds=[0]"])
    T.train_run(cfg, run_name="lab30", df=pd.DataFrame(train_rows), models_dir=tmp_path, progress=False)
    (train_counts, val_counts), = masks
    assert set(train_counts) == {30} and set(val_counts) == {68}        # validation scores every position
    # each epoch is also scored before and from position 30; the kept epoch's scores are its OOF's
    ck = torch.load(tmp_path / "lab30" / "fold0.pt", weights_only=False)
    best = min(ck["history"], key=lambda h: h["val_mcrmse"])
    whole = build_graphs(pd.DataFrame(train_rows), progress=False, workers=1)
    val = [j for j, i in enumerate(ck["oof_index"]) if train_rows[i]["SN_filter"] == 1]
    for key, a, b in (("val_mcrmse_labelled", 0, 30), ("val_mcrmse_unlabelled", 30, None)):
        gs = T.scored_between([whole[ck["oof_index"][j]] for j in val], a, b)
        assert best[key] == pytest.approx(T.score_predictions([ck["oof"][j] for j in val], gs)[0], rel=1e-5)
    assert T.labels_reach({"label_positions": 48}) == 48 and T.labels_reach({}) is None
    _, _, hist = orig(apply_overrides(cfg, ["train.label_positions=68"]), graphs, graphs[:2], 0,
                      torch.device("cpu"), progress=False)
    assert "val_mcrmse_unlabelled" not in hist[0]                        # nothing is scored past position 68


def test_reverse_p_trains_on_molecules_read_from_their_3_end(train_rows, tiny_cfg, tmp_path, monkeypatch):
    graphs = build_graphs(pd.DataFrame(train_rows[:20]), progress=False, workers=1)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert T.reversed_at_random(graphs, 0, rng) is graphs and rng.bit_generator.state == state
    out = T.reversed_at_random(graphs, 0.5, rng)
    flipped = [h is not g for g, h in zip(graphs, out)]
    assert 3 < sum(flipped) < 17
    for g, h, f in zip(graphs, out, flipped):
        assert torch.equal(h.y, g.y.flip(0) if f else g.y) and h.id == g.id
    assert all(h is not g for g, h in zip(graphs, T.reversed_at_random(graphs, 1, rng)))
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match=f"train.reverse_p must be a probability between 0 and 1, got {bad!r}"):
            T.reverse_prob({"reverse_p": bad})
    with pytest.raises(ValueError, match="train.reverse_p must be a probability"):   # before a run trains anything
        T.fingerprints(load_config("smoke", ["train.reverse_p=2"]), pd.DataFrame(train_rows[:3]))
    # a run with reverse_p = 1 trains on every molecule reversed (and validates on them as they are)
    seen, given = _augmented_run(train_rows, tiny_cfg, tmp_path, monkeypatch, "reverse_graph", ["train.reverse_p=1"])
    assert sorted(seen) == sorted(given["train"]) and not set(seen) & set(given["val"])


def _augmented_run(train_rows, tiny_cfg, tmp_path, monkeypatch, transform: str, overrides: list[str]):
    """Fold 0 of a 1-epoch tiny run with ``overrides``: the ids of the molecules the graph transform ``transform``
    (a name in :mod:`openvaccine.train`) was applied to, and those of the molecules ``train_fold`` was given."""
    seen, given = [], {}
    real, real_fold = getattr(T, transform), T.train_fold
    monkeypatch.setattr(T, transform, lambda g, *a: seen.append(g.id) or real(g, *a))

    def spy(cfg, train_g, val_g, *a, **k):
        given.update(train=[g.id for gs in train_g for g in gs], val=[g.id for g in val_g])
        return real_fold(cfg, train_g, val_g, *a, **k)
    monkeypatch.setattr(T, "train_fold", spy)
    cfg = apply_overrides(json.loads(json.dumps(tiny_cfg)), overrides + ["train.epochs=1", "train.only_folds=[0]",
                                                                         "train.aug_structures=[]"])
    T.train_run(cfg, run_name="aug", df=pd.DataFrame(train_rows), models_dir=tmp_path, progress=False)
    return seen, given


def test_pos_shift_trains_half_the_molecules_at_the_positions_of_a_longer_one(train_rows, tiny_cfg, tmp_path,
                                                                             monkeypatch):
    graphs = build_graphs(pd.DataFrame(train_rows[:40]), progress=False, workers=1)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert T.shifted_at_random(graphs, 0, rng) is graphs and rng.bit_generator.state == state
    out = T.shifted_at_random(graphs, 23, rng)
    pa = NODE_FEATURES.index("pos_abs")
    moved = [h is not g for g, h in zip(graphs, out)]
    assert 10 < sum(moved) < 30
    for g, h, m in zip(graphs, out, moved):
        d = torch.round((h.x[:, pa] - g.x[:, pa]) * 100).long()
        if not m:
            continue
        seam = int((d > 0).nonzero()[0])                               # the first base past the seam
        k = int(d[seam])
        assert 1 <= seam <= 68 and 1 <= k <= 23                        # after one of the 68 scored bases
        assert not d[:seam].any() and (d[seam:] == k).all() and torch.equal(h.y, g.y)
    for bad in (-1, 2.5, "23", True):
        with pytest.raises(ValueError, match=f"train.pos_shift must be a whole number of bases >= 0, got {bad!r}"):
            T.max_shift({"pos_shift": bad})
    with pytest.raises(ValueError, match="train.pos_shift must be a whole number"):      # before a run trains anything
        T.fingerprints(load_config("smoke", ["train.pos_shift=-3"]), pd.DataFrame(train_rows[:3]))
    # a run with pos_shift shifts training molecules only, about half of them an epoch
    seen, given = _augmented_run(train_rows, tiny_cfg, tmp_path, monkeypatch, "shifted_graph", ["train.pos_shift=23"])
    assert set(seen) <= set(given["train"]) and 0.25 < len(seen) / len(given["train"]) < 0.75


def _train_student(trained, tiny_cfg, test_rows, tmp_path, monkeypatch, run: str, overrides: list[str]):
    """Fold 0 of a student of the session's tiny run, with what ``train_fold`` was given: (config, what it saw
    (training variants ``tr`` and pseudo-labelled ``pseudo``), teacher's and student's fold-0 checkpoints, data)."""
    import shutil
    d, teacher, df = trained
    shutil.copytree(d / teacher, tmp_path / teacher)
    test_df = pd.DataFrame(test_rows)
    seen = {}
    real = T.train_fold

    def spy(cfg, tr, va, fold, device, progress=True, pseudo_g=None, init_state=None, **kw):
        seen.update(tr=tr, pseudo=pseudo_g)
        return real(cfg, tr, va, fold, device, progress, pseudo_g=pseudo_g, init_state=init_state, **kw)
    monkeypatch.setattr(T, "train_fold", spy)
    cfg = apply_overrides(json.loads(json.dumps(tiny_cfg)),
                          ["train.only_folds=[0]", f"train.pseudo_from=[{teacher}]", "seed=5",
                           f"train.fold_seed={tiny_cfg['seed']}"] + overrides)
    T.train_run(cfg, run_name=run, df=df, models_dir=tmp_path, progress=False, test_df=test_df)
    ck_t = torch.load(tmp_path / teacher / "fold0.pt", weights_only=False)
    ck_s = torch.load(tmp_path / run / "fold0.pt", weights_only=False)
    return cfg, seen, ck_t, ck_s, df, test_df


def test_pseudo_labelled_run_uses_its_folds_teacher(trained, tiny_cfg, test_rows, tmp_path, monkeypatch):
    teacher = trained[1]
    cfg, seen, ck_t, ck_s, df, test_df = _train_student(trained, tiny_cfg, test_rows, tmp_path, monkeypatch, "student",
                                                        ["train.pseudo_weight=0.5", "train.pseudo_frac=0.5"])
    assert ck_s["teachers"] == {teacher: ck_t["fingerprints"]}
    assert f"| {teacher} | **" in T.experiments_table(tmp_path)            # the report names the teacher
    # labels = fold 0 of the teacher, averaged over its TTA structures, on each test row's scored bases
    from openvaccine.graphs import graph_params
    p = graph_params(ck_t["config"])
    model = T.load_model(ck_t, torch.device("cpu"))
    per_v = [T.predict_graphs(model, build_graphs(test_df, p, structure=v, progress=False)) for v in ck_t["tta"]]
    want = [np.mean(x, 0) for x in zip(*per_v)]
    given = seen["pseudo"][0]                                   # variants: given structure first
    for h, y, r in zip(given, want, test_rows):
        sc = r["seq_scored"]
        np.testing.assert_allclose(h.y[:sc].numpy(), y[:sc], atol=PRED_ATOL)
        assert int(h.score_mask.sum()) == sc
    real_w = np.array([float(g.loss_w) for g in seen["tr"][0]])     # real molecules keep their SN weight
    np.testing.assert_allclose(real_w, [0.5 * np.log(1.1 + float(g.sn)) for g in seen["tr"][0]], rtol=1e-5)
    assert len(real_w) == ck_s["n_train"]
    np.testing.assert_allclose(float(given[0].loss_w), 0.5 * real_w.mean(), rtol=1e-5)


def test_pseudo_tail_labels_every_unlabelled_base_with_the_folds_teacher(trained, tiny_cfg, test_rows, tmp_path,
                                                                         monkeypatch):
    from openvaccine.graphs import graph_params, reverse_graph
    cfg, seen, ck_t, ck_s, df, test_df = _train_student(trained, tiny_cfg, test_rows, tmp_path, monkeypatch, "tail",
                                                        ["train.pseudo_tail=0.25", "train.label_positions=40"])
    # the training molecules: their own labels before position 40, fold 0's teacher's TTA prediction after
    train_df = df.drop(index=ck_s["oof_index"]).reset_index(drop=True)
    train_df = train_df[T.usable_rows(train_df, cfg["train"])]
    model = T.load_model(ck_t, torch.device("cpu"))
    p = graph_params(ck_t["config"])
    per_v = [T.predict_graphs(model, build_graphs(train_df, p, structure=v, progress=False)) for v in ck_t["tta"]]
    want = [np.mean(x, 0) for x in zip(*per_v)]
    own = build_graphs(train_df, graph_params(cfg), progress=False)
    for variant in seen["tr"]:                                  # every training structure carries the same labels
        assert [h.id for h in variant] == [g.id for g in own]
        for h, g, y in zip(variant, own, want):
            assert bool(h.score_mask.all())
            np.testing.assert_array_equal(h.y[:40].numpy(), g.y[:40].numpy())
            np.testing.assert_allclose(h.y[40:].numpy(), y[40:], atol=PRED_ATOL)
            assert torch.equal(h.base_w, torch.tensor([1.0] * 40 + [0.25] * (len(y) - 40)))
            assert "base_w" not in g and int(g.score_mask.sum()) == 68          # the cached graph is untouched
    # the test molecules: the teacher's labels on their scored bases at weight 1, on the rest at the tail's
    for h, r in zip(seen["pseudo"][0], test_rows):
        sc = r["seq_scored"]
        assert bool(h.score_mask.all()) and float(h.base_w[:sc].min()) == 1.0
        assert torch.all(h.base_w[sc:] == 0.25)
    # the loss weighs each base by it, and a reversed molecule keeps each base's weight
    g = seen["tr"][0][0]
    assert torch.equal(reverse_graph(g).base_w, g.base_w.flip(0))
    from torch_geometric.loader import DataLoader
    b = next(iter(DataLoader(seen["tr"][0][:2], batch_size=2)))
    pred = torch.zeros_like(b.y)
    w = (b.loss_w[b.batch] * b.base_w)[:, None]
    want_loss = torch.sqrt((w * b.y ** 2).sum(0) / w.sum(0) + 1e-8).mean()
    assert float(T.weighted_mcrmse_loss(pred, b, cfg["train"])) == pytest.approx(float(want_loss), rel=1e-5)
    # a tail needs teachers and a weight >= 0, checked before anything trains
    for over, msg in ((["train.pseudo_tail=-1"], "train.pseudo_tail must be a weight >= 0, got -1"),
                      (["train.pseudo_tail=true"], "train.pseudo_tail must be a weight >= 0, got True"),
                      (["train.pseudo_tail=0.5"], "it needs train.pseudo_from")):
        with pytest.raises(ValueError, match=msg):
            T.fingerprints(load_config("smoke", over), df)
    assert T.fingerprints(load_config("smoke", ["train.pseudo_tail=0"]), df) == T.fingerprints(load_config("smoke"), df)


def test_teacher_spread_and_confidence_weights():
    a = [np.zeros((4, 5)), np.zeros((4, 5)), np.zeros((3, 5))]
    b = [np.full((4, 5), 100.0), np.zeros((4, 5)), np.full((3, 5), 100.0)]
    b[0][:2, [0, 1, 3]] = 2.0               # the scored targets on the scored bases; the rest must not count
    b[2][:2, [0, 1, 3]] = [[4.0, 4.0, 4.0], [0.0, 0.0, 0.0]]
    spread = T.teacher_spread([a, b], [2, 2, 2])
    np.testing.assert_allclose(spread, [1.0, 0.0, np.sqrt(2.0)])        # sd 1 everywhere; 0; sd 2 on half
    with pytest.raises(ValueError, match="at least two teachers, got 1"):
        T.teacher_spread([a], [2, 2, 2])
    w = T.confidence_weights(np.array([1.0, 1.0, 2.0, 0.5]), 1.0)     # median 1: raw 1/2, 1/2, 1/5, 4/5
    np.testing.assert_allclose(w, [1.0, 1.0, 0.4, 1.6])
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(T.confidence_weights(np.array([1.0, 3.0]), 0), [1.0, 1.0])
    np.testing.assert_array_equal(T.confidence_weights(np.zeros(3), 2.0), [1.0, 1.0, 1.0])    # teachers agree


def test_pseudo_confidence_weighs_molecules_by_how_much_their_teachers_agree(trained, tiny_cfg, test_rows, tmp_path,
                                                                              monkeypatch):
    import shutil
    from openvaccine.graphs import graph_params
    from openvaccine.data import data_fingerprint
    d, teacher, df = trained
    test_df = pd.DataFrame(test_rows)
    # a second teacher on the same folds whose kept prediction of the test molecules is k / 4 everywhere
    shutil.copytree(d / teacher, tmp_path / "twin")
    twin = tmp_path / "twin" / "fold0.pt"
    structures = T.tta_structures(graph_params(torch.load(twin, weights_only=False)["config"]))
    q = [np.full((r["seq_length"], 5), k / 4, dtype=np.float32) for k, r in enumerate(test_rows)]
    T.save_fold_prediction(twin, structures, data_fingerprint(test_df), q)
    cfg, seen, ck_t, ck_s, df, test_df = _train_student(trained, tiny_cfg, test_rows, tmp_path, monkeypatch, "conf",
                                                        [f"train.pseudo_from=[{teacher},twin]",
                                                         "train.pseudo_confidence=1"])
    assert set(ck_s["teachers"]) == {teacher, "twin"}
    p = T.load_fold_prediction(tmp_path / teacher / "fold0.pt", structures, data_fingerprint(test_df))
    scored = [r["seq_scored"] for r in test_rows]
    want_w = T.confidence_weights(T.teacher_spread([p, q], scored), 1.0)
    assert want_w.max() / want_w.min() > 2                                 # the molecules do weigh differently
    real_w = np.array([float(g.loss_w) for g in seen["tr"][0]])
    for variant in seen["pseudo"]:                          # every structure of a molecule weighs the same
        got = np.array([float(h.loss_w) for h in variant])
        np.testing.assert_allclose(got, 0.5 * real_w.mean() * want_w, rtol=1e-5)
        for h, a, b, sc in zip(variant, p, q, scored):       # labelled by the mean of the two teachers
            np.testing.assert_allclose(h.y[:sc].numpy(), (a[:sc] + b[:sc]) / 2, atol=1e-6)
    # checked before anything trains: a strength >= 0, and two teachers to disagree
    for over, msg in ((["train.pseudo_confidence=-1"], "must be a strength >= 0, got -1"),
                      (["train.pseudo_confidence=true"], "must be a strength >= 0, got True"),
                      (["train.pseudo_confidence=1"], r"it needs two teachers or more in train.pseudo_from, got \[\]"),
                      (["train.pseudo_confidence=1", "train.pseudo_from=[a]"], r"got \['a'\]")):
        with pytest.raises(ValueError, match=msg):
            T.fingerprints(load_config("smoke", over), df)
    assert T.fingerprints(load_config("smoke", ["train.pseudo_confidence=0"]), df) == \
        T.fingerprints(load_config("smoke"), df)


def test_pseudo_labels_refuse_a_teacher_with_other_folds(trained, tiny_cfg, test_rows, tmp_path):
    import shutil
    d, teacher, df = trained
    shutil.copytree(d / teacher, tmp_path / teacher)
    base = json.loads(json.dumps(tiny_cfg))
    for over, msg in ((["seed=3"], "held out other molecules"), (["train.pseudo_from=[nope]"], "has no fold 0")):
        cfg = apply_overrides(base, ["train.only_folds=[0]", f"train.pseudo_from=[{teacher}]"] + over)
        with pytest.raises(RuntimeError, match=msg):
            T.train_run(cfg, run_name="student", df=df, models_dir=tmp_path, progress=False,
                        test_df=pd.DataFrame(test_rows))


def test_init_from_starts_each_fold_from_that_runs_same_fold(trained, tiny_cfg, tmp_path, monkeypatch):
    import shutil
    d, base_run, df = trained
    shutil.copytree(d / base_run, tmp_path / base_run)
    seen = {}
    real = T.train_fold

    def spy(cfg, tr, va, fold, device, progress=True, pseudo_g=None, init_state=None, **kw):
        seen[fold] = init_state
        return real(cfg, tr, va, fold, device, progress, pseudo_g=pseudo_g, init_state=init_state, **kw)
    monkeypatch.setattr(T, "train_fold", spy)
    base = json.loads(json.dumps(tiny_cfg))
    cfg = apply_overrides(base, [f"train.init_from={base_run}", "seed=5", f"train.fold_seed={tiny_cfg['seed']}",
                                 "train.lr=0"])                        # no step moves the weights it starts from
    T.train_run(cfg, run_name="tuned", df=df, models_dir=tmp_path, progress=False)
    for f in (0, 1):
        start = torch.load(tmp_path / base_run / f"fold{f}.pt", weights_only=False)
        tuned = torch.load(tmp_path / "tuned" / f"fold{f}.pt", weights_only=False)
        assert seen[f].keys() == start["state_dict"].keys()
        for k, v in start["state_dict"].items():
            assert torch.equal(seen[f][k], v)
            if v.dtype.is_floating_point and "running" not in k:     # batch-norm statistics still move
                assert torch.equal(tuned["state_dict"][k], v), k
        np.testing.assert_array_equal(tuned["oof_index"], start["oof_index"])
        assert tuned["started_from"] == {base_run: start["fingerprints"]}
    assert "| tuned | " in T.experiments_table(tmp_path) and f"(starts from {base_run})" in T.experiments_table(tmp_path)
    assert T.upstream_runs(cfg) == {base_run}
    assert T.upstream_runs(apply_overrides(cfg, ["train.pseudo_from=[a, b]"])) == {base_run, "a", "b"}
    for over, msg in ((["train.fold_seed=3"], "train.init_from: .* held out other molecules"),
                      (["train.init_from=nope"], "train.init_from: run 'nope' has no fold 0"),
                      (["model.hidden=8"], "another model or other features")):
        bad = apply_overrides(cfg, ["train.only_folds=[0]"] + over)
        with pytest.raises(RuntimeError, match=msg):
            T.train_run(bad, run_name="tuned2", df=df, models_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="train.init_from and train.pretrain"):
        T.train_run(apply_overrides(cfg, ["train.pretrain={epochs: 1}"]), run_name="tuned3", df=df, models_dir=tmp_path)


def test_options_added_later_leave_older_runs_fingerprints_alone(train_rows):
    """A config that spells out ``model.attn_layers: 0`` (or ``train.ema: 0``, ``graph.vienna_params: []``)
    is the one its runs were trained with."""
    df = pd.DataFrame(train_rows[:5])
    cfg = load_config("smoke", ["model.attn_layers=0", "train.ema=0", "graph.vienna_params=[]", "train.cpu_bf16=false",
                                "train.label_positions=null", "train.target_weights=null", "train.reverse_p=0",
                                "train.pos_shift=0"])
    older = {k: v for k, v in cfg.items()}
    older["model"] = {k: v for k, v in cfg["model"].items() if k != "attn_layers"}
    older["train"] = {k: v for k, v in cfg["train"].items()
                      if k not in ("ema", "cpu_bf16", "label_positions", "target_weights", "reverse_p", "pos_shift")}
    older["graph"] = {k: v for k, v in cfg["graph"].items() if k != "vienna_params"}
    assert T.fingerprints(cfg, df) == T.fingerprints(older, df)
    for change in (["model.attn_layers=1", "train.ema=0"], ["model.attn_layers=0", "train.ema=0.99"],
                   ["model.attn_layers=0", "train.cpu_bf16=true"], ["train.label_positions=48"],
                   ["train.target_weights={deg_pH10: 0.5}"], ["train.reverse_p=0.5"], ["train.pos_shift=23"],
                   ["graph.vienna_params=[Langdon2018]"]):
        changed = T.fingerprints(load_config("smoke", change), df)
        assert changed != T.fingerprints(older, df)
    assert changed["features"] != T.fingerprints(older, df)["features"]       # the graphs differ too


def test_weight_average_follows_its_formula_with_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = T.WeightAverage(model, 0.9)
    assert not avg.model.training and not any(p.requires_grad for p in avg.model.parameters())
    expect = model[0].weight.detach().clone()
    for n in range(1, 41):
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 3))
        model(torch.randn(4, 3))                          # moves the batch-norm buffers
        avg.update(model)
        d = min(0.9, (1 + n) / (10 + n))                  # 0.18, 0.25, … then 0.9 from n = 80/9 on
        expect = d * expect + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(avg.model[0].weight, expect)
    assert not torch.allclose(avg.model[0].weight, model[0].weight)       # an average, not a copy
    assert avg.model[1].num_batches_tracked == model[1].num_batches_tracked == 40
    with pytest.raises(ValueError, match="train.ema"):
        T.WeightAverage(model, 1.0)


def test_ema_training_validates_and_keeps_the_averaged_weights(train_rows, tiny_cfg):
    graphs = build_graphs(pd.DataFrame(train_rows), progress=False, workers=1)
    runs = {}
    for ema in (0, 0.9):
        cfg = apply_overrides(tiny_cfg, ["train.epochs=3", "train.max_steps=4", f"train.ema={ema}"])
        runs[ema] = T.train_fold(cfg, graphs[:32], graphs[32:], 0, torch.device("cpu"), progress=False)
    (plain, plain_best, plain_hist), (state, best, hist) = runs[0], runs[0.9]
    assert best == min(h["val_mcrmse"] for h in hist)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in plain_hist]   # same optimisation path
    assert any(not torch.equal(state[k], plain[k]) for k in plain)                   # other weights kept
    model = build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    model.load_state_dict(state)                                                      # loadable as a plain model
    score, _ = T.score_predictions(T.predict_graphs(model, graphs[32:]), graphs[32:])
    assert score == pytest.approx(best, abs=1e-5)


def test_prediction_batches_keep_order_and_bound_the_attention_grid():
    from types import SimpleNamespace
    gs = [SimpleNamespace(seq_len=torch.tensor([n]), k=k) for k, n in enumerate([107] * 70 + [2000, 130, 130, 5000, 107])]
    chunks = T.size_batches(gs, batch_size=64)
    assert [g.k for c in chunks for g in c] == list(range(len(gs)))      # every molecule once, in order
    assert [len(c) for c in chunks] == [64, 6, 1, 2, 1, 1]
    for c in chunks:
        longest = max(int(g.seq_len) for g in c)
        assert len(c) == 1 or len(c) * longest ** 2 <= 64 * 160 ** 2


def test_prediction_sorted_by_length_returns_each_molecule_in_input_order(trained, test_rows):
    # 107- and 130-nt molecules interleaved: batched shortest first, yet each prediction is the
    # molecule's own (as predicted alone) and in the caller's order
    from openvaccine.graphs import graph_params
    d, run, _ = trained
    ck = torch.load(d / run / "fold0.pt", weights_only=False)
    model = T.load_model(ck, torch.device("cpu"))
    rows = [r for pair in zip(test_rows[:4], test_rows[4:]) for r in pair][::-1]
    graphs = build_graphs(pd.DataFrame(rows), graph_params(ck["config"]), progress=False)
    got = T.predict_graphs(model, graphs, batch_size=3)
    assert [len(p) for p in got] == [r["seq_length"] for r in rows]
    for g, p in zip(graphs, got):
        np.testing.assert_allclose(p, T.predict_graphs(model, [g])[0], atol=1e-5)


def test_cpu_bf16_runs_train_and_predict_in_bfloat16_where_the_cpu_has_it(train_rows, tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(T, "bf16_native", lambda: True)       # bfloat16 autocast runs (emulated) on any CPU
    df = pd.DataFrame(train_rows)
    cfg = apply_overrides(tiny_cfg, ["train.cpu_bf16=true", "train.only_folds=[0]"])
    T.train_run(cfg, run_name="bf16", df=df, models_dir=tmp_path, progress=False)
    ck = torch.load(tmp_path / "bf16" / "fold0.pt", weights_only=False)
    assert ck["precision"] == "bfloat16"
    assert "| cpu bf16 |" in T.experiments_table(tmp_path)     # the runs table says so
    model = T.load_model(ck, torch.device("cpu"))
    assert model.cpu_bf16                                      # it predicts as it was validated
    from openvaccine.graphs import graph_params
    graphs = [build_graphs(df, graph_params(cfg), progress=False)[i] for i in ck["oof_index"]]
    for a, b in zip(T.predict_graphs(model, graphs), ck["oof"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    model.cpu_bf16 = False
    diff = max(np.abs(a - b).max() for a, b in zip(T.predict_graphs(model, graphs), ck["oof"]))
    assert 1e-4 < diff < 0.1                                   # bfloat16 rounding, not another model
    monkeypatch.setattr(T, "bf16_native", lambda: False)       # a CPU without it: float32
    assert not T.cpu_bf16(cfg) and not T.load_model(ck, torch.device("cpu")).cpu_bf16
    assert not T.cpu_bf16(tiny_cfg)


def test_train_command_takes_several_configs_and_their_overrides(monkeypatch):
    got = {}
    monkeypatch.setattr(T, "train_runs", lambda cfgs: got.update(runs=cfgs))
    monkeypatch.setattr(T, "train_run", lambda cfg, run_name=None: got.update(run=(cfg, run_name)))
    cli.main(["train", "--config", "smoke", "default_gatv2", "train.epochs=3"])    # k=v after the configs: an override
    assert [c["name"] for c in got["runs"]] == ["smoke", "default_gatv2"]
    assert all(c["train"]["epochs"] == 3 for c in got["runs"])
    cli.main(["train", "--config", "smoke", "--run-name", "x", "seed=5"])
    assert got["run"][1] == "x" and got["run"][0]["seed"] == 5
    with pytest.raises(SystemExit, match="--run-name names one run"):
        cli.main(["train", "--config", "smoke", "default_gatv2", "--run-name", "x"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"     # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_busy_pool_worker_exits_when_its_parent_is_killed(tmp_path):
    """A fold process must not train on, orphaned, after ``kill`` of the ``train`` that started it."""
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        from openvaccine.train import exit_with_parent

        def busy(path):
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(600)

        if __name__ == "__main__":
            ex = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=exit_with_parent, initargs=(0.1,))
            ex.submit(busy, {str(pid_file)!r})
            time.sleep(600)
    """))
    err = tmp_path / "parent.err"              # also the killed parent's resource tracker's leaked-semaphore warning
    with open(err, "w") as f:
        parent = subprocess.Popen([sys.executable, str(script)], stderr=f)
    try:
        for _ in range(600):                       # the worker starts (imports torch): up to 60 s
            if pid_file.is_file() or parent.poll() is not None:
                break
            time.sleep(0.1)
        assert parent.poll() is None and pid_file.is_file(), f"the worker never started: {err.read_text()}"
        worker = int(pid_file.read_text())
        assert _alive(worker)
    finally:
        parent.kill()
        parent.wait()
    for _ in range(300):                           # its watch thread polls every 0.1 s
        if not _alive(worker):
            break
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the pool worker went on after its parent was killed"
