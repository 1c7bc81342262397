import numpy as np
import pandas as pd
import pytest
import torch

from openvaccine import budget as B
from openvaccine import train as T
from openvaccine.config import apply_overrides, load_config
from openvaccine.data import data_fingerprint
from openvaccine.graphs import graph_params, tta_structures

SPEED = dict(train_graphs_per_s=40.0, infer_graphs_per_s=200.0)


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(B, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(B, "cpu_cores", lambda: 2)
    monkeypatch.setattr(T, "cpu_cores", lambda: 2)


def frames(n_good=80, n_noisy=15, n_usable_noisy=5, test_lengths=(107, 130, 130)):
    """Training rows (SN_filter=1; SN_filter=0 under and over S/N 1) and test lengths."""
    df = pd.DataFrame(dict(SN_filter=[1] * n_good + [0] * (n_noisy + n_usable_noisy),
                           signal_to_noise=[5.0] * n_good + [0.5] * n_noisy + [1.5] * n_usable_noisy))
    return df, pd.DataFrame(dict(seq_length=list(test_lengths)))


def test_run_minutes_follows_its_formula():
    cfg = load_config("default_gatv2")                  # 5 folds, 13 epochs, 3 TTA structures
    n, m, k, e = 1000, 1200, 5, 13
    fold_s = e * ((n - n / k) / 40.0 + (n / k) / 200.0) + 3 * (m / k) / 200.0
    submit_s = k * 3 * 3634 * 126 / 107 / 200.0
    got = B.run_minutes(cfg, 5, n, m, 3634 * 126, SPEED, jobs=2)
    assert got == pytest.approx((5 * fold_s + submit_s) / 2 / 60)
    assert B.run_minutes(cfg, 0, n, m, 3634 * 126, SPEED, jobs=2) == pytest.approx(submit_s / 2 / 60)
    assert B.run_minutes(cfg, 0, n, m, 3634 * 126, SPEED, jobs=2, predicted=2) == pytest.approx(0.6 * submit_s / 2 / 60)
    student = load_config("default_gatv2_lstm_pseudo")  # 17 epochs, a quarter of the test molecules in each
    e = 17                                              # (its teachers' labels: their own submit passes, kept)
    fold_s = e * ((n - n / k + 0.25 * 3634) / 40.0 + (n / k) / 200.0) + 3 * (m / k) / 200.0
    got = B.run_minutes(student, 5, n, m, 3634 * 126, SPEED, jobs=2, n_test=3634)
    assert got == pytest.approx((5 * fold_s + submit_s) / 2 / 60)


def test_a_students_speed_is_measured_on_its_epochs_mix(train_rows, test_rows, tiny_cfg):
    student = apply_overrides(tiny_cfg, ["train.pseudo_from=[tiny]", "train.pseudo_frac=0.5"])
    test_df = pd.DataFrame(test_rows * 10)
    assert B.student_mix(tiny_cfg, 8, 100, test_df) is None
    mix = B.student_mix(student, 8, 100, test_df)        # 8 * 0.5 * len(test) / (100 * (1 - 1/2)) molecules
    assert len(mix) == round(8 * 0.5 * len(test_df) / 50) and set(mix.index) <= set(test_df.index)
    assert mix.equals(B.student_mix(student, 8, 100, test_df))                      # a fixed sample
    res = T.benchmark(student, n_graphs=8, passes=1, threads=1, df=pd.DataFrame(train_rows), verbose=False,
                      pseudo_df=mix.head(3))
    assert res["graphs"] == 8 and res["pseudo_graphs"] == 3 and res["train_graphs_per_s"] > 0
    assert B.speed_key(student) != B.speed_key(tiny_cfg)


def test_usable_rows_and_speed_key():
    df, _ = frames()
    assert T.usable_rows(df, load_config("default_gatv2")["train"]).sum() == 85     # SN_filter=1, or S/N >= 1.0
    a, b = load_config("default_gatv2"), load_config("default_gatv2_s7")
    assert B.speed_key(a) == B.speed_key(b)                              # seeds run at one speed
    assert B.speed_key(a) != B.speed_key(load_config("default_gatv2_lstm"))


def test_within_budget_keeps_members_in_order_while_they_fit(on_cpu, tmp_path, capsys):
    df, test_df = frames(2000, 0, 0, [130] * 3000)
    names = ["default_gatv2", "default_gatv2_lstm", "default_gatv2_lstm_s11", "default_gatv2_s7"]
    cfgs = [load_config(c) for c in names]
    speeds = {B.speed_key(c): SPEED for c in cfgs}
    each = [B.run_minutes(c, 5, 2000, 2000, 390000, SPEED, 2) for c in cfgs]
    kw = dict(models_dir=tmp_path, df=df, test_df=test_df, speeds=speeds)
    assert [c["name"] for c in B.within_budget(cfgs, sum(each[:2]) + 0.1, **kw)] == names[:2]
    out = capsys.readouterr().out
    assert "2 of 4 members fit" in out and "default_gatv2_s7" in out and "left out" in out
    assert "2 left out: the same command again trains the next budget's worth" in out
    assert [c["name"] for c in B.within_budget(cfgs, 1e9, **kw)] == names
    assert "left out" not in capsys.readouterr().out
    assert [c["name"] for c in B.within_budget(cfgs, 1.0, **kw)] == names[:1]        # the first is always kept
    # folds already trained cost nothing but their prediction passes: the third now fits
    for f in range(5):
        (tmp_path / "default_gatv2_lstm_s11").mkdir(exist_ok=True)
        (tmp_path / "default_gatv2_lstm_s11" / f"fold{f}.pt").write_bytes(b"")
    done = B.run_minutes(cfgs[2], 0, 2000, 2000, 390000, SPEED, 2)
    kept = B.within_budget(cfgs, sum(each[:2]) + done + 0.1, **kw)
    assert [c["name"] for c in kept] == names[:3]
    # and once an earlier make submit kept a fold's test predictions, that fold's passes cost nothing either
    run = tmp_path / "default_gatv2_lstm_s11"
    structures = tta_structures(graph_params(cfgs[2]))
    T.save_fold_prediction(run / "fold0.pt", structures, data_fingerprint(test_df), [np.zeros((130, 5))] * 3000)
    assert B.kept_predictions(cfgs[2], run, data_fingerprint(test_df)) == 1
    assert B.kept_predictions(cfgs[2], run, data_fingerprint(test_df.head(2))) == 0          # kept for other molecules
    (run / "fold0.pt").write_bytes(b"retrained")                          # kept for an earlier training of it
    assert B.kept_predictions(cfgs[2], run, data_fingerprint(test_df)) == 0
    T.save_fold_prediction(run / "fold0.pt", structures, data_fingerprint(test_df), [np.zeros((130, 5))] * 3000)
    less = B.run_minutes(cfgs[2], 0, 2000, 2000, 390000, SPEED, 2, predicted=1)
    assert less == pytest.approx(0.8 * done)
    assert [c["name"] for c in B.within_budget(cfgs, sum(each[:2]) + less + 0.01, **kw)] == names[:3]
    assert [c["name"] for c in B.within_budget(cfgs, sum(each[:2]) + less - 0.01, **kw)] == names[:2]
    # with the first two trained too, the next member with folds to train is kept even over the budget: each
    # call trains one more (default_gatv2_s7, after the trained three), and nothing after it over the budget
    for name in names[:2]:
        (tmp_path / name).mkdir(exist_ok=True)
        for f in range(5):
            (tmp_path / name / f"fold{f}.pt").write_bytes(b"")
    assert [c["name"] for c in B.within_budget(cfgs, 1.0, **kw)] == names
    more = cfgs + [apply_overrides(load_config("default_gatv2"), ["name=another"])]
    assert [c["name"] for c in B.within_budget(more, 1.0, **kw)] == names


def test_a_member_trained_and_predicted_is_not_measured(on_cpu, tmp_path, capsys, monkeypatch):
    df, test_df = frames()
    done, todo = load_config("default_gatv2_lstm"), load_config("default_gatv2")
    measured = []
    monkeypatch.setattr(B, "benchmark", lambda c, **kw: measured.append(c["name"]) or SPEED)
    run, fp = tmp_path / done["name"], data_fingerprint(test_df)
    run.mkdir()
    structures = tta_structures(graph_params(done))
    for f in range(5):
        (run / f"fold{f}.pt").write_bytes(b"trained")
        if f:                                                    # fold 0's test predictions not kept yet
            T.save_fold_prediction(run / f"fold{f}.pt", structures, fp, [np.zeros((107, 5))] * len(test_df))
    kw = dict(models_dir=tmp_path, df=df, test_df=test_df)
    assert [c["name"] for c in B.within_budget([done, todo], 1e9, **kw)] == [done["name"], todo["name"]]
    assert measured == [done["name"], todo["name"]]             # fold 0's prediction passes still cost
    T.save_fold_prediction(run / "fold0.pt", structures, fp, [np.zeros((107, 5))] * len(test_df))
    measured.clear()
    capsys.readouterr()
    assert [c["name"] for c in B.within_budget([done, todo], 1e9, **kw)] == [done["name"], todo["name"]]
    assert measured == [todo["name"]]
    assert f"{done['name']}: 0 min (trained, its test predictions kept)" in capsys.readouterr().out


def test_a_student_of_a_member_left_out_is_left_out(on_cpu, tmp_path, capsys):
    df, test_df = frames()
    teacher = load_config("default_gatv2")
    student = apply_overrides(load_config("smoke"), ["name=student", "train.pseudo_from=[default_gatv2]"])
    cfgs = [load_config("default_gatv2_lstm"), teacher, student]
    speeds = {B.speed_key(c): SPEED for c in cfgs}
    kept = B.within_budget(cfgs, 1.0, models_dir=tmp_path, df=df, test_df=test_df, speeds=speeds)
    assert [c["name"] for c in kept] == ["default_gatv2_lstm"]
    assert "student: left out (a run it learns from is)" in capsys.readouterr().out
    tuned = apply_overrides(load_config("smoke"), ["name=tuned", "train.init_from=default_gatv2"])   # started from it
    kept = B.within_budget(cfgs[:2] + [tuned], 1.0, models_dir=tmp_path, df=df, test_df=test_df, speeds=speeds)
    assert [c["name"] for c in kept] == ["default_gatv2_lstm"]
    assert "tuned: left out (a run it learns from is)" in capsys.readouterr().out


def test_no_budget_on_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(B, "get_device", lambda: torch.device("cuda"))
    cfgs = [load_config("default_gatv2"), load_config("default_gatv2_s7")]
    assert B.within_budget(cfgs, 1.0) == cfgs
    assert "not applied on cuda" in capsys.readouterr().out


def test_benchmark_measures_both_speeds_in_the_threads_asked(train_rows, tiny_cfg):
    res = T.benchmark(tiny_cfg, n_graphs=8, passes=2, threads=1, df=pd.DataFrame(train_rows), verbose=False)
    assert res["graphs"] == 8 and res["threads"] == 1
    assert res["train_graphs_per_s"] > 0 and res["infer_graphs_per_s"] > 0


def test_train_command_budget_selects_members_before_training(monkeypatch):
    from openvaccine import cli
    got = {}
    monkeypatch.setattr(T, "train_runs", lambda cfgs: got.update(runs=[c["name"] for c in cfgs]))
    monkeypatch.setattr(B, "within_budget", lambda cfgs, minutes: got.update(budget=minutes) or cfgs[:1])
    cli.main(["train", "--config", "smoke", "default_gatv2", "--budget", "45"])
    assert got == dict(budget=45.0, runs=["smoke"])
    got.clear()
    cli.main(["train", "--config", "smoke", "default_gatv2", "--budget", "0"])    # 0: no budget
    assert got == dict(runs=["smoke", "default_gatv2"])


def test_train_plan_names_the_runs_and_trains_nothing(monkeypatch, capsys, tmp_path):
    from openvaccine import cli
    monkeypatch.setattr(T, "MODELS_DIR", tmp_path)
    (tmp_path / "default_gatv2").mkdir()
    (tmp_path / "default_gatv2" / "fold3.pt").write_bytes(b"")
    def train(*a, **k):
        raise AssertionError("--plan trained")
    monkeypatch.setattr(T, "train_runs", train)
    monkeypatch.setattr(T, "train_run", train)
    monkeypatch.setattr(B, "within_budget", lambda cfgs, minutes: cfgs[1:])
    cli.main(["train", "--config", "smoke", "default_gatv2", "default_gatv2_s7", "--budget", "45", "--plan"])
    assert capsys.readouterr().out.strip() == ("train --plan: would train default_gatv2 (4 folds left), "
                                               "default_gatv2_s7 (5 folds left)")
    cli.main(["train", "--config", "smoke", "--run-name", "x", "--plan"])     # one config: no budget, its run name
    assert capsys.readouterr().out.strip() == "train --plan: would train x (2 folds left)"
