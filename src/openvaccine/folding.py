"""Folding features: base-pair probabilities, MFE structures and bpRNA loop types.

Engines
-------
``vienna``           ViennaRNA partition function (default model, ``temperature`` °C; ``params``
                     names another energy parameter set, e.g. ``Andronescu2007``). For
                     sequences longer than ``window_above`` nt the cubic global fold is replaced
                     by local folding (RNAplfold, ``RNA.pfl_fold`` with ``window``/``span``) and an
                     MFE restricted to ``max_bp_span``.
``linearpartition``  LinearPartition (``mode='eterna'``: EternaFold-like parameters, or
                     ``'vienna'``), linear time.

``sample_structures`` draws structures from ViennaRNA's Boltzmann ensemble (stochastic
backtracking), reproducibly, for use as alternative training or test-time structures.

``structure_agreement`` measures how closely the MFE structures of other folding settings
(temperatures, dangles, parameter sets, engines) reproduce a set of given structures.

Results are cached on disk, one ``.npz`` per (sequence, engine, parameters) under
``cache/folding/<engine-key>/``, so a second run costs nothing. Probabilities below ``1e-5`` are
dropped, as in the competition's ``bpps`` files.
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .config import ROOT, atomic_path, fingerprint
from .data import pair_table

CACHE_DIR = Path(os.environ.get("OPENVACCINE_CACHE", ROOT / "cache"))
MIN_PROB = 1e-5


@dataclass(frozen=True)
class FoldParams:
    engine: str = "vienna"            # vienna | linearpartition
    temperature: float = 37.0         # vienna only
    mode: str = "eterna"              # linearpartition only
    window_above: int = 1000          # vienna: local folding above this length
    window: int = 240                 # RNAplfold W
    span: int = 160                   # RNAplfold L, and max_bp_span of the long-sequence MFE
    params: str = ""                  # vienna: energy parameter set (``RNA.params_load_RNA_<params>``; "" = Turner 2004)

    def key(self) -> str:
        import RNA
        if self.engine == "vienna":
            d = dict(e="vienna", v=RNA.__version__, t=self.temperature, wa=self.window_above, w=self.window, s=self.span)
            if self.params:
                d["p"] = self.params
        elif self.engine == "linearpartition":
            d = dict(e="linearpartition", m=self.mode)
        else:
            raise ValueError(f"unknown folding engine {self.engine!r} (vienna | linearpartition)")
        return f"{self.engine}-{fingerprint(d, 10)}"


@dataclass
class Fold:
    """Sparse upper-triangle base-pair probabilities plus an MFE structure."""
    n: int
    i: np.ndarray          # int32, 0-based, i < j
    j: np.ndarray
    p: np.ndarray          # float32
    structure: str
    energy: float
    method: str

    def dense(self) -> np.ndarray:
        m = np.zeros((self.n, self.n), dtype=np.float32)
        m[self.i, self.j] = self.p
        m[self.j, self.i] = self.p
        return m

    def pair_prob(self) -> np.ndarray:
        """Probability that each base is paired (row sums of the bpp matrix), clipped to [0, 1]."""
        s = np.bincount(self.i, self.p, self.n) + np.bincount(self.j, self.p, self.n)
        return np.clip(s, 0.0, 1.0).astype(np.float32)

    def max_prob(self) -> np.ndarray:
        m = np.zeros(self.n, dtype=np.float32)
        np.maximum.at(m, self.i, self.p)
        np.maximum.at(m, self.j, self.p)
        return m


def _sparse(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.nonzero(np.triu(mat, 1) >= MIN_PROB)
    return i.astype(np.int32), j.astype(np.int32), mat[i, j].astype(np.float32)


# ViennaRNA's energy parameters are process-wide, and a set loaded after the first fold of a process
# is silently ignored until the model details change (measured with the pip build 2.7.2). So each
# parameter set other than the default is folded in fresh processes that load it before anything
# else (``fold_cached`` does this), and a process that loaded one never folds with another.
_LOADED_PARAMS = ""
_FOLDED = False          # this process has folded with ViennaRNA (a later load would be ignored)


def check_params(name: str, where: str = "params") -> None:
    """Raise a ValueError naming ``where`` unless ``name`` is a parameter set ViennaRNA can load."""
    import RNA
    if not isinstance(name, str) or not name or not hasattr(RNA, f"params_load_RNA_{name}"):
        known = sorted(k[len("params_load_RNA_"):] for k in dir(RNA) if k.startswith("params_load_RNA_"))
        raise ValueError(f"{where}: unknown ViennaRNA parameter set {name!r}; known: {known}")


def use_params(name: str) -> None:
    """Load ViennaRNA parameter set ``name`` into this process (once, before any fold)."""
    global _LOADED_PARAMS
    import RNA
    if name == _LOADED_PARAMS:
        return
    check_params(name)
    if _LOADED_PARAMS or _FOLDED:
        raise RuntimeError(f"ViennaRNA parameter set {name!r} needs a process of its own: this one has folded with "
                           f"{_LOADED_PARAMS or 'the default set'!r}, and ViennaRNA would ignore the load")
    getattr(RNA, f"params_load_RNA_{name}")()
    _LOADED_PARAMS = name


def _vienna_ready(fp: FoldParams) -> None:
    """Check that this process folds with ``fp.params`` (see ``use_params``), and note that it folded."""
    global _FOLDED
    if fp.params != _LOADED_PARAMS:
        raise RuntimeError(f"folding with ViennaRNA parameter set {fp.params or 'default'!r} in a process that has "
                           f"{_LOADED_PARAMS or 'the default'!r}: fold other sets through fold_cached (processes of their own)")
    _FOLDED = True


def _fold_vienna(seq: str, fp: FoldParams) -> Fold:
    import RNA
    _vienna_ready(fp)
    n = len(seq)
    md = RNA.md()
    md.temperature = fp.temperature
    if n <= fp.window_above:
        fc = RNA.fold_compound(seq, md)
        structure, energy = fc.mfe()
        fc.exp_params_rescale(energy)
        fc.pf()
        mat = np.array(fc.bpp(), dtype=np.float64)[1:, 1:]
        i, j, p = _sparse(mat)
        method = "vienna-global"
    else:
        md.max_bp_span = fp.span
        md.window_size = fp.window
        fc = RNA.fold_compound(seq, md)
        structure, energy = fc.mfe()
        entries = RNA.pfl_fold(seq, fp.window, fp.span, MIN_PROB)
        i = np.array([e.i - 1 for e in entries], dtype=np.int32)
        j = np.array([e.j - 1 for e in entries], dtype=np.int32)
        p = np.array([e.p for e in entries], dtype=np.float32)
        method = f"vienna-local(W={fp.window},L={fp.span})"
    return Fold(n, i, j, p, structure, float(energy), method)


def _fold_linearpartition(seq: str, fp: FoldParams) -> Fold:
    import linearpartition
    out = linearpartition.partition(seq, mode=fp.mode)
    b = out["bpp"]
    i, j, p = (np.asarray(b[k]) for k in b.dtype.names[:3])
    i, j = i.astype(np.int32), j.astype(np.int32)   # the package reports 0-based positions
    keep = (p >= MIN_PROB) & (i != j)
    i, j, p = i[keep], j[keep], p[keep].astype(np.float32)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return Fold(len(seq), lo, hi, p, out["structure"], float(out["free_energy"]), f"linearpartition-{fp.mode}")


def fold(seq: str, params: FoldParams = FoldParams()) -> Fold:
    """Fold one sequence (no cache)."""
    if params.engine == "vienna":
        return _fold_vienna(seq, params)
    if params.engine == "linearpartition":
        return _fold_linearpartition(seq, params)
    raise ValueError(f"unknown folding engine {params.engine!r} (vienna | linearpartition)")


def mfe_structure(seq: str, params: FoldParams = FoldParams()) -> str:
    """MFE dot-bracket structure (cached along with the bpps)."""
    return fold_cached([seq], params, progress=False)[0].structure


# ---------------------------------------------------------------- cache
def _cache_file(seq: str, key: str, cache_dir: Path) -> Path:
    h = hashlib.sha1(seq.encode()).hexdigest()
    return cache_dir / "folding" / key / h[:2] / f"{h}.npz"


def _save(path: Path, f: Fold) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, n=f.n, i=f.i, j=f.j, p=f.p, structure=f.structure, energy=f.energy, method=f.method)


def _load(path: Path) -> Fold:
    z = np.load(path)
    return Fold(int(z["n"]), z["i"], z["j"], z["p"], str(z["structure"]), float(z["energy"]), str(z["method"]))


def _save_samples(path: Path, structures: list[str]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, structures=np.array(structures))


def _load_samples(path: Path) -> list[str]:
    return [str(x) for x in np.load(path)["structures"]]


def _kind(kind: str):
    """(compute, save, load, progress label) of a cached job kind; looked up at call time, so a
    patched ``fold`` / ``sample_structures`` is the one used."""
    return {"fold": (fold, _save, _load, "folding"),
            "samples": (sample_structures, _save_samples, _load_samples, "sampling structures")}[kind]


def _work(args):
    kind, seq, params, extra, path = args
    compute, save, _, _ = _kind(kind)
    out = compute(seq, params, *extra)
    save(Path(path), out)
    return out


def _cached_map(kind: str, seqs: Sequence[str], params: FoldParams, extra: tuple, key: str,
                workers: int | None, cache_dir: Path | str | None, progress: bool) -> list:
    """``_work(kind, ...)`` for every distinct uncached sequence, in worker processes; the rest from
    the on-disk cache under ``cache/folding/<key>/``."""
    _, _, load, label = _kind(kind)
    cache_dir = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    paths = [_cache_file(s, key, cache_dir) for s in seqs]
    out: list = [None] * len(seqs)
    todo: dict[str, list[int]] = {}
    for k, (s, p) in enumerate(zip(seqs, paths)):
        if p.is_file():
            out[k] = load(p)
        else:
            todo.setdefault(s, []).append(k)
    if todo:
        jobs = [(kind, s, params, extra, str(paths[idx[0]])) for s, idx in todo.items()]
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=len(jobs), desc=f"{label} ({params.engine}{' ' + params.params if params.params else ''})",
                   disable=not progress, unit="seq")
        own = bool(params.params) and params.params != _LOADED_PARAMS   # another parameter set: fresh processes
        if own:
            check_params(params.params)
            # spawned (never forked) processes that load the set first; a worker that dies raises
            # BrokenProcessPool rather than being replaced (spawn needs an importable __main__)
            pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                       initializer=use_params, initargs=(params.params,))
            results = pool.map(_work, jobs, chunksize=4)
        elif workers > 1 and len(jobs) > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(min(workers, len(jobs)))
            results = pool.imap(_work, jobs, chunksize=4)
        else:
            pool, results = contextlib.nullcontext(), map(_work, jobs)
        with pool:
            for job, f in zip(jobs, results):
                for k in todo[job[1]]:
                    out[k] = f
                bar.update()
        bar.close()
    return out


def fold_cached(seqs: Sequence[str], params: FoldParams = FoldParams(), workers: int | None = None,
                cache_dir: Path | str | None = None, progress: bool = True) -> list[Fold]:
    """Fold many sequences in worker processes, reading/writing the on-disk cache."""
    return _cached_map("fold", seqs, params, (), params.key(), workers, cache_dir, progress)


# ---------------------------------------------------------------- Boltzmann samples
SAMPLES = 4   # structures drawn per sequence (graphs use them as structures "sample1".."sample4")


def sample_structures(seq: str, params: FoldParams = FoldParams(), k: int = SAMPLES, seed: int = 0) -> list[str]:
    """``k`` structures drawn from ViennaRNA's Boltzmann ensemble of ``seq`` (stochastic
    backtracking through the partition function), each drawn with its Boltzmann probability.

    Reproducible: the generator is seeded from ``seed`` and the sequence, so a sequence gets the same
    samples in any process and order. Global folding only (up to ``params.window_above`` nt).
    """
    import zlib

    import RNA
    if params.engine != "vienna":
        raise ValueError(f"structure samples need the vienna engine, not {params.engine!r}")
    if len(seq) > params.window_above:
        raise ValueError(f"structure samples: {len(seq)} nt is above the global-folding limit {params.window_above}")
    _vienna_ready(params)
    md = RNA.md()
    md.temperature = params.temperature
    md.uniq_ML = 1                     # stochastic backtracking needs the unique multiloop decomposition
    fc = RNA.fold_compound(seq, md)
    _, energy = fc.mfe()
    fc.exp_params_rescale(energy)
    fc.pf()
    RNA.init_rand(zlib.crc32(f"{seed}:{seq}".encode()))
    return list(fc.pbacktrack(k))


def sampled_cached(seqs: Sequence[str], params: FoldParams = FoldParams(), seed: int = 0, workers: int | None = None,
                   cache_dir: Path | str | None = None, progress: bool = True) -> list[list[str]]:
    """``SAMPLES`` Boltzmann-sampled structures per sequence (``sample_structures``), cached."""
    key = f"{params.key()}-samples{SAMPLES}-seed{seed}"
    return _cached_map("samples", seqs, params, (SAMPLES, seed), key, workers, cache_dir, progress)


def loop_types(structure: str) -> str:
    """bpRNA loop-type letters for a dot-bracket structure.

    S paired (stem) · H hairpin · B bulge · I internal loop · M multiloop · X external loop between
    stems · E dangling ends. Loops are defined by the nested ``()`` pairs; bases paired through
    pseudoknot brackets ``[] {} <>`` are stems (S).
    """
    n = len(structure)
    nested = "".join(c if c in "()" else "." for c in structure)
    partner = pair_table(nested)
    allpairs = pair_table(structure)
    out = ["?"] * n
    for k in range(n):
        if allpairs[k] >= 0:
            out[k] = "S"

    def branches(lo: int, hi: int) -> list[tuple[int, int]]:
        br, p = [], lo
        while p < hi:
            if partner[p] > p:
                br.append((p, int(partner[p])))
                p = partner[p] + 1
            else:
                p += 1
        return br

    def fill(lo: int, hi: int, br: list[tuple[int, int]], letter: str) -> None:
        """Label unpaired bases of [lo, hi) outside the branches."""
        p = lo
        for a, b in br:
            for q in range(p, a):
                if out[q] == "?":
                    out[q] = letter
            p = b + 1
        for q in range(p, hi):
            if out[q] == "?":
                out[q] = letter

    # external loop
    top = branches(0, n)
    if not top:
        fill(0, n, [], "E")
    else:
        fill(0, top[0][0], [], "E")
        fill(top[-1][1] + 1, n, [], "E")
        fill(top[0][0], top[-1][1] + 1, top, "X")
    # loops closed by each pair
    for i in range(n):
        j = int(partner[i])
        if j <= i:
            continue
        br = branches(i + 1, j)
        if not br:
            letter = "H"
        elif len(br) == 1:
            a, b = br[0]
            left, right = a - i - 1, j - b - 1
            letter = "B" if (left == 0) != (right == 0) else "I"
        else:
            letter = "M"
        fill(i + 1, j, br, letter)
    return "".join(out)


def base_pair_distance(s1: str, s2: str) -> int:
    """Number of base pairs in one structure but not the other."""
    def pairs(s):
        pt = pair_table(s)
        return {(i, int(j)) for i, j in enumerate(pt) if j > i}
    return len(pairs(s1) ^ pairs(s2))


# Folding settings tried against the given structures (``structure_agreement``). Keys of a setting:
# engine (vienna | linearpartition), temperature, dangles, noLP (ViennaRNA model details), params
# (ViennaRNA parameter set, ``RNA.params_load_RNA_<params>``), mode (LinearPartition).
FOLDING_SETTINGS: dict[str, dict] = {
    "ViennaRNA 37 °C (default)": {},
    **{f"ViennaRNA {t} °C": dict(temperature=float(t)) for t in (25, 30, 33, 40, 42, 45, 50)},
    **{f"ViennaRNA dangles={d}": dict(dangles=d) for d in (0, 1, 3)},
    "ViennaRNA noLP": dict(noLP=1),
    **{f"ViennaRNA {p}": dict(params=p) for p in ("Turner1999", "Andronescu2007", "Langdon2018")},
    "LinearPartition eterna": dict(engine="linearpartition", mode="eterna"),
    "LinearPartition vienna": dict(engine="linearpartition", mode="vienna"),
}


def mfe_structures(seqs: list[str], setting: dict) -> list[str]:
    """MFE structures of ``seqs`` under one folding setting (see ``FOLDING_SETTINGS``).

    A ``params`` setting changes ViennaRNA's process-wide energy parameters (see ``use_params``), so
    ``structure_agreement`` folds each setting in a process of its own.
    """
    unknown = set(setting) - {"engine", "temperature", "dangles", "noLP", "params", "mode"}
    if unknown:
        raise ValueError(f"unknown folding setting key(s) {sorted(unknown)}")
    engine = setting.get("engine", "vienna")
    if engine == "linearpartition":     # the pipeline's own fold: one MFE + bpp call per sequence
        fp = FoldParams(engine=engine, mode=setting.get("mode", FoldParams.mode))
        return [fold(s, fp).structure for s in seqs]
    if engine != "vienna":
        raise ValueError(f"unknown folding engine {engine!r} (vienna | linearpartition)")
    import RNA
    if "params" in setting:
        use_params(setting["params"])
    _vienna_ready(FoldParams(params=setting.get("params", "")))
    md = RNA.md()
    for k in ("temperature", "dangles", "noLP"):
        if k in setting:
            setattr(md, k, setting[k])
    return [RNA.fold_compound(s, md).mfe()[0] for s in seqs]


def structure_agreement(seqs: list[str], structures: list[str], settings: dict[str, dict] | None = None,
                        progress: bool = True) -> "pd.DataFrame":
    """Base-pair distance between each setting's MFE structures and the given ``structures``.

    One row per setting: mean and median base-pair distance, share of molecules reproduced exactly.
    """
    import pandas as pd
    settings = FOLDING_SETTINGS if settings is None else settings
    rows = []
    ctx = mp.get_context("spawn")
    for name, setting in tqdm(settings.items(), desc="folding settings", disable=not progress):
        with ProcessPoolExecutor(1, mp_context=ctx) as ex:   # a fresh process: see mfe_structures
            mfe = ex.submit(mfe_structures, list(seqs), setting).result()
        d = np.array([base_pair_distance(a, b) for a, b in zip(mfe, structures)])
        rows.append(dict(setting=name, mean_bp_distance=d.mean(), median_bp_distance=float(np.median(d)),
                         exact=float(np.mean(d == 0)), molecules=len(d)))
    return pd.DataFrame(rows).set_index("setting")
