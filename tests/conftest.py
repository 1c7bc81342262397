import gzip
import json
import os
import tempfile
from pathlib import Path

# keep the tests' folding/graph cache out of the repository's cache/
os.environ.setdefault("OPENVACCINE_CACHE", tempfile.mkdtemp(prefix="ov-test-cache-"))

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def read_rows(name: str, n: int) -> list[dict]:
    rows = []
    with gzip.open(ROOT / "input" / f"{name}.json.gz", "rt") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def train_rows():
    return read_rows("train", 40)


@pytest.fixture(scope="session")
def test_rows():
    rows = read_rows("test", 700)
    return [r for r in rows if r["seq_length"] == 107][:4] + [r for r in rows if r["seq_length"] == 130][:4]


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_cfg():
    from openvaccine.config import load_config
    return load_config("smoke", ["train.epochs=2", "train.max_steps=3", "train.threads=1"])


@pytest.fixture(scope="session")
def trained(tmp_path_factory, train_rows, tiny_cfg):
    """A tiny 2-fold run trained once for the session: (models_dir, run_name, train DataFrame)."""
    from openvaccine.train import train_run
    d = tmp_path_factory.mktemp("models")
    df = pd.DataFrame(train_rows)
    train_run(tiny_cfg, run_name="tiny", df=df, models_dir=d, progress=False)
    return d, "tiny", df
