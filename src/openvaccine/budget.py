"""Which of ``make train``'s members fit a time budget on this machine.

The CPU ``make train && make submit`` of four members took 62 min on one 2-core machine and 2 h 01 min
on another, 1.9–2.2× slower. Rather than one fixed list for every CPU, ``train --budget M`` keeps the
members, in the order given, while the estimated minutes of the whole job still fit in ``M``; the
later members, the ones worth least to the blend, are left out (and named).

A member's minutes come from a short measurement of its training and inference speed here (graphs/s
on ``n`` training molecules, the faster of ``passes`` timed passes after a warm-up, in one process of
the threads each fold process gets; measured on a 2-core Xeon, two such processes side by side read
the same speeds as one alone, 46.9 training graphs/s each for ``default_gatv2``):

.. math::

    t_\\text{run} = \\frac{1}{J}\\Big[F\\Big(E\\Big(\\frac{N_\\text{train}}{v_\\text{train}}
        + \\frac{N_\\text{val}}{v_\\text{infer}}\\Big) + \\frac{S\\,M/K}{v_\\text{infer}}\\Big)
        + (K - P)\\,S\\,\\frac{N_\\text{test}\\,\\bar L_\\text{test}}{v_\\text{infer}\\,\\bar L_\\text{bench}}\\Big]

with :math:`F` its unfinished folds of :math:`K`, :math:`E` epochs (an upper bound: early stopping
only shortens it), :math:`N_\\text{val} = N/K` and :math:`N_\\text{train} = N - N_\\text{val}` of the
:math:`N` usable training molecules, :math:`S` the structures each molecule is predicted on (a fold's
:math:`M/K` of all :math:`M` training molecules for its OOF predictions, and ``make submit``'s test
molecules, per fold, with lengths scaled from the measured molecules' to the test molecules'; :math:`P`
of the :math:`K` folds keep theirs from an earlier ``make submit`` and are not predicted again),
and :math:`J` the processes sharing the cores. A pseudo-labelled student's epochs also hold the share
:math:`f` (``train.pseudo_frac``) of the :math:`N_\\text{test}` test molecules:
:math:`N_\\text{train} + f N_\\text{test}` molecules an epoch, its :math:`v_\\text{train}` measured on
training molecules mixed with test molecules in that proportion (two lengths in a batch train slower
per base than one: the Xeon's student ran ~30 % over an estimate scaled from 107-nt speed). Its
teachers' labels are their folds' test predictions, kept (:func:`~openvaccine.train.save_fold_prediction`)
and taken by ``make submit``: counted once, in the teachers' own terms. Folding and graph building
(a few minutes from a cold cache) are not in it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .data import data_fingerprint, load_test, load_train
from .graphs import graph_params, tta_structures
from .train import (MODELS_DIR, benchmark, cpu_cores, fold_path, get_device, kept_fold_prediction, pool_jobs, pseudo_frac,
                    run_folds, set_threads, unfinished_folds, upstream_runs, usable_rows)


def speed_key(cfg: dict) -> str:
    """What a member's speed depends on: its model, its batch size, its precision and, for a student, the share
    of pseudo-labelled test molecules in its epochs (seeds do not)."""
    t = cfg["train"]
    return json.dumps([cfg["model"], t["batch_size"], bool(t.get("cpu_bf16")), pseudo_share(cfg)], sort_keys=True,
                      default=str)


def pseudo_share(cfg: dict) -> float:
    """The share of the test molecules in each of a student's epochs (``train.pseudo_frac``), 0 for a
    member without teachers (``train.pseudo_from``)."""
    t = cfg["train"]
    return pseudo_frac(t) if t.get("pseudo_from") else 0.0


def run_minutes(cfg: dict, folds_left: int, n_usable: int, n_rows: int, test_nt: int, speed: dict, jobs: int,
                bench_length: float = 107.0, n_test: int = 0, predicted: int = 0) -> float:
    """Estimated minutes a run adds to ``make train && make submit`` on ``jobs`` processes (module docstring);
    ``n_test``: the test molecules, a share of which joins a student's epochs; ``predicted``: its folds whose
    test predictions are already kept (:func:`kept_predictions`), which ``make submit`` does not make again."""
    t = cfg["train"]
    k, epochs, s = int(t["folds"]), int(t["epochs"]), len(tta_structures(graph_params(cfg)))
    n_val, v_train, v_infer = n_usable / k, speed["train_graphs_per_s"], speed["infer_graphs_per_s"]
    n_epoch = n_usable - n_val + pseudo_share(cfg) * n_test     # a student's speed is measured on that mix
    fold_s = epochs * (n_epoch / v_train + n_val / v_infer) + s * n_rows / k / v_infer
    submit_s = (k - predicted) * s * test_nt / bench_length / v_infer   # test molecules in measured lengths
    return (folds_left * fold_s + submit_s) / jobs / 60.0


def kept_predictions(cfg: dict, run_dir: Path, test_fp: str) -> int:
    """How many of a run's trained folds keep their predictions of the test molecules ``test_fp``
    (:func:`~openvaccine.data.data_fingerprint`) from an earlier ``make submit`` or as a teacher's labels
    (:func:`~openvaccine.train.kept_fold_prediction`), valid for their checkpoints."""
    structures = tta_structures(graph_params(cfg))
    paths = [fold_path(run_dir, f) for f in run_folds(cfg)]
    return sum(p.is_file() and kept_fold_prediction(p, structures, test_fp) is not None for p in paths)


def student_mix(cfg: dict, n: int, n_usable: int, test_df: pd.DataFrame) -> pd.DataFrame | None:
    """The test molecules a student's speed is measured with beside ``n`` training molecules: as many as
    its epochs hold per training molecule (a fixed sample), or None for a member without teachers."""
    share = pseudo_share(cfg)
    if not share:
        return None
    m = round(n * share * len(test_df) / (n_usable * (1 - 1 / int(cfg["train"]["folds"]))))
    return test_df.sample(min(m, len(test_df)), random_state=0)


def within_budget(cfgs: list[dict], minutes: float, models_dir=None, df: pd.DataFrame | None = None,
                  test_df: pd.DataFrame | None = None, n: int = 96, passes: int = 2,
                  speeds: dict | None = None, verbose: bool = True) -> list[dict]:
    """The members of ``cfgs`` (in order) whose estimated minutes, added up, fit in ``minutes``.

    The first member with folds to train is always kept (after the trained ones before it, which cost only
    their prediction passes), so each call trains at least one more member; a member taught by a member left
    out, or started from one (:func:`~openvaccine.train.upstream_runs`), is left out too. ``speeds``
    (:func:`speed_key` → :func:`~openvaccine.train.benchmark` result) skips the measurement, as does a member
    trained and predicted already (:func:`kept_predictions` for every fold), which costs nothing. On a GPU,
    where folds share one device, the estimate does not hold: every member is kept."""
    device = get_device()
    if device.type != "cpu":
        if verbose:
            print(f"train --budget {minutes:g}: not applied on {device.type} (the estimate is for CPU cores); training all")
        return list(cfgs)
    models_dir = models_dir or MODELS_DIR
    df = load_train() if df is None else df
    test_df = load_test() if test_df is None else test_df
    test_nt, test_fp = int(test_df["seq_length"].sum()), data_fingerprint(test_df)
    left = {c.get("name", "run"): unfinished_folds(c, models_dir / c.get("name", "run")) for c in cfgs}
    jobs = pool_jobs(cfgs, device, max(1, sum(len(v) for v in left.values())))
    speeds = dict(speeds or {})
    threads = max(1, cpu_cores() // jobs)
    kept, dropped, total, lines = [], set(), 0.0, []
    for c in cfgs:
        name = c.get("name", "run")
        if upstream_runs(c) & dropped:
            dropped.add(name)
            lines.append(f"  {name}: left out (a run it learns from is)")
            continue
        predicted = kept_predictions(c, models_dir / name, test_fp)
        if predicted == len(run_folds(c)):        # every fold trained and predicted: nothing to do, nor to measure
            kept.append(c)
            lines.append(f"  {name}: 0 min (trained, its test predictions kept)")
            continue
        key = speed_key(c)
        n_usable = int(usable_rows(df, c["train"]).sum())
        if key not in speeds:
            speeds[key] = benchmark(c, n_graphs=n, passes=passes, threads=threads, df=df, verbose=False,
                                    pseudo_df=student_mix(c, n, n_usable, test_df))
        est = run_minutes(c, len(left[name]), n_usable, len(df), test_nt, speeds[key], jobs, n_test=len(test_df),
                          predicted=predicted)
        if any(left[k.get("name", "run")] for k in kept) and total + est > minutes:
            dropped.add(name)
            lines.append(f"  {name}: ~{est:.0f} min, left out ({total:.0f} + {est:.0f} > {minutes:g})")
            continue
        kept.append(c)
        total += est
        s = speeds[key]
        lines.append(f"  {name}: ~{est:.0f} min ({len(left[name])} folds to train; "
                     f"{s['train_graphs_per_s']:.0f} training / {s['infer_graphs_per_s']:.0f} inference graphs/s)")
    if verbose:
        print(f"train --budget {minutes:g}: {len(kept)} of {len(cfgs)} members fit, ~{total:.0f} min of training "
              f"and prediction passes in {jobs} processes (folding and graphs from a cold cache come on top)")
        print("\n".join(lines))
        if dropped:
            print(f"  {len(dropped)} left out: the same command again trains the next budget's worth (members already "
                  "trained count only at the prediction passes they still need); make train BUDGET=0 trains all")
    set_threads(None)                    # the measurement ran in a fold process's threads
    return kept
