"""K-fold training with folds grouped by sequence similarity.

``train_run(cfg)`` trains ``cfg.train.folds`` models, saves each fold's best checkpoint (with its
config and the fingerprints of the data and features) under ``models/<run>/``, the out-of-fold
predictions, and a CV report (``cv.json`` + ``cv.md``). Rerunning an interrupted run resumes at
the first unfinished fold.

The CV number is the competition's MCRMSE over ``reactivity``, ``deg_Mg_pH10`` and
``deg_Mg_50C`` on the scored positions of the validation molecules with ``SN_filter`` = 1.
"""
from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from . import SCORED, SCORED_IDX, TARGETS
from .config import ROOT, apply_overrides, atomic_path, fingerprint, without_later_options
from .data import data_fingerprint, load_test, load_train
from .graphs import (build_graphs, feature_dims, feature_key, graph_params, graph_signature, reverse_graph,
                     shifted_graph, tta_structures)
from .models import build_model, model_signature
from .pretrain import cached_encoder, load_encoder, pretrain_key, pretrain_settings

MODELS_DIR = Path(os.environ.get("OPENVACCINE_MODELS", ROOT / "models"))


# ---------------------------------------------------------------- basics
def get_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def cpu_cores() -> int:
    """The CPU cores this process may use (1 when the platform cannot tell)."""
    return os.cpu_count() or 1


def exit_with_parent(poll_s: float = 2.0) -> None:
    """Make this pool worker end when the process that started it ends.

    A ``ProcessPoolExecutor`` worker runs its task to the end even when its parent is killed (``kill PID``
    rather than Ctrl-C, which reaches the whole process group): an hour-long fold would go on training,
    orphaned, beside a rerun of the same run. A daemon thread checks the parent's pid every ``poll_s``
    seconds and exits the worker, unsaved, once it has changed (the orphan's new parent)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def set_threads(n: int | None) -> None:
    torch.set_num_threads(int(n) if n else cpu_cores())


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere PyTorch
    emulates it, slower than float32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_bf16(cfg: dict) -> bool:
    """``train.cpu_bf16``, where this CPU has bfloat16 in hardware (on others the run trains in float32)."""
    return bool(cfg["train"].get("cpu_bf16")) and bf16_native()


def autocast(device: torch.device, bf16: bool = False):
    """Mixed precision: float16 on a GPU (with a gradient scaler in training), bfloat16 on a CPU when
    ``bf16`` (:func:`cpu_bf16`), float32 otherwise. On a 2-core AMD EPYC with AVX512-BF16 a BiLSTM
    member's training step takes 0.62× the time in bfloat16, a BiGRU member's 0.71×."""
    if device.type == "cuda":
        return torch.autocast("cuda")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def new_model(cfg: dict) -> torch.nn.Module:
    """The config's model, untrained, marked with the precision it trains and predicts in on a CPU
    (``model.cpu_bf16``, read by :func:`predict_graphs`; :func:`cpu_bf16`)."""
    model = build_model(cfg, *feature_dims(cfg))
    model.cpu_bf16 = cpu_bf16(cfg)
    return model


def mcrmse(pred: np.ndarray, y: np.ndarray, cols=SCORED_IDX) -> float:
    """Mean over ``cols`` of the column RMSE; ``pred``/``y`` are [positions, 5]."""
    return float(np.mean([np.sqrt(np.mean((pred[:, c] - y[:, c]) ** 2)) for c in cols]))


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------- folds
def similarity_groups(seqs: list[str], threshold: float) -> np.ndarray:
    """Connected components of the graph 'positional identity >= threshold' (same-length pairs)."""
    groups = np.full(len(seqs), -1)
    nxt = 0
    by_len: dict[int, list[int]] = {}
    for k, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(k)
    lut = np.zeros(256, dtype=np.int64)
    for c, v in zip("ACGU", range(4)):
        lut[ord(c)] = v
    for L, idx in by_len.items():
        codes = lut[np.frombuffer("".join(seqs[k] for k in idx).encode(), dtype=np.uint8)].reshape(len(idx), L)
        onehot = np.zeros((len(idx), L * 4), dtype=np.float32)
        onehot[np.arange(len(idx))[:, None], np.arange(L) * 4 + codes] = 1.0
        ident = onehot @ onehot.T / L
        ncomp, lab = connected_components(csr_matrix(ident >= threshold), directed=False)
        groups[idx] = lab + nxt
        nxt += ncomp
    return groups


def make_folds(df: pd.DataFrame, k: int, seed: int, similarity: float) -> np.ndarray:
    """Fold index per row; similar sequences share a fold; folds balanced in size and SN_filter."""
    groups = similarity_groups(list(df["sequence"]), similarity)
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    sizes = {g: int((groups == g).sum()) for g in uniq}
    good = {g: int(((groups == g) & (df["SN_filter"].to_numpy() == 1)).sum()) for g in uniq}
    order = sorted(uniq, key=lambda g: -sizes[g])            # stable: ties keep the shuffled order
    load = np.zeros(k)
    load_good = np.zeros(k)
    fold_of = {}
    for g in order:
        f = int(np.lexsort((load, load_good))[0]) if good[g] else int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
        load_good[f] += good[g]
    return np.array([fold_of[g] for g in groups])


def fold_settings(cfg: dict) -> tuple[int, int, float]:
    """What decides a run's folds besides the data: (``train.folds``, fold seed, ``train.similarity``).
    ``train.fold_seed`` (default: ``seed``) lets runs with other model seeds share folds, as a
    pseudo-label student must with its teachers."""
    t = cfg["train"]
    return int(t["folds"]), int(t.get("fold_seed", cfg.get("seed", 42))), float(t.get("similarity", 0.8))


# ---------------------------------------------------------------- loss
def usable_rows(df: pd.DataFrame, tcfg: dict) -> np.ndarray:
    """The training molecules a run learns from: ``SN_filter`` = 1, or ``signal_to_noise`` >= ``train.min_sn``."""
    return (df["SN_filter"].to_numpy() == 1) | (df["signal_to_noise"].to_numpy() >= float(tcfg.get("min_sn", 1.0)))


def molecule_weight(sn: torch.Tensor, tcfg: dict) -> torch.Tensor:
    """Loss weight of a labelled molecule from its signal_to_noise: ``0.5 log(1.1 + SN)`` or 1."""
    if tcfg.get("sn_weight", "log") == "log":
        return 0.5 * torch.log(1.1 + sn.clamp(min=0))
    return torch.ones_like(sn)


def graph_weights(batch, tcfg: dict) -> torch.Tensor:
    if "loss_w" in batch:                   # set explicitly on every graph (pseudo-labelled training)
        return batch.loss_w
    return molecule_weight(batch.sn, tcfg)


def target_weights(tcfg: dict) -> list[float] | None:
    """The loss weight of each of the five targets (``TARGETS`` order) from ``train.target_weights``, a
    mapping target → weight (targets left out weigh 1), or ``None`` for equal weights (null, the default).
    Unknown targets, negative weights or no weight on a scored target are errors."""
    tw = tcfg.get("target_weights")
    if tw is None:
        return None
    if not isinstance(tw, dict):
        raise ValueError(f"train.target_weights must map targets to weights, e.g. {{deg_pH10: 0.5}}, got {tw!r}")
    unknown = sorted(set(tw) - set(TARGETS))
    if unknown:
        raise ValueError(f"train.target_weights: unknown target(s) {unknown} (targets: {', '.join(TARGETS)})")
    w = []
    for c in TARGETS:
        v = tw.get(c, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"train.target_weights.{c} must be a number >= 0, got {v!r}")
        w.append(float(v))
    if not any(w[i] > 0 for i in SCORED_IDX):
        raise ValueError(f"train.target_weights: every scored target ({', '.join(SCORED)}) weighs 0")
    return w


def weighted_mcrmse_loss(pred, batch, tcfg: dict) -> torch.Tensor:
    r"""Column-wise RMSE over scored positions, weighted per molecule (and per base), averaged over the five
    targets, or weighted by ``train.target_weights`` :math:`v_c`:
    :math:`\sum_c v_c\,\mathrm{RMSE}_c / \sum_c v_c`."""
    is_base = batch.is_base
    y, mask = batch.y[is_base], batch.score_mask[is_base]
    w = graph_weights(batch, tcfg)[batch.batch[is_base]][:, None].expand_as(y)
    if tcfg.get("error_weight", False):
        w = w / (1.0 + batch.err[is_base])
    if "base_w" in batch:                   # per-base weights (teacher-labelled tails: train.pseudo_tail)
        w = w * batch.base_w[is_base][:, None]
    w = w * mask[:, None]
    se = (pred.float() - y) ** 2
    col = (w * se).sum(0) / w.sum(0).clamp(min=1e-8)
    rmse = torch.sqrt(col + 1e-8)
    tw = target_weights(tcfg)
    if tw is None:
        return rmse.mean()
    v = rmse.new_tensor(tw)
    return (v * rmse).sum() / v.sum()


# ---------------------------------------------------------------- predict
def size_batches(graphs, batch_size: int = 64, max_pairs: int = 64 * 160 ** 2) -> list[list]:
    """Consecutive runs of ``graphs`` (order kept) of at most ``batch_size`` molecules whose padded
    base-pair grid, molecules × longest², stays within ``max_pairs``: the sequence attention holds
    [batch, n, n] tensors, so long user sequences go a few (or one) at a time. A single molecule
    always forms a batch; competition-sized molecules (≤ 160 nt) keep full batches."""
    out, cur, longest = [], [], 0
    for g in graphs:
        n = int(g.seq_len)
        m = max(longest, n)
        if cur and (len(cur) == batch_size or (len(cur) + 1) * m * m > max_pairs):
            out.append(cur)
            cur, m = [], n
        cur.append(g)
        longest = m
    return out + ([cur] if cur else [])


@torch.no_grad()
def predict_graphs(model, graphs, batch_size: int = 64, device=None) -> list[np.ndarray]:
    """Per-molecule [length, 5] predictions, in the order of ``graphs``.

    The molecules are batched shortest first: a batch of equal lengths needs no padding and its
    recurrent layer no packing (the test set's 107- and 130-nt molecules alternate; with them mixed
    the CPU's LSTM falls back from oneDNN to stepping through the bases, 1.4–1.6× slower)."""
    device = device or next(model.parameters()).device
    model.eval()
    order = sorted(range(len(graphs)), key=lambda i: int(graphs[i].seq_len))
    out = [None] * len(graphs)
    done = 0
    for chunk in size_batches([graphs[i] for i in order], batch_size):
        batch = Batch.from_data_list(chunk).to(device)
        with autocast(device, getattr(model, "cpu_bf16", False)):
            p = model(batch).float().cpu().numpy()
        for k, a in enumerate(np.split(p, np.cumsum(batch.seq_len.cpu().numpy())[:-1])):
            out[order[done + k]] = a
        done += len(chunk)
    return out


def tta_predict(models, graphs_by_structure: dict, device=None, progress: bool = False,
                desc: str = "predict") -> list[np.ndarray]:
    """Mean prediction over ``models`` and structures (``{structure: graphs}``, same molecules in
    the same order in every list): test-time augmentation. ``progress``: a bar over the
    model × structure passes."""
    passes = [(graphs, m) for graphs in graphs_by_structure.values() for m in models]
    total = None
    for graphs, m in tqdm(passes, desc=desc, unit="pass", disable=not progress):
        p = predict_graphs(m, graphs, device=device)
        total = p if total is None else [a + b for a, b in zip(total, p)]
    return [a / len(passes) for a in total]


def scored_rows(pred: np.ndarray, g) -> tuple[np.ndarray, np.ndarray]:
    """A molecule's per-base prediction and target rows at its scored positions (codon nodes, which
    follow the bases in the graph, are never scored)."""
    m = g.score_mask.numpy()[: len(pred)]
    return pred[m], g.y.numpy()[: len(pred)][m]


def score_predictions(preds: list[np.ndarray], graphs) -> tuple[float, np.ndarray]:
    """MCRMSE (3 scored columns) and per-target RMSE (5), pooled over scored positions."""
    P, Y = (np.concatenate(x) for x in zip(*(scored_rows(p, g) for p, g in zip(preds, graphs))))
    per = np.sqrt(((P - Y) ** 2).mean(0))
    return mcrmse(P, Y), per


# ---------------------------------------------------------------- training
def optimiser(params, lr: float, weight_decay: float, total_steps: int):
    """AdamW with a one-cycle cosine learning-rate schedule (10 % warm-up) over ``total_steps``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total_steps),
                                                pct_start=0.1, anneal_strategy="cos")
    return opt, sched


def optimiser_step(loss: torch.Tensor, params: list, opt, sched, scaler) -> None:
    """Backward pass (loss-scaled under AMP), gradient norm clipped at 1, optimiser and schedule step."""
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(opt)
    scaler.update()
    sched.step()


# ``train`` options added after runs were trained, at their "off" value (left out of fingerprints)
LATER_TRAIN_OPTIONS_OFF = {"ema": 0, "cpu_bf16": False, "label_positions": None, "target_weights": None,
                          "reverse_p": 0, "pseudo_tail": 0, "pos_shift": 0,
                          "pseudo_confidence": 0}
# ``train`` options that say how a run is carried out, not what its models are (never fingerprinted)
RUN_ONLY_OPTIONS = ("only_folds", "jobs")


def fingerprints(cfg: dict, df: pd.DataFrame) -> dict:
    """Fingerprints of what shapes a fold's model: the config (less its name and how the run is carried
    out, ``train.only_folds`` and ``train.jobs``, so a fold-0 trial resumes into the full run and folds
    trained side by side are those of one run; ``train``, ``model`` and ``graph`` options added later
    are left out at their "off" value), the training data and the features. Every run and fold computes them
    first, so a bad ``train.target_weights`` stops it here, before anything trains."""
    target_weights(cfg.get("train", {}))
    reverse_prob(cfg.get("train", {}))
    max_shift(cfg.get("train", {}))
    tail_weight(cfg.get("train", {}))
    confidence_strength(cfg.get("train", {}))
    p = graph_params(cfg)
    c = {k: v for k, v in cfg.items() if k != "name"}
    c["train"] = without_later_options({k: v for k, v in c.get("train", {}).items() if k not in RUN_ONLY_OPTIONS},
                                       LATER_TRAIN_OPTIONS_OFF)
    c["model"] = model_signature(c.get("model", {}))
    if "graph" in c:
        c["graph"] = graph_signature(c["graph"])
    return dict(config=fingerprint(c),
                data=data_fingerprint(df), features=feature_key(p))


def epoch_graphs(variants: list[list], aug_prob: float, rng: np.random.Generator) -> list:
    """One graph per molecule for this epoch: ``variants[0]`` (the given structure), or with
    probability ``aug_prob`` one of the alternative-structure graphs ``variants[1:]``."""
    if len(variants) == 1 or aug_prob <= 0:
        return variants[0]
    n = len(variants[0])
    pick = np.where(rng.random(n) < aug_prob, rng.integers(1, len(variants), n), 0)
    return [variants[v][k] for k, v in enumerate(pick)]


def reversed_at_random(graphs: list, reverse_p: float, rng: np.random.Generator) -> list:
    """``graphs``, each read from its 3' end (:func:`~.graphs.reverse_graph`) with probability
    ``reverse_p`` (``train.reverse_p``; 0: the graphs as they are, and ``rng`` untouched)."""
    if reverse_p <= 0:
        return graphs
    flip = rng.random(len(graphs)) < reverse_p
    return [reverse_graph(g) if f else g for g, f in zip(graphs, flip)]


def reverse_prob(t: dict) -> float:
    """``train.reverse_p``, checked: a probability."""
    r = t.get("reverse_p") or 0
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
        raise ValueError(f"train.reverse_p must be a probability between 0 and 1, got {r!r}")
    return float(r)


def shifted_at_random(graphs: list, shift: int, rng: np.random.Generator, p: float = 0.5) -> list:
    """``graphs``, each with probability ``p`` given the position features of a longer molecule
    (:func:`~.graphs.shifted_graph`): ``k`` bases, 1 to ``shift`` (``train.pos_shift``), inserted after a
    base drawn among its scored ones (0: the graphs as they are, and ``rng`` untouched)."""
    if shift <= 0:
        return graphs
    out = []
    for g in graphs:
        pick, k = rng.random() < p, int(rng.integers(1, shift + 1))
        scored = torch.nonzero(g.score_mask[:int(g.seq_len)]).flatten()
        end = int(scored[-1]) + 1 if len(scored) else int(g.seq_len)
        seam = int(rng.integers(0, end))
        out.append(shifted_graph(g, seam, k) if pick else g)
    return out


def max_shift(t: dict) -> int:
    """``train.pos_shift``, checked: a whole number of bases >= 0."""
    k = t.get("pos_shift") or 0
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"train.pos_shift must be a whole number of bases >= 0, got {k!r}")
    return k


def tail_weight(t: dict) -> float:
    """``train.pseudo_tail``, checked: a weight >= 0 for the teachers' labels on unlabelled bases, which only
    a student (``train.pseudo_from``) has."""
    w = t.get("pseudo_tail") or 0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        raise ValueError(f"train.pseudo_tail must be a weight >= 0, got {w!r}")
    if w and not t.get("pseudo_from"):
        raise ValueError("train.pseudo_tail labels bases with the teachers' predictions: it needs train.pseudo_from")
    return float(w)


def confidence_strength(t: dict) -> float:
    """``train.pseudo_confidence``, checked: a strength >= 0 (0: off) with which pseudo-labelled molecules
    the teachers disagree on weigh less (:func:`confidence_weights`); it needs two teachers or more."""
    c = t.get("pseudo_confidence") or 0
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
        raise ValueError(f"train.pseudo_confidence must be a strength >= 0, got {c!r}")
    if c and len(t.get("pseudo_from") or []) < 2:
        raise ValueError("train.pseudo_confidence weighs pseudo-labels by how much the teachers disagree: it needs "
                         f"two teachers or more in train.pseudo_from, got {list(t.get('pseudo_from') or [])}")
    return float(c)


def as_variants(graphs) -> list[list]:
    """A list of graphs as one variant; a list of variants as it is."""
    return graphs if graphs and isinstance(graphs[0], list) else [graphs]


class WeightAverage:
    r"""Exponential moving average of a model's weights, updated after every optimiser step:

    .. math::
        \bar\theta \leftarrow d_n \bar\theta + (1 - d_n)\,\theta, \qquad
        d_n = \min\Big(d, \frac{1 + n}{10 + n}\Big)

    at step :math:`n`; the warm-up :math:`d_n` keeps early averages from holding on to the random
    initialisation. Float buffers (batch-norm statistics) are averaged too, integer ones (counters)
    copied. ``model`` is the averaged copy (eval mode).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"train.ema: the decay must lie in (0, 1), got {decay}")
        self.decay, self.n = float(decay), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach(), 1 - d)
            else:
                avg.copy_(cur)


def train_fold(cfg: dict, train_g, val_g, fold: int, device, progress: bool | str = True, pseudo_g=None,
               init_state: dict | None = None, label: str = ""):
    """Train one fold; returns (best_state_dict, best_score, history).

    ``train_g`` is a list of graphs, or a list of variants (lists of graphs of the same molecules
    on different structures, the given one first) for structure augmentation. ``pseudo_g``
    (same forms): pseudo-labelled molecules, of which a random ``train.pseudo_frac`` joins every
    epoch; both kinds then carry their loss weight in ``loss_w``. ``init_state``: a pretrained
    encoder (:mod:`.pretrain`) or a whole model's weights (``train.init_from``) to start from
    instead of a random initialisation. With
    ``train.ema`` (a decay, 0 = off) validation and the returned state use the weights' moving
    average (:class:`WeightAverage`) instead of the last step's weights. ``label`` heads its epoch lines
    (the run's name where several runs' folds train side by side).
    """
    t = cfg["train"]
    set_seed(int(cfg.get("seed", 42)) + fold)
    variants = as_variants(train_g)
    pvariants = as_variants(pseudo_g) if pseudo_g else []
    n_p = int(round(pseudo_frac(t) * len(pvariants[0]))) if pvariants else 0
    aug_rng = np.random.default_rng(int(cfg.get("seed", 42)) + fold)
    aug_prob = float(t.get("aug_prob", 0.5))
    reverse_p = reverse_prob(t)
    shift = max_shift(t)

    def this_epoch() -> list:
        gs = epoch_graphs(variants, aug_prob, aug_rng)
        if n_p:
            pick = aug_rng.choice(len(pvariants[0]), n_p, replace=False)
            gs = gs + epoch_graphs([[pv[i] for i in pick] for pv in pvariants], aug_prob, aug_rng)
        return shifted_at_random(reversed_at_random(gs, reverse_p, aug_rng), shift, aug_rng)
    model = new_model(cfg)                  # its precision mark is copied into the EMA model
    if init_state is not None:
        load_encoder(model, init_state)
    model = model.to(device)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 42)) + fold)
    bs = int(t["batch_size"])
    loader = DataLoader(variants[0], batch_size=bs, shuffle=True, generator=gen)
    epochs = int(t["epochs"])
    per_epoch = -(-(len(variants[0]) + n_p) // bs)
    steps = per_epoch if not t.get("max_steps") else min(per_epoch, int(t["max_steps"]))
    opt, sched = optimiser(params, float(t["lr"]), float(t.get("weight_decay", 0)), epochs * steps)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ema = WeightAverage(model, float(t["ema"])) if t.get("ema") else None
    net = ema.model if ema else model                  # the weights validated and kept
    best, best_state, bad, hist = float("inf"), None, 0, []
    reach = labels_reach(t)
    past = reach and any(bool(g.score_mask[reach:].any()) for g in val_g)      # anything scored past the labels
    windows = (scored_between(val_g, 0, reach), scored_between(val_g, reach)) if past else None
    for ep in range(epochs):
        model.train()
        if len(variants) > 1 or n_p or reverse_p or shift:
            loader = DataLoader(this_epoch(), batch_size=bs, shuffle=True, generator=gen)
        t0 = time.perf_counter()
        run_loss, n = 0.0, 0
        bar = tqdm(loader, total=steps, desc=f"fold {fold} epoch {ep + 1}/{epochs}", leave=False,
                   disable=progress is not True)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            batch = batch.to(device)
            opt.zero_grad(set_to_none=True)
            with autocast(device, model.cpu_bf16):
                pred = model(batch)
            loss = weighted_mcrmse_loss(pred, batch, t)
            optimiser_step(loss, params, opt, sched, scaler)
            if ema:
                ema.update(model)
            run_loss += loss.item()
            n += 1
            bar.set_postfix(loss=f"{run_loss / n:.4f}")
        train_time = time.perf_counter() - t0
        val_pred = predict_graphs(net, val_g, device=device)
        score, per = score_predictions(val_pred, val_g)
        hist.append(dict(epoch=ep + 1, train_loss=run_loss / max(n, 1), val_mcrmse=score,
                         val_rmse={c: float(v) for c, v in zip(TARGETS, per)}, seconds=train_time))
        sides = ""
        if windows:                          # a proxy: the positions trained with labels, and those past them
            hist[-1].update(val_mcrmse_labelled=score_predictions(val_pred, windows[0])[0],
                            val_mcrmse_unlabelled=score_predictions(val_pred, windows[1])[0])
            sides = (f" (before position {reach} {hist[-1]['val_mcrmse_labelled']:.4f},"
                     f" from it {hist[-1]['val_mcrmse_unlabelled']:.4f})")
        if progress:
            tqdm.write(f"{label}fold {fold} epoch {ep + 1}: loss {run_loss / max(n, 1):.4f}  val MCRMSE {score:.4f}{sides}  ({train_time:.1f} s)")
        if improves(score, best):
            best, bad = score, 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= int(t.get("patience", 10)):
                break
    return best_state, best, hist


def load_model(ckpt: dict, device=None):
    """A fold's model in eval mode; it predicts in the precision it was trained in (``cpu_bf16``)."""
    device = device or get_device()
    model = new_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


# ---------------------------------------------------------------- pseudo-labels
def teacher_labels(teachers: list[str], fold: int, fold_index: np.ndarray, data_fp: str, test_df: pd.DataFrame,
                   models_dir: Path, device=None, progress: bool = True,
                   cache_graphs: bool = True) -> tuple[list[np.ndarray], dict]:
    """Pseudo-labels for ``test_df``: the mean over ``teachers`` (run names) of fold ``fold``'s
    test-time-augmented prediction (``cache_graphs=False``: the graphs it needs are built, not cached:
    a fold's training molecules, predicted once per teacher fold).

    Only fold ``fold`` of a teacher is used, and it must have held out exactly ``fold_index``
    (this run's fold) of the same training data: a student trained on these labels for that fold
    never sees, even through its teacher, the molecules it is validated on, so its CV stays honest.
    """
    preds, used = teacher_predictions(teachers, fold, fold_index, data_fp, test_df, models_dir, device, progress,
                                      cache_graphs)
    return [np.mean(x, 0) for x in zip(*preds)], used


def teacher_predictions(teachers: list[str], fold: int, fold_index: np.ndarray, data_fp: str, test_df: pd.DataFrame,
                        models_dir: Path, device=None, progress: bool = True,
                        cache_graphs: bool = True) -> tuple[list[list[np.ndarray]], dict]:
    """Each teacher's prediction of ``test_df`` (one list of per-molecule arrays per teacher, in ``teachers``'
    order), of which :func:`teacher_labels` takes the mean, and the fingerprints of the teacher folds used."""
    preds, used, test_fp = [], {}, data_fingerprint(test_df)
    for name in teachers:
        path, ck = matching_fold(name, fold, fold_index, data_fp, models_dir, "train.pseudo_from")
        p = graph_params(ck["config"])
        structures = tta_structures(p)
        pred = load_fold_prediction(path, structures, test_fp)
        if pred is None:
            by = {v: build_graphs(test_df, p, structure=v, progress=progress, cache=cache_graphs) for v in structures}
            pred = tta_predict([load_model(ck, device)], by, device)
            save_fold_prediction(path, structures, test_fp, pred)
        preds.append(pred)
        used[name] = ck["fingerprints"]
    return preds, used


def teacher_spread(preds: list[list[np.ndarray]], n_scored) -> np.ndarray:
    r"""How much the teachers disagree on each molecule: the root mean square, over its first ``n_scored``
    bases and the three scored targets, of the teachers' standard deviation (``preds``: one list of
    per-molecule [bases, 5] arrays per teacher, as :func:`teacher_predictions` returns them),

    .. math:: d_m = \Big(\frac{1}{3 n_m} \sum_{i < n_m} \sum_{c \in \text{scored}}
              \operatorname{Var}_t\, p^{(t)}_{m,i,c}\Big)^{1/2}.
    """
    if len(preds) < 2:
        raise ValueError(f"teacher spread needs at least two teachers, got {len(preds)}")
    out = []
    for per_teacher, n in zip(zip(*preds), n_scored):
        p = np.stack([q[:int(n)][:, SCORED_IDX] for q in per_teacher]).astype(np.float64)
        out.append(np.sqrt(p.var(0).mean()))
    return np.array(out)


def confidence_weights(spread: np.ndarray, strength: float) -> np.ndarray:
    r"""Per-molecule weights of pseudo-labelled molecules from their teachers' spread :math:`d_m`
    (:func:`teacher_spread`), for ``train.pseudo_confidence`` :math:`c`:

    .. math:: w_m \propto \frac{1}{1 + c\,(d_m / \tilde d)^2}, \qquad \bar w = 1,

    with :math:`\tilde d` the median spread: inverse-variance weights if a label's error variance goes as
    :math:`\tilde d^2 + c\,d_m^2`, a part common to all molecules plus :math:`c` times the teachers' variance.
    The mean weight stays 1, so ``train.pseudo_weight`` still sets how much the pseudo-labels weigh in all;
    ``c = 0``: every molecule 1."""
    spread = np.asarray(spread, dtype=np.float64)
    if strength <= 0 or not len(spread):
        return np.ones(len(spread))
    med = float(np.median(spread))
    w = 1.0 / (1.0 + strength * (spread / med) ** 2) if med > 0 else np.ones(len(spread))
    return w / w.mean()


# ---------------------------------------------------------------- a fold's test predictions, kept
def fold_path(run_dir: Path | str, fold: int) -> Path:
    """Fold ``fold``'s checkpoint in a run's folder: ``<run>/fold<k>.pt``."""
    return Path(run_dir) / f"fold{fold}.pt"


def checkpoint_key(path: Path) -> str:
    """Hash of a fold checkpoint's bytes: a prediction kept for it is stale once the fold is retrained."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def fold_prediction_path(path: Path, structures: list[str], data_fp: str) -> Path:
    """Where the fold checkpoint ``path`` keeps its prediction of the molecules ``data_fp`` averaged over
    ``structures``: ``<run>/predictions/fold<k>-<structures>-<data fingerprint>.npz``."""
    path = Path(path)
    return path.parent / "predictions" / f"{path.stem}-{'+'.join(structures)}-{data_fp}.npz"


def kept_fold_prediction(path: Path, structures: list[str], data_fp: str) -> Path | None:
    """The file of the prediction :func:`save_fold_prediction` kept for this checkpoint, molecules and
    structures, or None (never made, or made by an earlier training of the fold); reads no predictions."""
    f = fold_prediction_path(path, structures, data_fp)
    if not f.is_file():
        return None
    with np.load(f) as z:
        return f if str(z["checkpoint"]) == checkpoint_key(path) else None


def load_fold_prediction(path: Path, structures: list[str], data_fp: str) -> list[np.ndarray] | None:
    """The per-molecule prediction :func:`kept_fold_prediction` finds for this checkpoint, or None."""
    f = kept_fold_prediction(path, structures, data_fp)
    if f is None:
        return None
    with np.load(f) as z:
        return np.split(z["pred"], np.cumsum(z["lengths"])[:-1])


def save_fold_prediction(path: Path, structures: list[str], data_fp: str, pred: list[np.ndarray]) -> Path:
    """Keep fold checkpoint ``path``'s mean prediction over ``structures`` of the molecules ``data_fp``
    (a teacher's labels are the same numbers as its fold's share of ``make submit``: each is made once)."""
    f = fold_prediction_path(path, structures, data_fp)
    with atomic_path(f) as tmp:
        np.savez(tmp, checkpoint=checkpoint_key(path), lengths=np.array([len(q) for q in pred]),
                 pred=np.concatenate(pred).astype(np.float32))
    return f


def matching_fold(name: str, fold: int, fold_index: np.ndarray, data_fp: str, models_dir: Path,
                  option: str) -> tuple[Path, dict]:
    """Fold ``fold``'s checkpoint (path, contents) of the run ``name``, which must have held out exactly
    ``fold_index`` of the same training data (what a student may learn from without its CV leaking:
    ``option`` names the setting that asked, for the error)."""
    path = fold_path(Path(models_dir) / name, fold)
    if not path.is_file():
        raise RuntimeError(f"{option}: run {name!r} has no fold {fold} ({path}); train it first")
    ck = torch.load(path, weights_only=False, map_location="cpu")
    if ck["fingerprints"]["data"] != data_fp or not np.array_equal(np.sort(ck["oof_index"]), np.sort(fold_index)):
        raise RuntimeError(f"{option}: {path} held out other molecules than this run's fold {fold} (other "
                           "train.fold_seed/seed, train.folds, train.similarity or data): it would leak validation rows")
    return path, ck


def start_checkpoint(cfg: dict, fold: int, fold_index: np.ndarray, data_fp: str, models_dir: Path) -> dict | None:
    """``train.init_from``: the checkpoint whose weights fold ``fold`` starts from, the same fold of that
    run (same model and features; it held out the same molecules), or None (a random initialisation)."""
    name = cfg["train"].get("init_from")
    if not name:
        return None
    _, ck = matching_fold(name, fold, fold_index, data_fp, models_dir, "train.init_from")
    if model_signature(ck["config"]["model"]) != model_signature(cfg["model"]) or \
            graph_signature(graph_params(ck["config"])) != graph_signature(graph_params(cfg)):
        raise RuntimeError(f"train.init_from: run {name!r} has another model or other features than this run; "
                           "it can only start a run of the same model and graph settings")
    return ck


def pseudo_frac(t: dict) -> float:
    """The share of the pseudo-labelled molecules that joins each epoch (``train.pseudo_frac`` of the
    ``train`` section ``t``, default 0.25)."""
    return float(t.get("pseudo_frac", 0.25))


def upstream_runs(cfg: dict) -> set[str]:
    """The runs a run needs trained first: its teachers (``train.pseudo_from``) and the run its folds start
    from (``train.init_from``)."""
    t = cfg["train"]
    return set(t.get("pseudo_from") or []) | ({t["init_from"]} if t.get("init_from") else set())


def with_loss_weight(graphs, weights) -> list:
    """Shallow copies of ``graphs`` carrying a per-molecule loss weight ``loss_w``."""
    out = []
    for g, w in zip(graphs, weights):
        h = copy.copy(g)
        h.loss_w = torch.tensor([float(w)])
        out.append(h)
    return out


def with_labels_before(graphs, n: int | None) -> list:
    """Shallow copies of ``graphs`` whose targets count at their first ``n`` positions only (``None``: the
    graphs as they are). ``train.label_positions`` trains on these, so the CV's positions ``n``–67 play the
    part of the 130-nt test molecules' positions 68–90: bases the model reads but never saw a label at."""
    if n is None:
        return graphs
    if int(n) < 1:
        raise ValueError(f"train.label_positions must be a positive number of positions, got {n!r}")
    return scored_between(graphs, 0, int(n))


def scored_between(graphs, a: int, b: int | None = None) -> list:
    """Shallow copies of ``graphs`` whose targets count at positions ``a``..``b-1`` only (``b=None``: to the end)."""
    out = []
    for g in graphs:
        h = copy.copy(g)
        h.score_mask = g.score_mask.clone()
        h.score_mask[:a] = False
        if b is not None:
            h.score_mask[b:] = False
        out.append(h)
    return out


def labels_reach(t: dict) -> int | None:
    """The first position no training label reaches in a proxy run (``train.label_positions``), or None:
    such runs also score each epoch's validation on both sides of it."""
    n = t.get("label_positions")
    return int(n) if n else None


def pseudo_graphs(graphs, labels: list[np.ndarray], n_scored, weight, tail: float = 0.0) -> list:
    """Copies of unlabelled ``graphs`` labelled with ``labels`` on their first ``n_scored`` bases (and, with
    ``tail`` > 0, on the rest at that weight: :func:`with_teacher_tail`), at loss weight ``weight`` (one for
    all, or one per graph)."""
    out = with_loss_weight(graphs, np.broadcast_to(np.asarray(weight, dtype=np.float64), (len(graphs),)))
    for h, y, sc in zip(out, labels, n_scored):
        sc = int(sc)
        h.y = torch.zeros_like(h.y)
        h.y[:sc] = torch.from_numpy(np.asarray(y[:sc], dtype=np.float32))
        h.score_mask = torch.zeros_like(h.score_mask)
        h.score_mask[:sc] = True
    return with_teacher_tail(out, labels, tail) if tail else out


def with_teacher_tail(graphs, labels: list[np.ndarray], weight: float) -> list:
    r"""Shallow copies of ``graphs`` whose bases without a label (``score_mask`` off: a training molecule's
    positions past its 68 labelled ones, or past ``train.label_positions``) take the teacher's label from
    ``labels`` (one [bases, 5] array per graph) at loss weight ``weight`` relative to the molecule's own
    labels (``base_w``, per node: 1 where the molecule was labelled). This teaches the positions the 130-nt
    test molecules are scored on beyond the training labels (68–90) on every training molecule, at no
    extra cost per epoch: the tails already pass through the model."""
    out = []
    for g, lab in zip(graphs, labels):
        h = copy.copy(g)
        tail = ~g.score_mask & g.is_base            # bases come first: the rest are codon nodes
        h.y = g.y.clone()
        h.y[tail] = torch.from_numpy(np.asarray(lab, dtype=np.float32))[tail[:len(lab)]]
        h.score_mask = g.score_mask | tail
        h.base_w = torch.where(tail, torch.tensor(float(weight)), torch.tensor(1.0))
        out.append(h)
    return out


def train_run(cfg: dict, run_name: str | None = None, df: pd.DataFrame | None = None,
              models_dir: Path | str | None = None, progress: bool | str = True,
              test_df: pd.DataFrame | None = None, threads: int | None = None,
              write_report: bool = True) -> dict | None:
    """Train (or resume) every fold of one config; returns the CV report.

    With ``train.jobs`` above 1 (``auto``: see :func:`fold_jobs`) the unfinished folds train side by
    side in processes of their own (:func:`train_folds_in_processes`), then this call reports them.
    ``threads`` overrides ``train.threads`` without changing the fingerprint; ``write_report=False`` (a
    fold's own process) trains and saves the folds without writing the run's OOF file and CV report.

    With ``train.pseudo_from`` (teacher runs), the unlabelled ``test_df`` (default: the
    competition's test set) joins training with labels from the teachers' matching fold. With
    ``train.pretrain``, every fold starts from an encoder pretrained (once, cached) on the inputs
    of ``df`` and ``test_df`` by masked-base reconstruction.
    """
    t = cfg["train"]
    set_threads(threads or t.get("threads"))
    device = get_device()
    run = run_name or cfg.get("name", "run")
    out = Path(models_dir or MODELS_DIR) / run
    bars = progress is True                  # progress="lines": epoch lines only (folds side by side)
    df = load_train() if df is None else df.reset_index(drop=True)
    fps = fingerprints(cfg, df)
    p = graph_params(cfg)
    aug = list(t.get("aug_structures") or [])
    tta = tta_structures(p)
    by_structure = {v: build_graphs(df, p, structure=v, progress=bars)
                    for v in dict.fromkeys(["given"] + aug + tta)}       # each structure built once
    graphs = by_structure["given"]
    alt = [by_structure[v] for v in aug]
    teachers = list(t.get("pseudo_from") or [])
    confidence = confidence_strength(t)
    pretrain = pretrain_settings(cfg)
    if pretrain and t.get("init_from"):
        raise ValueError("train.init_from and train.pretrain: a fold starts from one or the other, not both")
    if teachers or pretrain:                 # unlabelled test molecules, on the training structures
        test_df = load_test() if test_df is None else test_df.reset_index(drop=True)
        test_by = {v: build_graphs(test_df, p, structure=v, progress=bars) for v in dict.fromkeys(["given"] + aug)}
    encoder = None
    if pretrain:
        key = pretrain_key(cfg, fps["features"], [fps["data"], data_fingerprint(test_df)])
        encoder = cached_encoder(cfg, [by_structure[v] + test_by[v] for v in test_by], key, out.parent, device, bars)
    k, fold_seed, similarity = fold_settings(cfg)
    folds = make_folds(df, k, fold_seed, similarity)
    sn = df["signal_to_noise"].to_numpy()
    good = df["SN_filter"].to_numpy() == 1
    usable = usable_rows(df, t)
    oof, oof_tta = [None] * len(df), [None] * len(df)
    fold_reports = []
    t_run = time.perf_counter()
    todo = run_folds(cfg)
    pending = unfinished_folds(cfg, out)
    jobs = fold_jobs(t, device, len(pending))
    if jobs > 1:
        train_folds_in_processes([(cfg, run, f) for f in pending], jobs, df,
                                 test_df if teachers or pretrain else None, out.parent, progress)
    for f in todo:
        ck_path = fold_path(out, f)
        if ck_path.is_file():
            ck = torch.load(ck_path, weights_only=False, map_location="cpu")
            check_fingerprints(ck, fps, out)
            if progress:
                print(f"fold {f}: done already (val MCRMSE {ck['score']:.4f}), skipping")
        else:
            tr_idx = np.nonzero((folds != f) & usable)[0]
            va_idx = np.nonzero((folds == f) & good)[0]
            va_all = np.nonzero(folds == f)[0]
            t0 = time.perf_counter()
            train_g = [with_labels_before([gs[i] for i in tr_idx], t.get("label_positions")) for gs in [graphs] + alt]
            pseudo_g, teacher_fps = None, None
            if teachers:
                per_teacher, teacher_fps = teacher_predictions(teachers, f, va_all, fps["data"], test_df, out.parent,
                                                               device, bars)
                labels = [np.mean(x, 0) for x in zip(*per_teacher)]
                w_real = molecule_weight(torch.from_numpy(sn[tr_idx]).float(), t).numpy()
                w_pseudo = float(t.get("pseudo_weight", 0.5)) * float(w_real.mean())
                if confidence:               # molecules the teachers agree on weigh more (mean unchanged)
                    w_pseudo = w_pseudo * confidence_weights(teacher_spread(per_teacher, test_df["seq_scored"]),
                                                             confidence)
                train_g = [with_loss_weight(gs, w_real) for gs in train_g]
                tail = tail_weight(t)
                pseudo_g = [pseudo_graphs(test_by[v], labels, test_df["seq_scored"], w_pseudo, tail) for v in test_by]
                if tail:                     # the training molecules' unlabelled bases, from the same teacher folds
                    own = teacher_labels(teachers, f, va_all, fps["data"], df.iloc[tr_idx], out.parent, device, bars,
                                         cache_graphs=False)[0]
                    train_g = [with_teacher_tail(gs, own, tail) for gs in train_g]
            start = start_checkpoint(cfg, f, va_all, fps["data"], out.parent)
            init = start["state_dict"] if start else encoder and encoder["state_dict"]
            state, score, hist = train_fold(cfg, train_g, [graphs[i] for i in va_idx], f, device, progress,
                                            pseudo_g=pseudo_g, init_state=init,
                                            label=f"{run} " if progress == "lines" else "")
            seconds = time.perf_counter() - t0
            model = load_model(dict(config=cfg, state_dict=state), device)
            # the submission averages over the TTA structures: record that OOF prediction too
            per_v = {v: predict_graphs(model, [by_structure[v][i] for i in va_all], device=device) for v in tta}
            preds = per_v["given"]
            preds_tta = [np.mean(x, 0) for x in zip(*per_v.values())]
            ck = dict(state_dict=state, config=cfg, fingerprints=fps, fold=f, score=score, history=hist,
                      seconds=seconds, device=str(device), n_train=len(tr_idx), n_val=len(va_idx),
                      oof_index=va_all, oof=[q.astype(np.float32) for q in preds],
                      oof_tta=[q.astype(np.float32) for q in preds_tta], tta=tta,
                      teachers=teacher_fps, pretrained=encoder and encoder["key"], torch=torch.__version__,
                      started_from=start and {t["init_from"]: start["fingerprints"]},
                      precision="float16" if device.type == "cuda" else "bfloat16" if model.cpu_bf16 else "float32")
            save_atomic(ck, ck_path)
        for i, q, qt in zip(ck["oof_index"], ck["oof"], ck.get("oof_tta", ck["oof"])):
            oof[i], oof_tta[i] = q, qt
        ep_s = [h["seconds"] for h in ck["history"]]
        fold_reports.append(dict(fold=f, val_mcrmse=ck["score"], n_train=ck["n_train"], n_val=ck["n_val"],
                                 epochs=len(ck["history"]), seconds=ck["seconds"],
                                 seconds_per_epoch=float(np.mean(ep_s)) if ep_s else None, device=ck["device"],
                                 precision=ck.get("precision"), **kept_epoch(ck["history"])))
    if not write_report:
        return None
    report = cv_report(df, graphs, oof, folds, fold_reports, cfg, run, fps, oof_tta=oof_tta, tta=tta)
    report["wall_seconds_this_call"] = time.perf_counter() - t_run
    # a quick comparison on some folds is not an ensemble member; a subset resumed with every fold listed is
    report["partial"] = set(todo) != set(range(int(t["folds"])))
    empty = np.full((130, 5), np.nan, dtype=np.float32)

    def padded(preds):
        return np.stack([np.pad(q, ((0, 130 - len(q)), (0, 0))) if q is not None else empty for q in preds])
    with atomic_path(out / "oof.npz") as tmp:
        np.savez_compressed(tmp, ids=df["id"].to_numpy(), fold=folds, pred=padded(oof), pred_tta=padded(oof_tta))
    write_text_atomic(json.dumps(report, indent=2), out / "cv.json")
    write_text_atomic(cv_table(report), out / "cv.md")
    if progress:
        print(cv_table(report))
    return report


def fold_jobs(t: dict, device: torch.device, pending: int) -> int:
    """How many of ``pending`` folds train at once: ``train.jobs``, or with ``auto`` one process per fold
    up to the number of cores on a CPU (a model this small uses two threads poorly: on 2 cores two folds
    of one thread each train 1.6× the epochs per minute of one fold on both) and up to half the cores on
    a GPU (one process, bound by its kernel launches and batching, leaves most of it idle: five on one
    H100 trained the GPU `make train` in 28 min, ~105 min estimated one after another)."""
    j = t.get("jobs", 1)
    if j in (None, "auto"):
        cores = cpu_cores()
        j = max(1, cores // 2) if device.type == "cuda" else cores
    if not isinstance(j, int) or isinstance(j, bool) or j < 1:
        raise ValueError(f"train.jobs must be a whole number >= 1 or auto, got {j!r}")
    return max(1, min(j, pending))


def pool_jobs(cfgs: list[dict], device: torch.device, pending: int) -> int:
    """Processes of the one pool that trains ``pending`` folds of the runs ``cfgs``: the fewest any of them asks for."""
    return min([fold_jobs(c["train"], device, pending) for c in cfgs] or [1])


def fold_threads(n: int, jobs: int, cores: int) -> list[int]:
    """Torch threads for each of ``n`` folds started ``jobs`` at a time: the cores shared by the folds
    of its round (a short last round gets more threads each)."""
    return [max(1, cores // min(jobs, n - (i // jobs) * jobs)) for i in range(n)]


def _train_fold_process(cfg: dict, run: str, fold: int, df, test_df, models_dir, threads, progress):
    train_run(apply_overrides(cfg, [f"train.only_folds=[{fold}]", "train.jobs=1"]), run_name=run, df=df,
              models_dir=models_dir, progress=progress, test_df=test_df, threads=threads, write_report=False)


def train_folds_in_processes(tasks: list[tuple[dict, str, int]], jobs: int, df, test_df, models_dir,
                             progress: bool = True) -> None:
    """Train ``tasks`` (config, run, fold) in ``jobs`` spawned processes at a time, in their order, each
    saving its checkpoint as a sequential run would (same seeds and fingerprints); each uses its
    config's ``train.threads`` torch threads, or its share of the cores (:func:`fold_threads`). A fold's
    error is raised here, naming its run and fold."""
    shares = fold_threads(len(tasks), jobs, cpu_cores())
    threads = [cfg["train"].get("threads") or n for (cfg, _, _), n in zip(tasks, shares)]
    ctx = multiprocessing.get_context("spawn")             # CUDA cannot be used in forked children
    if progress:
        runs = {run: ", ".join(str(f) for _, r, f in tasks if r == run) for _, run, _ in tasks}
        what = (f"{tasks[0][1]}: training folds {runs[tasks[0][1]]}" if len(runs) == 1 else
                "training " + "; ".join(f"{run} folds {fs}" for run, fs in runs.items()))
        print(f"{what} in {jobs} processes side by side")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=exit_with_parent) as ex:
        futs = {ex.submit(_train_fold_process, cfg, run, f, df, test_df, models_dir, n_threads,
                          "lines" if progress else False): (run, f) for (cfg, run, f), n_threads in zip(tasks, threads)}
        for fu in as_completed(futs):
            try:
                fu.result()
            except Exception as e:
                ex.shutdown(cancel_futures=True)        # folds not yet started; running ones finish and save
                run, f = futs[fu]
                raise RuntimeError(f"{run}: fold {f} failed in its process: {e}") from e


def train_runs(cfgs: list[dict], models_dir: Path | str | None = None, progress: bool | str = True,
               df: pd.DataFrame | None = None, test_df: pd.DataFrame | None = None) -> list[dict]:
    """Train several runs (``make train``'s members, each under its config's name), then report each.

    With processes (``train.jobs``, see :func:`fold_jobs`) the unfinished folds of all the runs share
    one pool, in the runs' order, instead of one pool per run: on 2 cores a run of 5 folds otherwise
    trains its last fold alone, at 1.0–1.5× the speed of a fold beside another instead of 2×. A run
    taught by another of the list, or started from its weights (:func:`upstream_runs`), waits for those runs; a run with
    ``train.pretrain`` trains on its own (:func:`train_run`, which pretrains its encoder once first).
    Each fold's checkpoint is the one :func:`train_run` would save with the same torch threads.
    """
    models_dir = Path(models_dir or MODELS_DIR)
    df = load_train() if df is None else df.reset_index(drop=True)
    names = [c.get("name", "run") for c in cfgs]
    if len(set(names)) < len(names):
        raise ValueError(f"train: runs named twice in {names}")
    device, left, reports = get_device(), list(zip(cfgs, names)), {}
    while left:
        waiting = {n for _, n in left}
        ready = [(c, n) for c, n in left if not upstream_runs(c) & waiting]
        if not ready:
            raise ValueError(f"train.pseudo_from/init_from: the runs {sorted(waiting)} wait for one another")
        shared = [(c, n) for c, n in ready if not pretrain_settings(c)]
        for c, n in shared:                  # a stale run stops the call before hours of other runs' folds
            fps = fingerprints(c, df)
            for ck_path in sorted((models_dir / n).glob("fold*.pt")):
                check_fingerprints(torch.load(ck_path, weights_only=False, map_location="cpu"), fps, models_dir / n)
        tasks = [(c, n, f) for c, n in shared for f in unfinished_folds(c, models_dir / n)]
        jobs = pool_jobs([c for c, _ in shared], device, len(tasks))
        if jobs > 1:
            teachers = any(c["train"].get("pseudo_from") for c, _, _ in tasks)
            test_df = load_test() if teachers and test_df is None else test_df
            train_folds_in_processes(tasks, jobs, df, test_df if teachers else None, models_dir, progress)
        for c, n in ready:                   # folds saved: read back and reported (or trained here)
            reports[n] = train_run(c, run_name=n, df=df, models_dir=models_dir, progress=progress, test_df=test_df)
        left = [(c, n) for c, n in left if n not in reports]
    return [reports[n] for n in names]


def check_fingerprints(ck: dict, fps: dict, out: Path) -> None:
    """Refuse a fold checkpoint in the run folder ``out`` trained with other config/data/features."""
    if ck["fingerprints"] != fps:
        raise RuntimeError(f"{out} holds fold {ck.get('fold', '?')} trained with other config/data/features "
                           f"({ck['fingerprints']} != {fps}); use another --run-name or delete {out}")


def run_folds(cfg: dict) -> list[int]:
    """The folds a run of ``cfg`` trains: ``train.only_folds``, or all."""
    only = cfg["train"].get("only_folds")
    return list(range(int(cfg["train"]["folds"]))) if only is None else [int(x) for x in only]


def unfinished_folds(cfg: dict, out: Path) -> list[int]:
    """The folds of ``cfg`` (:func:`run_folds`) with no checkpoint in the run folder ``out``."""
    return [f for f in run_folds(cfg) if not fold_path(out, f).is_file()]


def improves(score: float, best: float) -> bool:
    """Whether an epoch's validation MCRMSE beats the best so far by more than 1e-5 (the epoch a fold keeps)."""
    return score < best - 1e-5


def kept_epoch(history: list[dict]) -> dict:
    """Which epoch a fold kept and what its last epoch scored. :func:`train_fold` keeps the epoch with the
    best validation MCRMSE, chosen on the very molecules the OOF is then scored on, so a fold's score is
    optimistic by about ``last_val_mcrmse - val_mcrmse`` (0 when the last epoch is kept): the CV table
    shows it, since it grows with the epochs and with how much a model's validation score wanders."""
    best, kept = float("inf"), None
    for h in history:
        if improves(h["val_mcrmse"], best):
            best, kept = h["val_mcrmse"], h["epoch"]
    return dict(kept_epoch=kept, last_val_mcrmse=float(history[-1]["val_mcrmse"])) if history else {}


def cv_report(df, graphs, oof, folds, fold_reports, cfg, run, fps, oof_tta=None, tta=None) -> dict:
    good = df["SN_filter"].to_numpy() == 1
    idx = [i for i in np.nonzero(good)[0] if oof[i] is not None]
    score, per = score_predictions([oof[i] for i in idx], [graphs[i] for i in idx])
    extra = {}
    if oof_tta is not None:
        extra = dict(tta=tta, cv_mcrmse_tta=score_predictions([oof_tta[i] for i in idx], [graphs[i] for i in idx])[0])
    L = int(df["seq_scored"].max())
    pos_err = np.zeros((L, len(TARGETS)))
    cnt = np.zeros(L)
    for i in idx:
        P, Y = scored_rows(oof[i], graphs[i])
        pos_err[: len(P)] += (P - Y) ** 2
        cnt[: len(P)] += 1
    pos_rmse = np.sqrt(pos_err / np.maximum(cnt, 1)[:, None])[:, SCORED_IDX].mean(1)
    return dict(run=run, config=cfg, fingerprints=fps, cv_mcrmse=score,
                cv_rmse={c: float(v) for c, v in zip(TARGETS, per)}, n_scored_rows=len(idx),
                folds=fold_reports, position_rmse=[float(v) for v in pos_rmse], **extra)


def cv_table(r: dict) -> str:
    lines = [f"# CV report: {r['run']}", "",
             f"MCRMSE (reactivity, deg_Mg_pH10, deg_Mg_50C; SN_filter=1 rows, {r['n_scored_rows']} molecules): "
             f"**{r['cv_mcrmse']:.4f}**"
             + (f"; averaged over the {', '.join(r['tta'])} structures (as submitted): **{r['cv_mcrmse_tta']:.4f}**"
                if "cv_mcrmse_tta" in r else ""), "",
             "Folds: {}, split by fold seed {}, molecules of positional identity ≥ {:g} in one fold (runs blend only "
             "with runs of the same split).".format(*fold_settings(r["config"])), "",
             "| target | RMSE |", "| --- | --- |"]
    lines += [f"| {c}{' (scored)' if c in SCORED else ''} | {v:.4f} |" for c, v in r["cv_rmse"].items()]
    lines += ["", "| fold | val MCRMSE | kept epoch | last epoch's val MCRMSE | train rows | val rows (SN=1) | epochs | "
              "s/epoch | fold s | device |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in r["folds"]:
        last = f"{f['last_val_mcrmse']:.4f}" if "last_val_mcrmse" in f else ""
        lines.append(f"| {f['fold']} | {f['val_mcrmse']:.4f} | {f.get('kept_epoch') or ''} | {last} | {f['n_train']} | "
                     f"{f['n_val']} | {f['epochs']} | {f['seconds_per_epoch']:.1f} | {f['seconds']:.0f} | {f['device']} |")
    gaps = [f["last_val_mcrmse"] - f["val_mcrmse"] for f in r["folds"] if "last_val_mcrmse" in f]
    if gaps:
        lines += ["", f"Each fold keeps its best epoch on its own validation molecules: the last epochs read "
                      f"{np.mean(gaps):.4f} higher on average, about what that choice flatters the CV."]
    pr = r["position_rmse"]
    lines += ["", "Error by position (mean RMSE of the scored columns), in blocks of 10:", "",
              " ".join(f"{k}-{min(k + 9, len(pr) - 1)}: {np.mean(pr[k:k + 10]):.3f}" for k in range(0, len(pr), 10))]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- benchmark
def benchmark(cfg: dict, n_graphs: int = 512, passes: int = 1, threads: int | None = None,
              df: pd.DataFrame | None = None, verbose: bool = True, pseudo_df: pd.DataFrame | None = None) -> dict:
    """Graphs/second for a training step and for inference on the current device, on the first ``n_graphs``
    training molecules in ``threads`` torch threads (default ``train.threads``): after a warm-up pass, the
    faster of ``passes`` timed passes (a busy neighbour slows one pass, not both). ``pseudo_df``: unlabelled
    molecules that join the training passes as a student's pseudo-labelled ones do (a 130-nt molecule
    among 107-nt ones makes a batch of two lengths, which trains slower per base than one length)."""
    set_threads(threads or cfg["train"].get("threads"))
    device = get_device()
    df = (load_train() if df is None else df).head(n_graphs)
    graphs = build_graphs(df, graph_params(cfg), progress=False)
    train_g = graphs
    if pseudo_df is not None and len(pseudo_df):          # as in a student's epoch, every graph carries a loss weight
        extra = build_graphs(pseudo_df, graph_params(cfg), progress=False)
        train_g = with_loss_weight(graphs, [1.0] * len(graphs)) + pseudo_graphs(
            extra, [np.zeros((len(g.y), 5), np.float32) for g in extra], pseudo_df["seq_scored"], 0.5)
    model = new_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(train_g, batch_size=int(cfg["train"]["batch_size"]), shuffle=True)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def train_pass():
        model.train()
        for batch in loader:
            batch = batch.to(device)
            opt.zero_grad()
            with autocast(device, model.cpu_bf16):
                loss = weighted_mcrmse_loss(model(batch), batch, cfg["train"])
            loss.backward()
            opt.step()
    timed(train_pass)                                      # warm-up
    train_s = min(timed(train_pass) for _ in range(passes))
    infer_s = min(timed(lambda: predict_graphs(model, graphs, device=device)) for _ in range(passes))
    res = dict(device=str(device), conv=cfg["model"]["conv"], graphs=len(graphs), pseudo_graphs=len(train_g) - len(graphs),
               threads=torch.get_num_threads(), bf16=model.cpu_bf16,
               train_graphs_per_s=len(train_g) / train_s, infer_graphs_per_s=len(graphs) / infer_s)
    if verbose:
        print(json.dumps(res))
    return res


def rnn_layers(m: dict) -> str:
    """A model section's recurrent layers for the runs table: ``2`` (BiGRU), ``2 LSTM``, ``0`` (none)."""
    n, rnn = int(m.get("gru_layers", 0)), str(m.get("rnn", "gru"))
    return f"{n} {rnn.upper()}" if n and rnn != "gru" else str(n)


def experiments_table(models_dir: Path | str | None = None) -> str:
    """Markdown table of every run under ``models/`` (CV on SN_filter=1 rows, time per epoch), named by
    its directory (a run moved aside, e.g. ``default-v2``, keeps its own name); "device" says ``cpu bf16``
    for a run trained under bfloat16 autocast."""
    rows = []
    for cvp in sorted(Path(models_dir or MODELS_DIR).glob("*/cv.json")):
        r = json.loads(cvp.read_text())
        m, t = r["config"]["model"], r["config"]["train"]
        folds = r["folds"]
        similarity = fold_settings(r["config"])[2]
        rows.append("| {run} | {conv} | {rnn} | {attn} | {h}x{L} | {folds} | {groups} | {ep} | {bs} | {lr:g} | {pl} | **{cv:.4f}** | {tta} | {re:.4f} | {mg:.4f} | {c50:.4f} | {spe:.1f} | {fs:.0f} | {dev} |".format(
            run=cvp.parent.name, conv=m["conv"], rnn=rnn_layers(m), attn=m.get("attn_layers", 0),
            h=m["hidden"], L=m["layers"],
            pl=", ".join(t.get("pseudo_from") or []) + (f" (starts from {t['init_from']})" if t.get("init_from") else ""),
            folds=",".join(str(f["fold"]) for f in folds),
            groups="random" if similarity >= 1.0 else f"identity ≥ {similarity:g}", ep=t["epochs"], bs=t["batch_size"], lr=float(t["lr"]), cv=r["cv_mcrmse"],
            tta=f"{r['cv_mcrmse_tta']:.4f}" if "cv_mcrmse_tta" in r else "",
            re=r["cv_rmse"]["reactivity"], mg=r["cv_rmse"]["deg_Mg_pH10"], c50=r["cv_rmse"]["deg_Mg_50C"],
            spe=float(np.mean([f["seconds_per_epoch"] for f in folds])), fs=float(np.mean([f["seconds"] for f in folds])),
            dev=folds[0]["device"] + (" bf16" if folds[0].get("precision") == "bfloat16" else "")))
    cols = ["run", "conv", "bi-RNN layers", "attention layers", "hidden x layers", "folds", "CV groups", "max epochs",
            "batch", "peak lr", "pseudo-labels from", "CV MCRMSE", "CV with TTA", "reactivity", "deg_Mg_pH10",
            "deg_Mg_50C", "s/epoch", "s/fold", "device"]
    head = "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)       # the separator follows the columns
    return head + "\n" + "\n".join(rows) + "\n"
