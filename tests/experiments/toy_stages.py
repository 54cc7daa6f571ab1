"""Toy pipeline stages for the sweep tests: arithmetic, a journal of every execution, optional sleep/failure.

``TOY_JOURNAL`` (an environment variable, so it stays out of the run ids) names a file to which every stage
execution appends one line ``<kind> <run_id or key> <pid>``: the tests count executions from it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fewbits.experiments.base import Stage, StageContext


def journal(line: str) -> None:
    """Append one line to the journal named by TOY_JOURNAL (O_APPEND: lines from processes never mix)."""
    path = os.environ.get("TOY_JOURNAL")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\n").encode())
        os.close(fd)


class Base(Stage):
    """Saved stage: value = 10 * x + seed, written to value.json."""

    kind = "base"
    uses = {"x": None, "seed": 0}
    defaults = {"sleep": 0.0}
    saved = True

    def run(self, ctx: StageContext) -> dict[str, Any]:
        journal(f"base {ctx.out_dir.name} {os.getpid()}")
        time.sleep(ctx.params["sleep"])
        value = 10 * ctx.config["x"] + ctx.config["seed"]
        if ctx.is_main:  # one process of a multi-process launch writes
            (ctx.out_dir / "value.json").write_text(json.dumps(value))
        ctx.state["value"] = value
        return {"value": value}


class Add(Stage):
    """Per-run stage: score = base value + delta (read from memory, or the saved folder when cached)."""

    kind = "add"
    defaults = {"delta": 1.0, "sleep": 0.0, "fail": False}

    @classmethod
    def check(cls, params: dict[str, Any], config: dict[str, Any]) -> None:
        if params["delta"] < 0:
            from fewbits.errors import bad_param

            raise bad_param("add.delta", "a number >= 0", params["delta"], "add")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        journal(f"add {ctx.run_id} {os.getpid()}")
        if ctx.params["fail"]:
            raise RuntimeError("asked to fail")
        time.sleep(ctx.params["sleep"])
        value = ctx.state.get("value")
        source = "memory"
        if value is None:
            value = json.loads((ctx.outputs["base"].dir / "value.json").read_text())
            source = "disk"
        return {"metrics": {"score": value + ctx.params["delta"]}, "sizes": {"bytes": 8}, "source": source}


TOY_STAGES: dict[str, type[Stage]] = {"base": Base, "add": Add}

if __name__ == "__main__":  # python toy_stages.py RECIPE OUT [i/n]: a sweep with these stages (for kill tests)
    from fewbits.experiments.recipe import load_recipe
    from fewbits.experiments.sweep import parse_shard, sweep

    shard = parse_shard(sys.argv[3]) if len(sys.argv) > 3 else None
    sweep(load_recipe(Path(sys.argv[1]), TOY_STAGES), sys.argv[2], shard=shard, poll_s=0.05)
