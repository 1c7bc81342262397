"""Command line: ``python -m openvaccine <command> [options] [key=value ...]``.

Commands: data, features, train, submit, score, predict, bench, report-loops, report-structures.
Trailing ``key.sub=value`` arguments override the YAML config.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ConfigError, load_config, parse_window


def window_arg(text: str) -> tuple[int, int]:
    """argparse type of ``--window`` / ``--positions`` (:func:`~openvaccine.config.parse_window`)."""
    try:
        return parse_window(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cfg(args):
    return load_config(args.config, args.overrides)


def cmd_data(args):
    from .data import INPUT_DIR, load_sample_submission, load_test, load_train, verify_input
    problems = verify_input(INPUT_DIR)
    if problems:
        sys.exit("input/ check failed:\n  " + "\n  ".join(problems))
    tr, te, ss = load_train(), load_test(), load_sample_submission()
    print(f"input/ OK: train {len(tr)} molecules ({int(tr.SN_filter.sum())} SN_filter=1), "
          f"test {len(te)} ({ {int(k): int(v) for k, v in te.seq_length.value_counts().sort_index().items()} }), "
          f"sample_submission {len(ss)} rows")


def cmd_features(args):
    from .data import load_test, load_train
    from .graphs import build_graphs, extra_opinions, fold_params, fold_params2, graph_params
    from .folding import fold_cached
    cfg = _cfg(args)
    p = graph_params(cfg)
    tr, te = load_train(), load_test()
    seqs = list(tr.sequence) + list(te.sequence)
    t0 = time.perf_counter()
    fold_cached(seqs, fold_params(p), workers=args.workers)
    t1 = time.perf_counter()
    print(f"folding ({p['engine']}): {len(seqs)} molecules in {t1 - t0:.1f} s")
    variants = ["given"] + (["mfe"] if args.mfe else [])
    fp2 = fold_params2(p)
    if fp2:
        fold_cached(seqs, fp2, workers=args.workers)
        print(f"folding ({p['engine2']}): {len(seqs)} molecules in {time.perf_counter() - t1:.1f} s")
        variants += ["mfe2"] if args.mfe else []
    for name, fx in extra_opinions(p):
        t1 = time.perf_counter()
        fold_cached(seqs, fx, workers=args.workers)
        print(f"folding (vienna, {name}): {len(seqs)} molecules in {time.perf_counter() - t1:.1f} s")
    for v in variants:
        t1 = time.perf_counter()
        g_tr = build_graphs(tr, p, structure=v)
        g_te = build_graphs(te, p, structure=v)
        print(f"graphs ({v} structures): {len(g_tr)} train + {len(g_te)} test in "
              f"{time.perf_counter() - t1:.1f} s")


def cmd_report_loops(args):
    from .data import load_test, load_train
    from .folding import loop_types
    for name, df in (("train", load_train()), ("test", load_test())):
        mol = bases = agree = 0
        for s, lt in zip(df.structure, df.predicted_loop_type):
            ours = loop_types(s)
            mol += ours == lt
            agree += sum(a == b for a, b in zip(ours, lt))
            bases += len(lt)
        print(f"{name}: loop types reproduced for {mol}/{len(df)} molecules ({100 * mol / len(df):.1f}%), "
              f"{agree}/{bases} bases ({100 * agree / bases:.2f}%)")


def cmd_train(args):
    from .train import train_run, train_runs
    configs = [c for c in args.config if "=" not in c]           # `--config a b k=v`: k=v is an override
    overrides = [c for c in args.config if "=" in c] + args.overrides
    if len(configs) > 1 and args.run_name:
        sys.exit("train: --run-name names one run; with several configs each run takes its config's name")
    cfgs = [load_config(c, overrides) for c in configs]
    if len(configs) > 1 and args.budget:
        from .budget import within_budget
        cfgs = within_budget(cfgs, args.budget)
    if args.plan:
        from .train import MODELS_DIR, unfinished_folds
        names = [args.run_name or c.get("name", "run") for c in cfgs]
        print("train --plan: would train " + ", ".join(
            f"{n} ({len(unfinished_folds(c, MODELS_DIR / n))} folds left)" for n, c in zip(names, cfgs)))
    elif len(configs) == 1:
        train_run(cfgs[0], run_name=args.run_name)
    else:
        train_runs(cfgs)


def cmd_submit(args):
    from .predict import make_submission
    make_submission(args.runs, out=args.out, tta=not args.no_tta)


def cmd_score(args):
    from .predict import BlendError, blend_report, blendable_runs
    runs = blendable_runs(args.runs, folds=args.folds)
    try:
        rep = blend_report(runs=runs, positions=args.positions, folds=args.folds)
    except BlendError as e:                    # e.g. a run trained on other folds than those scored
        raise SystemExit(str(e))
    print(json.dumps(rep, indent=2))


def cmd_predict(args):
    from .predict import predict_file
    predict_file(args.input, args.out, runs=args.runs, window=args.window, plot_dir=args.plot_dir)


def cmd_report(args):
    from .train import experiments_table
    text = experiments_table()
    if args.out:
        from pathlib import Path
        Path(args.out).write_text(text)
    print(text)


def cmd_report_frames(args):
    from .analysis import frame_sensitivity
    from .data import load_test
    from .graphs import build_graphs
    from .predict import NoModelsError, load_runs
    te = load_test()
    te = te[te["seq_length"] > 107].head(args.n).reset_index(drop=True)
    try:
        runs = load_runs(args.runs, folds=args.folds)
    except NoModelsError as e:
        raise SystemExit(str(e))
    for run in runs:
        table = frame_sensitivity(run.checkpoints, build_graphs(te, run.graph, structure="given", progress=False))
        print(f"{run.name} (folds {', '.join(str(ck['fold']) for ck in run.checkpoints)}; {len(te)} molecules of "
              "more than 107 nt): " + "  ".join(f"{r.positions}: {r.rms_difference:.4f}" for r in table.itertuples()))


def cmd_report_structures(args):
    import numpy as np
    from .folding import structure_agreement
    from .data import load_test, load_train
    df = load_train() if args.split == "train" else load_test()
    df = df[df.seq_length == args.length] if args.length else df
    if len(df) == 0:
        sys.exit(f"no {args.split} molecules of length {args.length}")
    rng = np.random.default_rng(args.seed)
    df = df.iloc[np.sort(rng.choice(len(df), min(args.n, len(df)), replace=False))]
    t = structure_agreement(list(df.sequence), list(df.structure))
    print(f"given structures of {len(df)} {args.split} molecules"
          f"{f' of {args.length} nt' if args.length else ''} (seed {args.seed}) vs. MFE structures:")
    print("| setting | mean bp distance | median | reproduced exactly |\n| --- | --- | --- | --- |")
    for name, r in t.iterrows():
        print(f"| {name} | {r.mean_bp_distance:.2f} | {r.median_bp_distance:.0f} | {100 * r.exact:.0f}% |")


def cmd_bench(args):
    from .train import benchmark
    benchmark(_cfg(args), n_graphs=args.n, passes=args.passes)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="openvaccine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def with_config(p, default="default"):
        p.add_argument("--config", default=default, help="YAML under configs/ or a path")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        return p

    sub.add_parser("data", help="verify input/ and load every file").set_defaults(fn=cmd_data)
    p = with_config(sub.add_parser("features", help="fold all molecules and build all graphs (cached)"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--mfe", action="store_true", help="also build graphs on MFE structures (TTA)")
    p.set_defaults(fn=cmd_features)
    sub.add_parser("report-loops", help="agreement of our loop-type annotation with the given one") \
        .set_defaults(fn=cmd_report_loops)
    p = sub.add_parser("report-structures", help="how closely folding settings reproduce the given structures")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--length", type=int, default=130, help="only molecules of this length (0: all)")
    p.add_argument("--n", type=int, default=250, help="molecules sampled")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_report_structures)
    p = sub.add_parser("report-frames", help="how much runs' predictions for the 130-nt test molecules depend on "
                                             "counting their positions from the 5' end or aligned at the 3' end")
    p.add_argument("--runs", nargs="+", required=True, help="run folders under models/ (fold subsets too)")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="these folds only (default: all)")
    p.add_argument("--n", type=int, default=600, help="the first N test molecules longer than 107 nt")
    p.set_defaults(fn=cmd_report_frames)
    p = sub.add_parser("train", help="K-fold training of one config, or of several sharing one pool of fold processes")
    p.add_argument("--config", nargs="+", default=["default"], help="YAMLs under configs/ or paths")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (of every config)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--budget", type=float, default=None, metavar="MIN",
                   help="with several configs: keep them, in order, while the estimated minutes of training "
                        "and of make submit's prediction passes fit in MIN on this CPU (0: no budget)")
    p.add_argument("--plan", action="store_true",
                   help="print the runs it would train (with --budget: after measuring this CPU) and train nothing")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("submit", help="ensemble trained runs into submissions/submission.csv")
    p.add_argument("--runs", nargs="*", default=None, help="run folders under models/ (default: all complete)")
    p.add_argument("--out", default=None)
    p.add_argument("--no-tta", action="store_true")
    p.set_defaults(fn=cmd_submit)
    p = sub.add_parser("score", help="OOF MCRMSE of each run and of the blend")
    p.add_argument("--runs", nargs="*", default=None)
    p.add_argument("--positions", default=None, metavar="START:END", type=window_arg,
                   help="score positions START..END-1 only (e.g. 48:68 after train.label_positions=48)")
    p.add_argument("--folds", nargs="+", type=int, default=None,
                   help="score and blend on the molecules these folds (numbered as in the first run) held out "
                        "only: runs trained on some folds (train.only_folds) compare there")
    p.set_defaults(fn=cmd_score)
    p = sub.add_parser("predict", help="per-base predictions for new sequences (FASTA/CSV/JSON)")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs="*", default=None)
    p.add_argument("--window", default=None, type=window_arg, metavar="START:END",
                   help="summary window START:END (0-based, end exclusive)")
    p.add_argument("--plot-dir", default=None, help="write one PNG per molecule here")
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser("report", help="table of every trained run (full and fold-subset) from models/*/cv.json")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_report)
    p = with_config(sub.add_parser("bench", help="graphs/second for training and inference"))
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--passes", type=int, default=1, help="timed passes after the warm-up (the fastest counts)")
    p.set_defaults(fn=cmd_bench)
    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except Exception as e:
        from .data import DataError          # here, not at start-up: it imports pandas (~0.5 s)
        if not isinstance(e, (ConfigError, DataError, FileNotFoundError)):
            raise
        sys.exit(f"openvaccine {args.cmd}: error: {e}")          # the user's input: one line, no traceback


if __name__ == "__main__":
    main()
