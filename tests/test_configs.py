"""Every shipped config loads, builds its model, and names teachers it can actually learn from."""
import os
import subprocess

import pytest

from openvaccine.config import CONFIG_DIR, load_config
from openvaccine.graphs import NUM_EDGE_FEATURES, NUM_NODE_FEATURES
from openvaccine.models import build_model
from openvaccine.train import fold_settings, upstream_runs

ROOT = CONFIG_DIR.parent

CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
    cfg = load_config(name)
    assert cfg["name"] == name, "a config's name is its run directory under models/"
    model = build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", [n for n in CONFIGS if load_config(n)["train"].get("pseudo_from")])
def test_student_teachers_are_shipped_with_the_same_folds(name):
    # otherwise a teacher with other folds is refused only at run time, when the student reaches fold 0
    # (after its features and any pretraining); catch it here
    cfg = load_config(name)
    for teacher in cfg["train"]["pseudo_from"]:
        assert teacher in CONFIGS, f"{name}: teacher {teacher!r} has no config"
        assert fold_settings(load_config(teacher)) == fold_settings(cfg), f"{name}: teacher {teacher!r} has other folds"


def make_members(gpu: int) -> list[str]:
    """The MEMBERS `make train` uses with (1) or without (0) a GPU, as `make help` prints them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEMBERS", "BUDGET", "MAKEFLAGS")}
    out = subprocess.run(["make", "-s", "help", f"GPU={gpu}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("MEMBERS ("))
    assert line.startswith(f"MEMBERS ({'GPU' if gpu else 'CPU'}): ")
    return line.split(": ", 1)[1].split()


@pytest.mark.parametrize("gpu", [0, 1])
def test_make_members_are_shipped_and_follow_their_teachers(gpu):
    # the budget keeps a prefix of MEMBERS: a student before one of its teachers would be kept without it
    members = make_members(gpu)
    assert len(members) == len(set(members)), members
    for i, name in enumerate(members):
        assert name in CONFIGS, f"make train member {name!r} has no config"
        missing = upstream_runs(load_config(name)) - set(members[:i])
        assert not missing, f"make train member {name!r} comes before the runs it needs: {sorted(missing)}"


PROXY = sorted(p.stem for p in (CONFIG_DIR / "proxy").glob("*.yaml"))


@pytest.mark.parametrize("name", PROXY)
def test_proxy_configs_learn_from_proxy_runs_only(name):
    # configs/proxy: runs trained on the labels of the first positions only, scored on the rest with
    # `score --positions`; a teacher trained on those positions would hand their labels to its student
    cfg = load_config(f"proxy/{name}")
    assert cfg["name"] == name
    assert cfg["train"]["label_positions"] is not None, f"proxy/{name}: trained on every position"
    build_model(cfg, NUM_NODE_FEATURES, NUM_EDGE_FEATURES)
    for up in upstream_runs(cfg):
        assert up in PROXY, f"proxy/{name}: learns from {up!r}, which is not a proxy run"
        teacher = load_config(f"proxy/{up}")
        assert teacher["train"]["label_positions"] == cfg["train"]["label_positions"], (name, up)
        assert fold_settings(teacher) == fold_settings(cfg), f"proxy/{name}: teacher {up!r} has other folds"
