"""Run a recipe's grid (a TOML file, see recipes/): every run once, resumable, shardable.

Each run is identified by a hash of its resolved configuration; its result goes to OUT/<run_id>/result.json
(config, metrics, sizes, timings, versions, seed), written only when the run completes. Runs already done
are skipped, so a sweep killed at any moment (SIGKILL included) is simply started again: it loses at most
the runs that were in flight. Stage outputs that runs share (the FP32 fine-tune of P1, the STE checkpoint
of P2, the quantized base of P3) are computed once into OUT/_stages/ and reused.

Scale out with --shard i/n (0 <= i < n): the n shards cover the grid exactly once, so a job array can run
them on n machines into one shared OUT, e.g. on SLURM
  fewbits sweep recipes/p1-full.toml --out /shared/p1 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
and a multi-GPU run goes through torchrun (torchrun --nproc_per_node 4 -m fewbits.cli sweep ...).

--set KEY=VALUE overrides a setting for every run (e.g. --set data_dir=~/glue or --set finetune.epochs=1);
VALUE is read as TOML (numbers, true/false, [lists]) or else as a string. --dry-run lists the runs and which
are done, computing nothing, and checks what can be checked offline (task names, models, the data folder):
a problem exits with status 2. Exit status 1 when a run failed (its error is in OUT/_failed/<run_id>.json);
a run folder whose result.json is damaged is moved to OUT/_damaged/ and the run computed again.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fewbits sweep`."""
    parser.add_argument("recipe", metavar="RECIPE", help="recipe file (TOML), e.g. recipes/p1-offline.toml")
    parser.add_argument("--out", required=True, metavar="RESULTS_DIR", help="results folder (shared by all shards)")
    parser.add_argument("--shard", default=None, metavar="i/n", help="run only shard i of n (0 <= i < n)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and which are done; run nothing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="override a setting for every run (repeatable): data_dir=..., finetune.epochs=1, ...")
    parser.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                        help="wait between retries when the remaining runs are in flight elsewhere (10)")


def _settings(items: list[str]) -> dict:
    from fewbits.errors import bad_param
    from fewbits.experiments.recipe import parse_value

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise bad_param("--set", "KEY=VALUE, e.g. data_dir=~/glue or finetune.epochs=1", item, "fewbits sweep")
        settings[key.strip()] = parse_value(value.strip())
    return settings


def _dry_run(recipe, out: str, shard) -> int:
    from fewbits.errors import FewbitsValueError
    from fewbits.experiments.base import stage_keys
    from fewbits.experiments.store import Store
    from fewbits.experiments.sweep import offline_problems, plan

    statuses = plan(recipe, out, shard)
    store = Store(out)
    shared = {(kind, key) for s in statuses
              for kind, key in zip(s.run.config["pipeline"], stage_keys(recipe.stages, s.run.config))
              if recipe.stages[kind].saved}
    ready = sum(store.stage_info(kind, key) is not None for kind, key in shared)
    for s in statuses:
        detail = f"  ({s.detail})" if s.detail else ""
        print(f"{s.status:<8} {s.run.run_id}  {s.run.label}{detail}")
    counts = {k: sum(s.status == k for s in statuses) for k in ("done", "failed", "pending", "damaged")}
    where = f" (shard {shard[0]}/{shard[1]} of {len(recipe.runs)})" if shard else ""
    damaged = f", {counts['damaged']} damaged (redone by the next sweep)" if counts["damaged"] else ""
    print(f"{recipe.name}: {len(statuses)} runs{where}: {counts['done']} done, {counts['pending']} pending, "
          f"{counts['failed']} failed{damaged}; shared stage outputs: {ready}/{len(shared)} ready")
    problems = offline_problems([s.run for s in statuses], recipe.env)
    for problem in problems:
        print(f"problem  {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise FewbitsValueError(f"{recipe.name}: {problems[0]}{more}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Read the recipe, then list (--dry-run) or run this shard's runs and print a summary."""
    from tqdm.auto import tqdm

    from fewbits.commands.preflight import check_out_dir
    from fewbits.experiments.recipe import load_recipe
    from fewbits.experiments.sweep import parse_shard, shard_runs, sweep

    shard = parse_shard(args.shard) if args.shard else None
    recipe = load_recipe(args.recipe, overrides=_settings(args.settings))
    if args.dry_run:
        return _dry_run(recipe, args.out, shard)
    check_out_dir(args.out, "sweep")
    runs = shard_runs(recipe.runs, shard)
    bar = tqdm(total=len(runs), unit="run", desc=recipe.name, file=sys.stderr, dynamic_ncols=True)
    outcome = sweep(recipe, args.out, shard=shard, poll_s=args.poll,
                    on_done=lambda run, status: (bar.update(1), bar.set_postfix_str(status)))
    bar.close()
    print(f"{recipe.name}: {len(outcome['done'])} run(s) computed, {len(outcome['skipped'])} already done, "
          f"{len(outcome['failed'])} failed; results in {args.out} (fewbits report {args.out})")
    for run_id in outcome["failed"]:
        print(f"  failed: {run_id} (see {args.out}/_failed/{run_id}.json)")
    return 1 if outcome["failed"] else 0
