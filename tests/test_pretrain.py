import pandas as pd
import pytest
import torch
from torch_geometric.loader import DataLoader

from openvaccine.config import apply_overrides
from openvaccine.graphs import NUM_EDGE_FEATURES, NUM_NODE_FEATURES, build_graphs, graph_params
from openvaccine.models import build_model
from openvaccine.pretrain import GROUPS, load_encoder, mask_bases, pretrain_encoder, pretrain_key, pretrain_settings


def test_masked_bases_lose_their_features_and_keep_their_classes(train_rows):
    graphs = build_graphs(pd.DataFrame(train_rows[:3]), graph_params({}), progress=False)
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    x0 = batch.x.clone()
    x, pick, targets = mask_bases(batch, 0.3, torch.Generator().manual_seed(0))
    rows = torch.nonzero(batch.is_base).flatten()[pick]
    assert 0 < len(rows) < batch.num_nodes
    assert torch.all(x[rows] == 0) and torch.all(x0[rows].sum(1) > 0)
    keep = torch.ones(batch.num_nodes, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(x[keep], x0[keep]) and torch.equal(batch.x, x0)      # the batch itself untouched
    for g, (c, k) in GROUPS.items():
        assert torch.equal(targets[g], x0[rows, c:c + k].argmax(1))
    seq = "".join(r["sequence"] for r in train_rows[:3])
    assert [("ACGU"[b]) for b in targets["base"]] == [seq[i] for i in rows.tolist()]


def test_pretrain_settings_defaults_and_errors(tiny_cfg):
    assert pretrain_settings(tiny_cfg) is None
    p = pretrain_settings(apply_overrides(tiny_cfg, ["train.pretrain.epochs=2"]))
    assert p["epochs"] == 2 and p["mask_prob"] == 0.15
    with pytest.raises(ValueError, match="unknown key"):
        pretrain_settings(apply_overrides(tiny_cfg, ["train.pretrain.epoch=2"]))
    with pytest.raises(ValueError, match="mask_prob"):
        pretrain_settings(apply_overrides(tiny_cfg, ["train.pretrain.mask_prob=1.5"]))


def test_pretraining_learns_and_its_encoder_loads_into_the_model(train_rows, tiny_cfg):
    cfg = apply_overrides(tiny_cfg, ["train.max_steps=null", "train.pretrain.epochs=8",
                                     "train.pretrain.batch_size=4", "train.pretrain.lr=0.005",
                                     "train.pretrain.mask_prob=0.3"])
    graphs = build_graphs(pd.DataFrame(train_rows[:8]), graph_params(cfg), progress=False)
    state, hist = pretrain_encoder(cfg, [graphs], torch.device("cpu"), progress=False)
    assert len(hist) == 8 and hist[-1]["loss"] < hist[0]["loss"] - 0.3
    assert not any(k.startswith("head.") for k in state)
    model = build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    head0 = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    load_encoder(model, state)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in state.items())
    assert all(torch.equal(sd[k], v) for k, v in head0.items())
    wider = build_model(apply_overrides(cfg, ["model.hidden=48"]), NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    with pytest.raises(RuntimeError, match="size mismatch|does not fit"):
        load_encoder(wider, state)


def test_pretrained_run_pretrains_once_and_records_it(train_rows, test_rows, tiny_cfg, tmp_path, monkeypatch):
    from openvaccine import pretrain as pt
    from openvaccine.train import train_run
    cfg = apply_overrides(tiny_cfg, ["train.pretrain.epochs=1"])
    df, test_df = pd.DataFrame(train_rows), pd.DataFrame(test_rows)
    calls = []
    real = pt.pretrain_encoder

    def counting(cfg, variants, device, progress=True):
        calls.append(len(variants[0]))
        return real(cfg, variants, device, progress)
    monkeypatch.setattr(pt, "pretrain_encoder", counting)
    train_run(cfg, run_name="pre", df=df, models_dir=tmp_path, progress=False, test_df=test_df)
    assert calls == [len(df) + len(test_df)]                     # once for both folds, train + test inputs
    saved = list((tmp_path / "pretrained").glob("*.pt"))
    assert len(saved) == 1
    for f in range(2):
        ck = torch.load(tmp_path / "pre" / f"fold{f}.pt", weights_only=False)
        assert ck["pretrained"] == saved[0].stem
    train_run(cfg, run_name="pre2", df=df, models_dir=tmp_path, progress=False, test_df=test_df)
    assert len(calls) == 1                                       # the second run reuses the cached encoder


def test_pretrain_key_follows_every_setting_pretraining_reads(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, ["train.pretrain.epochs=2", "train.max_steps=null"])
    key = pretrain_key(cfg, "feat", ["d1", "d2"])
    assert key == pretrain_key(apply_overrides(cfg, ["train.epochs=99", "train.lr=0.5"]), "feat", ["d1", "d2"])
    for change in ["train.max_steps=3", "train.weight_decay=0.1", "train.aug_prob=0.0", "train.aug_structures=[]",
                   "train.pretrain.mask_prob=0.4", "seed=1", "model.hidden=48"]:
        assert pretrain_key(apply_overrides(cfg, [change]), "feat", ["d1", "d2"]) != key, change
    assert pretrain_key(cfg, "feat2", ["d1", "d2"]) != key and pretrain_key(cfg, "feat", ["d1", "d3"]) != key


def test_pretrain_key_ignores_a_later_option_spelled_out_as_off(tiny_cfg):
    """``model.attn_layers: 0`` is the model every encoder cached before the option existed had."""
    cfg = apply_overrides(tiny_cfg, ["train.pretrain.epochs=2", "model.attn_layers=0"])
    older = dict(cfg, model={k: v for k, v in cfg["model"].items() if k != "attn_layers"})
    key = pretrain_key(cfg, "feat", ["d1"])
    assert key == pretrain_key(older, "feat", ["d1"])
    assert pretrain_key(apply_overrides(cfg, ["model.attn_layers=1"]), "feat", ["d1"]) != key
