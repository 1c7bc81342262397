"""Load and validate the competition files (Kaggle's JSON-lines format).

Every violation raises :class:`DataError` naming the file, the row (line number and id) and the
field; nothing is silently dropped. Files are read from ``input/`` (plain or ``.gz``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import ERRORS, TARGETS
from .config import ROOT

INPUT_DIR = ROOT / "input"
PAIR_OPEN = "([{<"
PAIR_CLOSE = ")]}>"
LOOP_LETTERS = set("EHBIMSX")
REQUIRED = ["id", "sequence", "structure", "predicted_loop_type", "seq_length", "seq_scored"]
REQUIRED_TRAIN = REQUIRED + ["signal_to_noise", "SN_filter"] + TARGETS + ERRORS


class DataError(ValueError):
    """Bad input: the message names the file, the row and the field."""


def input_path(name: str, input_dir: Path | str = INPUT_DIR) -> Path:
    """``input/<name>`` if present, else ``input/<name>.gz``."""
    d = Path(input_dir)
    for cand in (d / name, d / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{d / name}[.gz] not found: run `make data` first")


def _open(path: Path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def normalise_sequence(seq: str, where: str) -> tuple[str, bool]:
    """Upper-case, T→U. Returns (sequence, changed); raises on anything but ACGU."""
    if not isinstance(seq, str) or not seq:
        raise DataError(f"{where}: field 'sequence': empty or not a string")
    norm = seq.upper().replace("T", "U")
    bad = sorted(set(norm) - set("ACGU"))
    if bad:
        pos = next(i for i, c in enumerate(norm) if c in bad)
        raise DataError(f"{where}: field 'sequence': invalid character {seq[pos]!r} at position {pos} "
                        f"(only A, C, G, U; lowercase and T are accepted)")
    return norm, norm != seq


def pair_table(structure: str, where: str = "structure") -> np.ndarray:
    """Partner index of each base (-1 if unpaired), for dot-bracket with pseudoknot brackets."""
    stacks = {c: [] for c in PAIR_OPEN}
    partner = np.full(len(structure), -1, dtype=np.int64)
    for i, c in enumerate(structure):
        if c in PAIR_OPEN:
            stacks[c].append(i)
        elif c in PAIR_CLOSE:
            o = PAIR_OPEN[PAIR_CLOSE.index(c)]
            if not stacks[o]:
                raise DataError(f"{where}: field 'structure': unbalanced {c!r} at position {i}")
            j = stacks[o].pop()
            partner[i], partner[j] = j, i
        elif c not in ".-:,_":
            raise DataError(f"{where}: field 'structure': invalid character {c!r} at position {i}")
    for o, st in stacks.items():
        if st:
            raise DataError(f"{where}: field 'structure': unbalanced {o!r} at position {st[-1]}")
    return partner


def validate_record(rec: dict, where: str, labelled: bool) -> dict:
    """Check one molecule; returns it with a normalised sequence."""
    required = REQUIRED_TRAIN if labelled else REQUIRED
    for f in required:
        if f not in rec or rec[f] is None:
            raise DataError(f"{where}: missing field {f!r}")
    seq, changed = normalise_sequence(rec["sequence"], where)
    if changed:
        warnings.warn(f"{where}: field 'sequence' normalised (lowercase/T → ACGU)", stacklevel=3)
    rec = dict(rec, sequence=seq)
    n = len(seq)
    if int(rec["seq_length"]) != n:
        raise DataError(f"{where}: field 'seq_length': {rec['seq_length']} but the sequence has {n} bases")
    s = rec["structure"]
    if not isinstance(s, str) or len(s) != n:
        raise DataError(f"{where}: field 'structure': length {len(s) if isinstance(s, str) else 'n/a'} != sequence length {n}")
    pair_table(s, where)
    lt = rec["predicted_loop_type"]
    if not isinstance(lt, str) or len(lt) != n:
        raise DataError(f"{where}: field 'predicted_loop_type': length {len(lt) if isinstance(lt, str) else 'n/a'} != sequence length {n}")
    bad = sorted(set(lt) - LOOP_LETTERS)
    if bad:
        raise DataError(f"{where}: field 'predicted_loop_type': invalid letter(s) {bad} (allowed: EHBIMSX)")
    scored = int(rec["seq_scored"])
    if not 0 < scored <= n:
        raise DataError(f"{where}: field 'seq_scored': {scored} not in 1..{n}")
    if labelled:
        for f in TARGETS + ERRORS:
            v = rec[f]
            if not isinstance(v, list) or len(v) != scored:
                raise DataError(f"{where}: field {f!r}: length {len(v) if isinstance(v, list) else 'n/a'} != seq_scored {scored}")
            arr = np.asarray(v, dtype=float)
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{where}: field {f!r}: non-finite value at position {int(np.argmin(np.isfinite(arr)))}")
        for f in ("signal_to_noise", "SN_filter"):
            if not np.isfinite(float(rec[f])):
                raise DataError(f"{where}: field {f!r}: not a finite number")
    return rec


def read_jsonl(path: Path | str, labelled: bool) -> pd.DataFrame:
    """Read and validate a competition JSON-lines file into a DataFrame (one row per molecule)."""
    path = Path(path)
    rows, seen = [], {}
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {lineno}: not valid JSON ({e.msg})") from None
            where = f"{path}: row {lineno} (id {rec.get('id', '?')})"
            rec = validate_record(rec, where, labelled)
            if rec["id"] in seen:
                raise DataError(f"{where}: field 'id': duplicate of row {seen[rec['id']]}")
            seen[rec["id"]] = lineno
            rows.append(rec)
    if not rows:
        raise DataError(f"{path}: no rows")
    return pd.DataFrame(rows).reset_index(drop=True)


def load_train(input_dir: Path | str = INPUT_DIR) -> pd.DataFrame:
    return read_jsonl(input_path("train.json", input_dir), labelled=True)


def load_test(input_dir: Path | str = INPUT_DIR) -> pd.DataFrame:
    return read_jsonl(input_path("test.json", input_dir), labelled=False)


def load_sample_submission(input_dir: Path | str = INPUT_DIR) -> pd.DataFrame:
    return pd.read_csv(input_path("sample_submission.csv", input_dir))


def data_fingerprint(df: pd.DataFrame) -> str:
    """Hash of the molecules (ids, sequences, structures, targets) a model was trained on."""
    h = hashlib.sha256()
    cols = [c for c in ["id", "sequence", "structure", "predicted_loop_type"] + TARGETS if c in df]
    for row in df[cols].itertuples(index=False):
        h.update(json.dumps(list(row), default=lambda a: np.asarray(a).tolist()).encode())
    return h.hexdigest()[:16]


def verify_input(input_dir: Path | str = INPUT_DIR) -> list[str]:
    """Check the vendored files against ``input/SHA256SUMS``; returns a list of problems."""
    d = Path(input_dir)
    problems = []
    sums = d / "SHA256SUMS"
    if not sums.is_file():
        return [f"{sums} missing"]
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        f = d / name
        if not f.is_file():
            problems.append(f"{f} missing")
            continue
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            problems.append(f"{f}: checksum mismatch")
    return problems
