"""One config system: YAML files under ``configs/`` plus ``key.sub=value`` command-line overrides.

A config file may name a parent with ``base: other.yaml`` (resolved relative to the file); the
child's keys are merged over the parent's, recursively. The merged config may hold only the keys
``configs/default.yaml`` spells out, plus the few optional ones in :data:`OPTIONAL_KEYS`: a typo
(``train.epoch=5``, a comment line missing its ``#``) is an error naming the file and the key, not
a setting silently ignored.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"


class ConfigError(ValueError):
    pass


# Keys a config may set that configs/default.yaml leaves out (they are off unless set).
OPTIONAL_KEYS = {"train": {"fold_seed", "pretrain", "init_from", "pseudo_from", "pseudo_frac", "pseudo_weight", "pseudo_tail",
                          "pseudo_confidence", "only_folds"}}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_path(name: str | Path) -> Path:
    """A config given as a path, or as a bare name looked up in ``configs/``."""
    p = Path(name)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config not found: {name} (looked in . and {CONFIG_DIR})")


def load_config(name: str | Path, overrides: Iterable[str] = ()) -> dict:
    """The config ``name`` (its ``base`` chain merged) with ``overrides`` applied; unknown keys raise."""
    path = resolve_path(name)
    cfg = _load_merged(path)
    check_keys(cfg, where=str(path))
    overrides = list(overrides)
    cfg = apply_overrides(cfg, overrides)
    if overrides:
        check_keys(cfg, where=f"{path} with overrides {' '.join(overrides)}")
    cfg.setdefault("name", path.stem)
    return cfg


def _load_merged(path: Path) -> dict:
    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = cfg.pop("base", None)
    if parent:
        cfg = _merge(_load_merged(path.parent / parent), cfg)
    return cfg


def known_keys() -> dict[str, set[str]]:
    """Section → keys a config may hold (``""``: top-level scalars), from ``configs/default.yaml``."""
    with open(CONFIG_DIR / "default.yaml") as fh:
        default = yaml.safe_load(fh)
    known = {"": {k for k, v in default.items() if not isinstance(v, dict)}}
    for section, keys in default.items():
        if isinstance(keys, dict):
            known[section] = set(keys) | OPTIONAL_KEYS.get(section, set())
    return known


def check_keys(cfg: dict, where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` and the first key ``configs/default.yaml`` does not know."""
    known = known_keys()
    for key, value in cfg.items():
        if key in known and key:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a section (a mapping), got {value!r}")
            for sub in value:
                if sub not in known[key]:
                    raise ConfigError(f"{where}: unknown key '{key}.{sub}'{_did_you_mean(sub, known[key])}")
        elif key not in known[""]:
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, set(known) - {''} | known[''])}")


def _did_you_mean(key: str, options: set[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(options))})"


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b=value`` strings; values are parsed as YAML (numbers, lists, bools)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def without_later_options(section: dict, off: dict) -> dict:
    """A config section less the options added after runs were trained that sit at their "off"
    value (``off``: option → that value), so fingerprints of runs made before the option existed
    still match."""
    return {k: v for k, v in section.items() if not (k in off and v == off[k])}


def fingerprint(obj: Any, n: int = 12) -> str:
    """Stable short hash of any JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it into place only if the block succeeds.

    A failure (or a check raising inside the block) removes the temporary file and leaves any
    previous ``path`` untouched. The temporary name keeps the suffix (``np.savez`` needs it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parse_window(window: str | tuple[int, int]) -> tuple[int, int]:
    """A window of positions, ``"START:END"`` or a pair (0-based, end exclusive), checked and returned as
    ``(START, END)``: ``predict --window``, ``score --positions``."""
    try:
        lo, hi = map(int, window.split(":") if isinstance(window, str) else window)
    except (TypeError, ValueError):                       # not two integers
        lo = hi = -1
    if not 0 <= lo < hi:
        raise ValueError(f"{window!r}: expected START:END, 0-based with the end excluded and 0 <= START < END, e.g. 48:68")
    return lo, hi
