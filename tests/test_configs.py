"""Every shipped config loads, builds its model, and names teachers it can actually learn from."""
import pytest

from openvaccine.config import CONFIG_DIR, load_config
from openvaccine.graphs import NUM_EDGE_FEATURES, NUM_NODE_FEATURES
from openvaccine.models import build_model
from openvaccine.train import fold_settings

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
