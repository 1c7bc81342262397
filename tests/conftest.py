import gzip
import json
from pathlib import Path

import pytest

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
    return read_rows("test", 10)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
