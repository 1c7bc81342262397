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
        + K\\,S\\,\\frac{N_\\text{test}\\,\\bar L_\\text{test}}{v_\\text{infer}\\,\\bar L_\\text{bench}}\\Big]

with :math:`F` its unfinished folds of :math:`K`, :math:`E` epochs (an upper bound: early stopping
only shortens it), :math:`N_\\text{val} = N/K` and :math:`N_\\text{train} = N - N_\\text{val}` of the
:math:`N` usable training molecules, :math:`S` the structures each molecule is predicted on (a fold's
:math:`M/K` of all :math:`M` training molecules for its OOF predictions, and ``make submit``'s test
molecules, per fold, with lengths scaled from the measured molecules' to the test molecules'),
and :math:`J` the processes sharing the cores. A pseudo-labelled student's fold adds
:math:`E\\,f\\,N_\\text{test}\\bar L_\\text{test}/(v_\\text{train}\\bar L_\\text{bench})` for the share
:math:`f` (``train.pseudo_frac``) of the test molecules in each epoch and
:math:`T\\,S\\,N_\\text{test}\\bar L_\\text{test}/(v_\\text{infer}\\bar L_\\text{bench})` for its
:math:`T` teachers' labels. Folding and graph building (a few minutes from a cold cache) are not in it.
"""
from __future__ import annotations

import json

import pandas as pd

from .data import load_test, load_train
from .graphs import graph_params, tta_structures
from .train import (MODELS_DIR, benchmark, cpu_cores, get_device, pool_jobs, set_threads, unfinished_folds,
                    usable_rows)


def speed_key(cfg: dict) -> str:
    """What a member's speed depends on: its model, its batch size and its precision (seeds do not)."""
    t = cfg["train"]
    return json.dumps([cfg["model"], t["batch_size"], bool(t.get("cpu_bf16"))], sort_keys=True, default=str)


def run_minutes(cfg: dict, folds_left: int, n_usable: int, n_rows: int, test_nt: int, speed: dict, jobs: int,
                bench_length: float = 107.0) -> float:
    """Estimated minutes a run adds to ``make train && make submit`` on ``jobs`` processes (module docstring)."""
    t = cfg["train"]
    k, epochs, s = int(t["folds"]), int(t["epochs"]), len(tta_structures(graph_params(cfg)))
    n_val, v_train, v_infer = n_usable / k, speed["train_graphs_per_s"], speed["infer_graphs_per_s"]
    test_graphs = test_nt / bench_length          # the test molecules in measured molecules' lengths
    fold_s = epochs * ((n_usable - n_val) / v_train + n_val / v_infer) + s * n_rows / k / v_infer
    teachers = t.get("pseudo_from") or []
    if teachers:                         # a student: its teachers label the test molecules, a share joins each epoch
        fold_s += epochs * float(t.get("pseudo_frac", 0.25)) * test_graphs / v_train + len(teachers) * s * test_graphs / v_infer
    submit_s = k * s * test_graphs / v_infer
    return (folds_left * fold_s + submit_s) / jobs / 60.0


def within_budget(cfgs: list[dict], minutes: float, models_dir=None, df: pd.DataFrame | None = None,
                  test_df: pd.DataFrame | None = None, n: int = 96, passes: int = 2,
                  speeds: dict | None = None, verbose: bool = True) -> list[dict]:
    """The members of ``cfgs`` (in order) whose estimated minutes, added up, fit in ``minutes``.

    The first member is always kept; a member taught by a member left out (``train.pseudo_from``) is
    left out too. ``speeds`` (:func:`speed_key` → :func:`~openvaccine.train.benchmark` result) skips
    the measurement. On a GPU, where folds share one device, the estimate does not hold: every
    member is kept."""
    device = get_device()
    if device.type != "cpu":
        if verbose:
            print(f"train --budget {minutes:g}: not applied on {device.type} (the estimate is for CPU cores); training all")
        return list(cfgs)
    models_dir = models_dir or MODELS_DIR
    df = load_train() if df is None else df
    test_df = load_test() if test_df is None else test_df
    test_nt = int(test_df["seq_length"].sum())
    left = {c.get("name", "run"): unfinished_folds(c, models_dir / c.get("name", "run")) for c in cfgs}
    jobs = pool_jobs(cfgs, device, max(1, sum(len(v) for v in left.values())))
    speeds = dict(speeds or {})
    threads = max(1, cpu_cores() // jobs)
    kept, dropped, total, lines = [], set(), 0.0, []
    for c in cfgs:
        name = c.get("name", "run")
        if set(c["train"].get("pseudo_from") or []) & dropped:
            dropped.add(name)
            lines.append(f"  {name}: left out (its teacher is)")
            continue
        key = speed_key(c)
        if key not in speeds:
            speeds[key] = benchmark(c, n_graphs=n, passes=passes, threads=threads, df=df, verbose=False)
        est = run_minutes(c, len(left[name]), int(usable_rows(df, c["train"]).sum()), len(df), test_nt, speeds[key], jobs)
        if kept and total + est > minutes:
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
    set_threads(None)                    # the measurement ran in a fold process's threads
    return kept
