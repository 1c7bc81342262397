"""Ensembling, blending, Kaggle submissions, and predictions for new sequences.

* every fold of a run predicts; folds are averaged;
* runs are blended with non-negative weights that sum to 1, fitted per target on the runs'
  out-of-fold predictions (SN_filter = 1 rows, scored positions);
* test-time augmentation: each molecule is predicted on its given structure, on the folding
  engine's MFE structure and, when the run has a second engine, on that engine's MFE; the
  predictions are averaged (many given 130-nt test structures are not ViennaRNA's MFE).
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from tqdm.auto import tqdm

from . import TARGETS
from .config import ROOT, ConfigError, atomic_path, parse_window
from .data import DataError, data_fingerprint, load_sample_submission, load_test, load_train, normalise_sequence, pair_table
from .graphs import build_graphs, feature_key, graph_params, tta_structures
from .train import (MODELS_DIR, cpu_cores, exit_with_parent, fold_path, fold_settings, get_device, load_fold_prediction,
                    load_model, mcrmse, predict_graphs, save_fold_prediction, set_threads)

SUBMISSIONS_DIR = ROOT / "submissions"
SUBMISSION_COLUMNS = ["id_seqpos"] + TARGETS


class NoModelsError(RuntimeError):
    pass


class BlendError(ValueError):
    """Runs that cannot be blended together."""


@dataclass
class Run:
    name: str
    path: Path
    config: dict
    checkpoints: list[dict]
    cv: dict

    @property
    def graph(self) -> dict:
        return graph_params(self.config)


def load_runs(names: list[str] | None = None, models_dir: Path | str | None = None,
              folds: list[int] | None = None) -> list[Run]:
    """Complete runs (every fold saved and a cv.json) under ``models/``. With ``folds``, runs that saved
    those folds (``train.only_folds``), with their checkpoints only: enough to score and blend them on
    the molecules those folds held out (:func:`blend_report`), not to predict."""
    root = Path(models_dir or MODELS_DIR)
    if names:
        dirs = [root / n if not Path(n).is_dir() else Path(n) for n in names]
    else:
        dirs = sorted(p for p in root.glob("*") if p.is_dir() and (p / "cv.json").is_file())
    runs = []
    for d in dirs:
        cvp = d / "cv.json"
        if not cvp.is_file():
            raise NoModelsError(f"{d}: no cv.json — the run is unfinished; rerun `make train` to complete it")
        cv = json.loads(cvp.read_text())
        if cv.get("partial") and not names:
            continue                                   # fold-subset comparison runs are not ensemble members
        k = int(cv["config"]["train"]["folds"])
        bad = sorted(set(folds or ()) - set(range(k)))
        if bad:
            raise NoModelsError(f"{d}: no fold {bad[0]}: the run has folds 0-{k - 1}")
        cks = []
        for f in (range(k) if folds is None else sorted(set(folds))):
            p = fold_path(d, f)
            if not p.is_file():
                raise NoModelsError(f"{p} missing; rerun `make train` to complete the run")
            cks.append(torch.load(p, weights_only=False, map_location="cpu"))
        runs.append(Run(d.name, d, cv["config"], cks, cv))
    if not runs:
        raise NoModelsError(f"no trained runs under {root}: run `make train` first")
    return runs


def run_predict(run: Run, df: pd.DataFrame, tta: bool = True, progress: bool = True,
                jobs: int | None = None) -> list[np.ndarray]:
    """Fold-averaged (and TTA-averaged) per-molecule predictions of one run."""
    return ensemble_predict([run], df, tta=tta, weights={run.name: dict.fromkeys(TARGETS, 1.0)},
                            progress=progress, jobs=jobs)


def prediction_jobs(device: torch.device, passes: int, molecules: int, cores: int | None = None) -> int:
    """Processes for the prediction passes (a fold on a structure): on a CPU one per one or two
    cores (at most 8), each pass on one core's worth of threads — on a 2-core Intel Xeon one run's 15
    passes over the 3,634 test molecules took 187 s in two such processes against 205 s one after
    another on two threads (worker start-up included); on a GPU, or for fewer than 500
    molecules (a process costs seconds to start), the passes run here."""
    cores = cores or cpu_cores()
    if device.type != "cpu" or molecules < 500 or passes < 2:
        return 1
    return max(1, min(passes, 8, cores if cores <= 8 else cores // 2))


_WORKER_GRAPHS: dict = {}


def _init_pass_worker(df: pd.DataFrame, graph_specs: dict, threads: int) -> None:
    exit_with_parent()
    set_threads(threads)
    for key, (params, structure) in graph_specs.items():    # from the folding cache the caller filled
        _WORKER_GRAPHS[key] = build_graphs(df, params, structure=structure, progress=False)


def _predict_pass(ck: dict, key) -> list[np.ndarray]:
    return predict_graphs(load_model(ck, torch.device("cpu")), _WORKER_GRAPHS[key])


def _pass_predictions(tasks: list, graphs: dict, specs: dict, df: pd.DataFrame, jobs: int, device,
                      progress: bool, desc: str):
    """(member, prediction) of every task (member, checkpoint, graphs key), in any order: here, or in
    ``jobs`` spawned processes that each build the graphs once from ``specs`` (key → graph params,
    structure) and the molecules ``df``."""
    bar = tqdm(total=len(tasks), desc=desc, unit="pass", disable=not progress)
    if jobs <= 1:
        for i, ck, key in tasks:
            yield i, predict_graphs(load_model(ck, device), graphs[key], device=device)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_pass_worker,
                                 initargs=(df, specs, max(1, cpu_cores() // jobs))) as ex:
            futs = {ex.submit(_predict_pass, {k: ck[k] for k in ("config", "state_dict")}, key): i
                    for i, ck, key in tasks}
            for fu in as_completed(futs):
                yield futs[fu], fu.result()
                bar.update()
    bar.close()


# ---------------------------------------------------------------- blending
def _oof_matrix(run: Run, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The run's OOF predictions for ``df``'s molecules and the fold each was held out in."""
    z = np.load(run.path / "oof.npz", allow_pickle=True)
    pred = z["pred_tta"] if "pred_tta" in z.files else z["pred"]      # blend what the submission predicts
    pos = {i: k for k, i in enumerate(z["ids"])}
    missing = [i for i in df["id"] if i not in pos]
    if missing:
        raise RuntimeError(f"{run.path}/oof.npz lacks {len(missing)} training ids (e.g. {missing[0]}): retrain the run")
    rows = [pos[i] for i in df["id"]]
    return pred[rows], z["fold"][rows]


def held_out_split(run: Run) -> frozenset:
    """The molecules each of ``run``'s folds held out, from its ``oof.npz``: a set of sets of ids, so two
    runs compare equal when they split the molecules alike, however their folds are numbered."""
    path = run.path / "oof.npz"
    if not path.is_file():
        raise NoModelsError(f"{path} missing; rerun `make train` to complete the run")
    with np.load(path, allow_pickle=True) as z:
        ids, fold = z["ids"], z["fold"]
    return frozenset(frozenset(ids[fold == f].tolist()) for f in np.unique(fold))


def check_same_grouping(runs: list[Run]) -> None:
    """Refuse to blend runs validated under different fold groupings (``train.similarity``) or on
    different fold splits (``train.folds``, ``train.fold_seed``, which defaults to ``seed``), or runs whose
    folds held out different molecules all the same (their ``oof.npz``: other training data, or folds
    drawn by another version of the code). A looser
    grouping lets near-duplicates of training molecules into validation, so its OOF reads lower and
    the fitted weights would favour it for a reason the test set does not share. Other splits flatter
    the blend itself: each molecule's OOF predictions then come from models trained on different
    molecules, whose errors cancel more than those of the fold-averaged models that predict the test
    set (measured: a BiLSTM + BiGRU pair read 0.0012–0.0015 lower with the GRU on another split)."""
    settings = {r.name: fold_settings(r.config) for r in runs}           # (folds, fold seed, similarity)
    if len({sim for _, _, sim in settings.values()}) > 1:
        listed = ", ".join(f"{n} (similarity {sim:g})" for n, (_, _, sim) in settings.items())
        raise BlendError(f"cannot blend runs validated under different CV groupings: {listed}. Their OOF "
                         "errors are not comparable; blend runs of one grouping (--runs) or move the others "
                         "out of models/")
    if len({(k, seed) for k, seed, _ in settings.values()}) > 1:
        listed = ", ".join(f"{n} ({k} folds, fold seed {seed})" for n, (k, seed, _) in settings.items())
        raise BlendError(f"cannot blend runs validated on different fold splits: {listed}. Their blend's OOF "
                         "would read better than its test predictions; train members with the same train.folds "
                         "and train.fold_seed (a run with another seed keeps the others' folds when train.fold_seed "
                         "names their fold seed), or blend one split's runs (--runs)")
    splits = {r.name: held_out_split(r) for r in runs}
    first = runs[0].name
    other = [n for n, split in splits.items() if split != splits[first]]
    if other:
        raise BlendError(f"cannot blend runs whose folds held out different molecules: {', '.join(other)} against "
                         f"{first} (the same folds, fold seed and similarity in their configs, so other training "
                         "data or folds drawn by another version of the code). Their blend's OOF would read better "
                         "than its test predictions; retrain the older runs, or blend one split's runs (--runs)")


def blendable_runs(names: list[str] | None = None, models_dir: Path | str | None = None,
                   folds: list[int] | None = None) -> list[Run]:
    """``load_runs`` + ``check_same_grouping`` for the commands: what stops them exits with its message."""
    try:
        runs = load_runs(names, models_dir, folds)
        check_same_grouping(runs)
    except (NoModelsError, BlendError) as e:
        raise SystemExit(str(e))
    return runs


def fit_blend(oofs: list[np.ndarray], y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-target weights [n_runs, 5] ≥ 0 summing to 1 that minimise the OOF RMSE of each target."""
    n = len(oofs)
    W = np.zeros((n, len(TARGETS)))
    for c in range(len(TARGETS)):
        P = np.stack([o[..., c][mask] for o in oofs], 1)
        t = y[..., c][mask]
        if n == 1:
            W[0, c] = 1.0
            continue
        # MSE(w) = w'Qw - 2 q'w + const; members' OOFs are close, so the differences between
        # weightings are ~1e-5 of the MSE: give SLSQP the exact gradient and a tolerance below that
        Q, q = P.T @ P / len(t), P.T @ t / len(t)
        res = minimize(lambda w: w @ Q @ w - 2 * q @ w, np.full(n, 1.0 / n), jac=lambda w: 2 * (Q @ w - q),
                       method="SLSQP", bounds=[(0.0, 1.0)] * n, options=dict(ftol=1e-15, maxiter=500),
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}])
        w = np.clip(res.x, 0, None)
        W[:, c] = w / w.sum()
    return W


def blend(oofs: list[np.ndarray], W: np.ndarray) -> np.ndarray:
    """Per-target weighted sum of the members' predictions ([..., 5] arrays, W [n_runs, 5])."""
    return sum(W[i] * o for i, o in enumerate(oofs))


def fit_floors(pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> list[float | None]:
    r"""Per target, the floor :math:`g` that minimises the RMSE of :math:`\max(p, g)` over the masked positions,
    or None where no floor lowers it.

    With the predictions sorted, :math:`p_{(1)} \le \dots \le p_{(n)}`, a floor that lifts exactly the :math:`k`
    smallest costs :math:`\sum_{i \le k} (g - y_{(i)})^2 + \sum_{i > k} (p_{(i)} - y_{(i)})^2`, a parabola in
    :math:`g` on :math:`[p_{(k)}, p_{(k+1)}]` with its minimum at the mean of those :math:`k` labels: every
    :math:`k` is scored at once from cumulative sums, so the floor is exact, not a grid point."""
    out = []
    for c in range(y.shape[-1]):
        p, t = pred[..., c][mask].astype(np.float64), y[..., c][mask].astype(np.float64)
        if not len(p):
            out.append(None)
            continue
        o = np.argsort(p, kind="stable")
        p, t = p[o], t[o]
        k = np.arange(1, len(p) + 1)
        sy, syy = np.cumsum(t), np.cumsum(t * t)
        upper = np.append(p[1:], np.inf)                         # the floor stays below the next prediction
        g = np.clip(sy / k, p, upper)
        rest = np.cumsum(((p - t) ** 2)[::-1])[::-1]             # rest[j]: error of positions j.. unlifted
        cost = k * g * g - 2 * g * sy + syy + np.append(rest[1:], 0.0)
        j = int(np.argmin(cost))
        out.append(float(g[j]) if cost[j] < rest[0] * (1 - 1e-12) else None)
    return out


def apply_floors(pred: np.ndarray, floors: list[float | None] | dict[str, float | None] | None) -> np.ndarray:
    """``pred`` ([..., 5]) with each target raised to its floor (None: unchanged). ``floors`` is
    :func:`fit_floors`'s list, in :data:`TARGETS` order, or :func:`blend_report`'s dict by target."""
    if not floors:
        return pred
    if isinstance(floors, dict):
        floors = [floors.get(t) for t in TARGETS]
    lo = np.array([-np.inf if f is None else f for f in floors], dtype=pred.dtype)
    return np.maximum(pred, lo)


def nested_blend(oofs: list[np.ndarray], y: np.ndarray, mask: np.ndarray,
                 folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend predictions whose weights never saw the molecule they are applied to: the molecules
    of each fold get the weights fitted on the other folds' OOF. Returns that blend and the same
    blend raised to the floors :func:`fit_floors` fits on the other folds' blend (one weight fit per
    fold serves both). Scoring these removes the optimism of fitting the weights (and floors) on the
    OOF they are scored on."""
    out, floored = np.zeros_like(oofs[0]), np.zeros_like(oofs[0])
    for f in np.unique(folds):
        va = folds == f
        train = [o[~va] for o in oofs]
        W = fit_blend(train, y[~va], mask[~va])
        out[va] = blend([o[va] for o in oofs], W)
        floored[va] = apply_floors(out[va], fit_floors(blend(train, W), y[~va], mask[~va]))
    return out, floored


def blend_report(names: list[str] | None = None, runs: list[Run] | None = None,
                 df: pd.DataFrame | None = None, positions: tuple[int, int] | None = None,
                 folds: list[int] | None = None) -> dict:
    """OOF MCRMSE (3 scored columns, SN_filter=1) of every run and of the fitted blend; with
    several runs also ``blend_mcrmse_nested``, the blend scored with weights fitted on other folds.
    ``positions`` ``(start, end)``: every score, weight and floor on the scored positions in that
    window only (e.g. the positions a ``train.label_positions`` run never saw labelled). ``folds``:
    all of it on the molecules those folds held out only, so that runs trained on some folds
    (``train.only_folds``) compare and blend on what they predicted; the nested blend then fits
    each of those folds' weights on the others among them."""
    runs = runs or load_runs(names, folds=folds)
    check_same_grouping(runs)
    df = load_train() if df is None else df
    good = (df["SN_filter"] == 1).to_numpy()
    df = df[good].reset_index(drop=True)
    if folds is not None:
        with np.load(runs[0].path / "oof.npz", allow_pickle=True) as z:
            held = set(z["ids"][np.isin(z["fold"], list(folds))].tolist())
        df = df[df["id"].isin(held)].reset_index(drop=True)
    L = int(df["seq_scored"].max())
    y = np.zeros((len(df), 130, len(TARGETS)), dtype=np.float32)
    mask = np.zeros((len(df), 130), dtype=bool)
    for k, r in enumerate(df.to_dict("records")):
        s = int(r["seq_scored"])
        y[k, :s] = np.stack([r[t] for t in TARGETS], 1)
        mask[k, :s] = True
    if positions is not None:
        positions = parse_window(positions)
        window = np.zeros(mask.shape[1], dtype=bool)
        window[positions[0]:positions[1]] = True
        mask &= window
        if not mask.any():
            raise ConfigError(f"positions {positions[0]}:{positions[1]}: no scored position there (scored: 0:{L})")
    oofs, held_in = map(list, zip(*[_oof_matrix(r, df) for r in runs]))
    for r, o, f in zip(runs, oofs, held_in):
        gap = sorted(set(f[~np.isfinite(o).all((1, 2))].tolist()))          # folds a partial run did not train
        if gap:
            raise BlendError(f"{r.path}/oof.npz has no predictions for the molecules of fold(s) {gap}: the run did "
                             "not train them; score it on the folds it trained (--folds)")
    W = fit_blend(oofs, y, mask)
    fitted = blend(oofs, W)
    floors = fit_floors(fitted, y, mask)
    floored = apply_floors(fitted, floors)
    members = {r.name: mcrmse(o[mask], y[mask]) for r, o in zip(runs, oofs)}
    rep = dict(members=members, weights={r.name: dict(zip(TARGETS, map(float, W[i]))) for i, r in enumerate(runs)},
               blend_mcrmse=mcrmse(fitted[mask], y[mask]),
               blend_rmse=dict(zip(TARGETS, np.sqrt(((fitted[mask] - y[mask]) ** 2).mean(0)).tolist())),
               floors=dict(zip(TARGETS, floors)), blend_mcrmse_floored=mcrmse(floored[mask], y[mask]),
               n_molecules=int(len(df)), max_scored=L)
    if positions is not None:
        rep["positions"] = [positions[0], min(positions[1], L)]
    if len(runs) > 1 and len(np.unique(held_in[0])) > 1:   # weights fitted on the other folds (one split: check_same_grouping)
        nested, nested_floored = nested_blend(oofs, y, mask, held_in[0])
        rep["blend_mcrmse_nested"] = mcrmse(nested[mask], y[mask])
        rep["blend_mcrmse_nested_floored"] = mcrmse(nested_floored[mask], y[mask])
    return rep


def ensemble_predict(runs: list[Run], df: pd.DataFrame, tta: bool = True, weights: dict | None = None,
                     progress: bool = True, jobs: int | None = None, keep: bool = False,
                     floors: list | dict | None = None) -> list[np.ndarray]:
    """Blend of the runs' fold-averaged predictions (``weights``: run → target → w; default OOF-fitted),
    raised to ``floors`` (:func:`apply_floors`; ``make submit`` passes :func:`blend_report`'s).

    Every fold of every run predicts every structure (with ``tta``: :func:`tta_structures`), each
    such pass on graphs built once per feature set; ``jobs`` processes share the passes
    (default :func:`prediction_jobs`). With ``keep`` (``make submit``) a fold's mean over the
    structures is kept beside its checkpoint (:func:`~openvaccine.train.save_fold_prediction`) and
    taken from there when already made, by an earlier submission or as a student's pseudo-labels."""
    if weights is None:
        weights = blend_report(runs=runs)["weights"] if len(runs) > 1 else {runs[0].name: dict.fromkeys(TARGETS, 1.0)}
    members = [(r, np.array([weights[r.name][t] for t in TARGETS], dtype=np.float32)) for r in runs]
    members = [(r, w) for r, w in members if w.any()]
    data_fp = data_fingerprint(df) if keep else None
    graphs, specs, tasks, folds, made = {}, {}, [], {}, {}
    for i, (r, _) in enumerate(members):
        structures = tta_structures(r.graph) if tta else ["given"]
        for ck in r.checkpoints:
            path = fold_path(r.path, ck["fold"])
            folds[i, ck["fold"]] = (path, structures)
            kept = load_fold_prediction(path, structures, data_fp) if keep else None
            if kept is not None:
                made[i, ck["fold"]] = kept
                continue
            for v in structures:
                key = (feature_key(r.graph), v)
                if key not in graphs:
                    graphs[key] = build_graphs(df, r.graph, structure=v, progress=progress)
                    specs[key] = (r.graph, v)
                tasks.append(((i, ck["fold"]), ck, key))
    device = get_device()
    jobs = jobs or prediction_jobs(device, len(tasks), len(df))
    what = members[0][0].name if len(members) == 1 else f"{len(members)} runs"
    if made and progress:
        print(f"{what}: {len(made)} of {len(folds)} folds' predictions kept from before")
    sums, counts = {}, dict.fromkeys(folds, 0)
    for i, p in _pass_predictions(tasks, graphs, specs, df, jobs, device, progress,
                                  f"{what}: folds × structures" + (f" ({jobs} processes)" if jobs > 1 else "")):
        sums[i] = p if i not in sums else [a + b for a, b in zip(sums[i], p)]
        counts[i] += 1
    for i, s in sums.items():                           # each fold's mean over its structures
        made[i] = [a / counts[i] for a in s]
        if keep:
            save_fold_prediction(*folds[i], data_fp, made[i])
    total = None
    for i, (r, w) in enumerate(members):
        fold_means = [made[i, ck["fold"]] for ck in r.checkpoints]
        p = [np.mean(x, 0) * w for x in zip(*fold_means)]
        total = p if total is None else [a + b for a, b in zip(total, p)]
    return [apply_floors(p, floors) for p in total]


# ---------------------------------------------------------------- submission
def submission_frame(df: pd.DataFrame, preds: list[np.ndarray]) -> pd.DataFrame:
    ids = np.concatenate([[f"{i}_{k}" for k in range(len(p))] for i, p in zip(df["id"], preds)])
    out = pd.DataFrame(np.concatenate(preds), columns=TARGETS)
    out.insert(0, "id_seqpos", ids)
    return out


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Raise ValueError saying what is wrong unless ``sub`` is a valid Kaggle submission."""
    if list(sub.columns) != SUBMISSION_COLUMNS:
        raise ValueError(f"submission columns {list(sub.columns)} != {SUBMISSION_COLUMNS}")
    if len(sub) != len(sample):
        raise ValueError(f"submission has {len(sub)} rows, sample_submission.csv has {len(sample)}")
    diff = np.nonzero(sub["id_seqpos"].to_numpy() != sample["id_seqpos"].to_numpy())[0]
    if len(diff):
        k = diff[0]
        raise ValueError(f"id_seqpos differs from sample_submission.csv at row {k + 2}: "
                         f"{sub['id_seqpos'].iloc[k]!r} != {sample['id_seqpos'].iloc[k]!r} ({len(diff)} rows differ)")
    vals = sub[TARGETS].to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"non-finite {TARGETS[c]} at row {r + 2} ({sub['id_seqpos'].iloc[r]}); {int(bad.sum())} in all")


def write_submission(sub: pd.DataFrame, sample: pd.DataFrame, out: Path) -> Path:
    """Validate, then write atomically (a failure leaves any previous file untouched)."""
    sub = sub.set_index("id_seqpos").reindex(sample["id_seqpos"]).reset_index()
    validate_submission(sub, sample)
    with atomic_path(out) as tmp:
        sub.to_csv(tmp, index=False, float_format="%.6f")
        validate_submission(pd.read_csv(tmp), sample)
    return out


def make_submission(names: list[str] | None = None, out: str | Path | None = None, tta: bool = True,
                    models_dir: Path | str | None = None, train: pd.DataFrame | None = None,
                    test: pd.DataFrame | None = None, sample: pd.DataFrame | None = None) -> Path:
    """Blend every complete run, predict the test set and write a validated submission."""
    t0 = time.perf_counter()
    set_threads(None)
    runs = blendable_runs(names, models_dir)
    rep = blend_report(runs=runs, df=train)
    print("OOF MCRMSE (SN_filter=1): " + ", ".join(f"{k} {v:.4f}" for k, v in rep["members"].items())
          + f" → blend {rep['blend_mcrmse']:.4f}"
          + (f" (weights fitted on other folds: {rep['blend_mcrmse_nested']:.4f})" if "blend_mcrmse_nested" in rep else "")
          + f", with per-target floors {rep['blend_mcrmse_floored']:.4f}"
          + (f" ({rep['blend_mcrmse_nested_floored']:.4f})" if "blend_mcrmse_nested_floored" in rep else ""))
    test = load_test() if test is None else test
    sample = load_sample_submission() if sample is None else sample
    preds = ensemble_predict(runs, test, tta=tta, weights=rep["weights"], keep=True, floors=rep["floors"])
    sub = submission_frame(test, preds)
    out = Path(out) if out else SUBMISSIONS_DIR / "submission.csv"
    write_submission(sub, sample, out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    copy = out.with_name(f"submission-{stamp}.csv")
    with atomic_path(copy) as tmp:
        shutil.copyfile(out, tmp)
    meta = dict(runs=[r.name for r in runs], tta=tta, blend=rep, seconds=time.perf_counter() - t0, file=str(out))
    (out.parent / "submission.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out} ({len(sub)} rows) and {copy.name} in {meta['seconds']:.0f} s")
    return out


# ---------------------------------------------------------------- new sequences
def read_sequences(path: str | Path) -> pd.DataFrame:
    """FASTA, or CSV/JSON/JSON-lines with ``id,sequence[,structure]``; validated, T→U, upper-case."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text()
    recs = []
    if path.suffix.lower() in (".fa", ".fasta", ".fna", ".fas") or text.lstrip().startswith(">"):
        cur = None
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                cur = dict(id=line[1:].split()[0] if line[1:].split() else "", sequence="", _row=lineno)
                recs.append(cur)
            elif cur is None:
                raise DataError(f"{path}: row {lineno}: sequence before the first '>' header")
            elif set(line) <= set(".()[]{}<>"):
                cur["structure"] = cur.get("structure", "") + line
            else:
                cur["sequence"] += line
    elif path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        recs = [dict(r, _row=k + 2) for k, r in enumerate(df.to_dict("records"))]
    else:
        try:
            obj = json.loads(text)
            obj = obj if isinstance(obj, list) else [obj]
        except json.JSONDecodeError:
            obj = [json.loads(l) for l in text.splitlines() if l.strip()]
        recs = [dict(r, _row=k + 1) for k, r in enumerate(obj)]
    if not recs:
        raise DataError(f"{path}: no records")
    seen, rows = {}, []
    for r in recs:
        rid = str(r.get("id", "")).strip()
        where = f"{path}: record {r['_row']} (id {rid or '?'})"
        if not rid:
            raise DataError(f"{where}: field 'id': missing or empty")
        if rid in seen:
            raise DataError(f"{where}: field 'id': duplicate of record {seen[rid]}")
        seen[rid] = r["_row"]
        if "sequence" not in r:
            raise DataError(f"{where}: missing field 'sequence'")
        seq, changed = normalise_sequence(str(r["sequence"]).strip(), where)
        if changed:
            warnings.warn(f"{where}: field 'sequence' normalised (lowercase/T → ACGU)", stacklevel=2)
        st = str(r.get("structure") or "").strip()
        if st:
            if len(st) != len(seq):
                raise DataError(f"{where}: field 'structure': length {len(st)} != sequence length {len(seq)}")
            pair_table(st, where)
        rows.append(dict(id=rid, sequence=seq, structure=st or None, seq_length=len(seq)))
    return pd.DataFrame(rows)


def predict_file(inp: str | Path, out: str | Path, runs: list[str] | None = None,
                 window: str | tuple[int, int] | None = None,
                 plot_dir: str | Path | None = None, progress: bool = True,
                 models_dir: Path | str | None = None, train: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-base predictions for new sequences plus a per-molecule summary (``<out>_summary.csv``); with
    ``window`` (``"START:END"`` or a pair, checked by :func:`~openvaccine.config.parse_window`) its means and sums
    over those positions too."""
    from .folding import fold_cached, loop_types
    from .graphs import fold_params
    t0 = time.perf_counter()
    lo, hi = parse_window(window) if window is not None else (None, None)
    set_threads(None)
    df = read_sequences(inp)
    rs = blendable_runs(runs, models_dir)        # before folding: the blend weights need one grouping
    # fold what is missing (cached); the method (global / local window) is reported per molecule
    folds = fold_cached(list(df["sequence"]), fold_params(rs[0].graph), progress=progress)
    df["structure_source"] = ["given" if isinstance(s, str) and s else "mfe" for s in df["structure"]]
    df["structure"] = [s if isinstance(s, str) and s else f.structure for s, f in zip(df["structure"], folds)]
    df["predicted_loop_type"] = [loop_types(s) for s in df["structure"]]
    df["folding"] = [f.method for f in folds]
    rep = blend_report(runs=rs, df=train)        # as make submit: the blend's weights and floors (one run too)
    preds = ensemble_predict(rs, df, tta=False, weights=rep["weights"], progress=progress, floors=rep["floors"])
    rows = []
    for r, p in zip(df.to_dict("records"), preds):
        t = pd.DataFrame(p, columns=TARGETS)
        t.insert(0, "base", list(r["sequence"]))
        t.insert(0, "seqpos", np.arange(len(p)))
        t.insert(0, "id", r["id"])
        rows.append(t)
    per_base = pd.concat(rows, ignore_index=True)
    summ = []
    for r, p in zip(df.to_dict("records"), preds):
        s = dict(id=r["id"], length=len(p), structure_source=r["structure_source"], folding=r["folding"])
        s.update({f"mean_{t}": float(p[:, c].mean()) for c, t in enumerate(TARGETS)})
        s.update({f"sum_{t}": float(p[:, c].sum()) for c, t in enumerate(TARGETS)})
        if lo is not None:
            w = p[max(lo, 0):min(hi, len(p))]
            s["window"] = f"{lo}:{hi}"
            s.update({f"window_mean_{t}": float(w[:, c].mean()) if len(w) else float("nan") for c, t in enumerate(TARGETS)})
            s.update({f"window_sum_{t}": float(w[:, c].sum()) for c, t in enumerate(TARGETS)})
        summ.append(s)
    summary = pd.DataFrame(summ)
    out = Path(out)
    sum_path = out.with_name(out.stem + "_summary.csv")
    for frame, path in ((per_base, out), (summary, sum_path)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.5f")
    if plot_dir:
        plot_predictions(df, preds, Path(plot_dir))
    if progress:
        print(f"wrote {out} ({len(per_base)} bases) and {sum_path.name} for {len(df)} molecules "
              f"in {time.perf_counter() - t0:.1f} s; folding: " + ", ".join(sorted(set(df['folding']))))
    return summary


def plot_predictions(df: pd.DataFrame, preds: list[np.ndarray], plot_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r, p in zip(df.to_dict("records"), preds):
        fig, ax = plt.subplots(figsize=(min(3 + len(p) / 25, 40), 3.5))
        for c, t in enumerate(TARGETS):
            ax.plot(p[:, c], lw=1, label=t)
        ax.set_xlabel("position"); ax.set_ylabel("predicted"); ax.set_title(r["id"])
        ax.legend(fontsize=7, ncol=5)
        fig.tight_layout()
        path = plot_dir / f"{''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in r['id'])}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
