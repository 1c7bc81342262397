r"""Self-supervised pretraining: masked-base reconstruction on every train and test molecule.

In each graph a random fraction ``mask_prob`` of the bases lose their whole input feature vector
(set to 0, which no real base has: its base one-hot always holds a 1); their edges stay. A linear
head reads the encoder's representation :math:`h_i` of each masked base :math:`i \in M` and
predicts what was hidden: its base, dot-bracket symbol and loop type,

.. math::
    \mathcal{L} = \frac{1}{|M|} \sum_{i \in M} \mathrm{CE}(W_b h_i, b_i) + \mathrm{CE}(W_s h_i, s_i)
    + \mathrm{CE}(W_\ell h_i, \ell_i),

so the encoder learns which bases and structural contexts go together from the 3634 test
molecules (130 nt among them, with positions 68–129 no label reaches) as well as the 2177
training ones. No target is used: pretraining on the validation folds' inputs too keeps the CV
honest, exactly as the test inputs are available to any submission.

The pretrained encoder (every parameter but the regression head) initialises every fold's model
(``train.pretrain``); it is cached under ``models/pretrained/`` by a fingerprint of the model,
features, pretraining settings and data, so the folds of a run (and runs sharing them) pretrain once.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from .config import fingerprint
from .graphs import NODE_FEATURES, feature_dims
from .models import build_model, model_signature

PRETRAIN_DEFAULTS = dict(epochs=6, mask_prob=0.15, lr=0.001, batch_size=32)
# the hidden groups a masked base is asked to recover: (first column, number of classes)
GROUPS = {name: (NODE_FEATURES.index(first), k) for name, first, k in
          [("base", "base_A", 4), ("struct", "struct_open", 3), ("loop", "loop_E", 7)]}


def pretrain_settings(cfg: dict) -> dict | None:
    """``train.pretrain`` with defaults filled in; None when pretraining is off."""
    p = cfg.get("train", {}).get("pretrain")
    if not p:
        return None
    p = {**PRETRAIN_DEFAULTS, **(p if isinstance(p, dict) else {})}
    unknown = set(p) - set(PRETRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"train.pretrain: unknown key(s) {sorted(unknown)}; known: {sorted(PRETRAIN_DEFAULTS)}")
    if not 0.0 < float(p["mask_prob"]) < 1.0:
        raise ValueError(f"train.pretrain.mask_prob must be in (0, 1), got {p['mask_prob']}")
    return p


def mask_bases(batch, mask_prob: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x with the chosen bases' features zeroed, boolean mask over the batch's bases, class targets
    ``{group: [masked bases]}``). At least one base per batch is masked."""
    x = batch.x
    base_rows = torch.nonzero(batch.is_base).flatten()
    pick = torch.rand(len(base_rows), generator=gen).to(x.device) < mask_prob
    if not bool(pick.any()):
        pick[torch.randint(len(base_rows), (1,), generator=gen).item()] = True
    rows = base_rows[pick]
    targets = {g: x[rows, c:c + k].argmax(1) for g, (c, k) in GROUPS.items()}
    x = x.clone()
    x[rows] = 0.0
    return x, pick, targets


class MaskedBaseHead(nn.Module):
    """Linear classifiers of the hidden groups (base, dot-bracket symbol, loop type)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out = nn.ModuleDict({g: nn.Linear(dim, k) for g, (_, k) in GROUPS.items()})

    def loss(self, h: torch.Tensor, targets: dict) -> tuple[torch.Tensor, float]:
        """Summed cross-entropy over the groups, and the accuracy on the base."""
        logits = {g: lin(h).float() for g, lin in self.out.items()}
        loss = sum(nn.functional.cross_entropy(logits[g], targets[g]) for g in GROUPS)
        acc = float((logits["base"].argmax(1) == targets["base"]).float().mean())
        return loss, acc


def encoder_state(model) -> dict:
    """The model's parameters less the regression head: what pretraining hands to fine-tuning."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


# the ``train`` settings :func:`pretrain_encoder` reads besides ``train.pretrain``
PRETRAIN_TRAIN_KEYS = ("aug_structures", "aug_prob", "weight_decay", "max_steps")


def pretrain_key(cfg: dict, feature_key: str, data_fps: list[str]) -> str:
    """Fingerprint of everything that shapes a pretrained encoder (a smoke run's ``train.max_steps``
    included, so its encoder is never reused by a full run)."""
    t = cfg.get("train", {})
    return fingerprint(dict(model=model_signature(cfg.get("model", {})), features=feature_key, pretrain=pretrain_settings(cfg),
                            seed=cfg.get("seed", 42), train={k: t.get(k) for k in PRETRAIN_TRAIN_KEYS},
                            data=data_fps))


def pretrain_encoder(cfg: dict, variants: list[list], device, progress: bool = True) -> tuple[dict, list[dict]]:
    """Pretrain a fresh model's encoder on unlabelled graphs; returns (encoder state, history).

    ``variants``: lists of graphs of the same molecules on different structures, the given one
    first; each epoch draws one per molecule as structure augmentation does in training.
    """
    from .train import epoch_graphs, optimiser, optimiser_step, set_seed
    p = pretrain_settings(cfg)
    seed = int(cfg.get("seed", 42))
    set_seed(seed)
    model = build_model(cfg, *feature_dims(cfg)).to(device)
    head = MaskedBaseHead(model.out_features).to(device)
    params = list(model.parameters()) + list(head.parameters())
    t = cfg["train"]
    bs, epochs = int(p["batch_size"]), int(p["epochs"])
    steps = -(-len(variants[0]) // bs)
    if t.get("max_steps"):
        steps = min(steps, int(t["max_steps"]))
    opt, sched = optimiser(params, float(p["lr"]), float(t.get("weight_decay", 0)), epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    aug_rng = np.random.default_rng(seed)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    hist = []
    model.train()
    head.train()
    for ep in range(epochs):
        loader = DataLoader(epoch_graphs(variants, float(t.get("aug_prob", 0.5)), aug_rng),
                            batch_size=bs, shuffle=True, generator=gen)
        t0, tot, acc_tot, n = time.perf_counter(), 0.0, 0.0, 0
        bar = tqdm(loader, total=steps, desc=f"pretrain epoch {ep + 1}/{epochs}", leave=False, disable=not progress)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            batch = batch.to(device)
            batch.x, pick, targets = mask_bases(batch, float(p["mask_prob"]), gen)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                h = model.encode(batch)[pick]
            loss, acc = head.loss(h.float(), targets)
            optimiser_step(loss, params, opt, sched, scaler)
            tot, acc_tot, n = tot + loss.item(), acc_tot + acc, n + 1
            bar.set_postfix(loss=f"{tot / n:.4f}", base_acc=f"{acc_tot / n:.3f}")
        hist.append(dict(epoch=ep + 1, loss=tot / max(n, 1), base_accuracy=acc_tot / max(n, 1),
                         seconds=time.perf_counter() - t0))
        if progress:
            tqdm.write(f"pretrain epoch {ep + 1}: loss {tot / max(n, 1):.4f}  masked-base accuracy "
                       f"{acc_tot / max(n, 1):.3f}  ({hist[-1]['seconds']:.1f} s)")
    return encoder_state(model), hist


def cached_encoder(cfg: dict, variants: list[list], key: str, models_dir: Path, device,
                   progress: bool = True) -> dict:
    """The pretrained encoder checkpoint for ``key``: loaded from ``models_dir/pretrained/`` or
    pretrained now and saved there (atomically)."""
    from .train import save_atomic
    path = Path(models_dir) / "pretrained" / f"{key}.pt"
    if path.is_file():
        if progress:
            print(f"pretrained encoder: {path}")
        return torch.load(path, weights_only=False, map_location="cpu")
    t0 = time.perf_counter()
    state, hist = pretrain_encoder(cfg, variants, device, progress)
    ck = dict(state_dict=state, key=key, pretrain=pretrain_settings(cfg), model=cfg.get("model", {}),
              history=hist, n_molecules=len(variants[0]), seconds=time.perf_counter() - t0, device=str(device))
    save_atomic(ck, path)
    return ck


def load_encoder(model, state: dict) -> None:
    """Load a pretrained encoder into ``model``; everything but its head must match."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"pretrained encoder does not fit the model: {bad[:5]}")
