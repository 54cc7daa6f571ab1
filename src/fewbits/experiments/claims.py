"""The papers' reported numbers (as data) and their claims, checked against our aggregated results.

Every verdict is computed from the numbers handed in: nothing here knows what our runs found. A claim
that compares means compares the means over seeds; "the same" and "matches" use the tolerances below,
which the report prints beside each verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# --- the papers' numbers (PAPERS.md), in percent for P1/P2 and as fractions for P3, as the papers print them

P1_REFERENCE: dict[str, dict[str, dict[int, float]]] = {
    # GLUE average over 8 tasks; bits 32 is the FP32 model
    "bert-base-uncased": {"fp32": {32: 83.7},
                          "linear": {5: 79.7, 4: 69.4, 3: 60.6, 2: 54.7, 1: 52.2},
                          "kmeans": {5: 83.9, 4: 83.5, 3: 82.9, 2: 80.4, 1: 59.8}},
    "albert-base-v2": {"fp32": {32: 85.2}, "kmeans": {4: 79.6, 3: 61.8}},
}
P1_REFERENCE_DEFAULT = "bert-base-uncased"  # shown beside models the paper did not run (e.g. MiniLM offline)

P2_REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    # test accuracy (%) of ResNet-18, mean of 5 trials; keys "A/W"
    "cifar10": {"32/2": {"ste": 93.5, "msqe": 93.6, "fisher": 93.6, "kd": 94.0},
                "4/1": {"ste": 90.7, "msqe": 91.3, "fisher": 91.2, "kd": 91.4},
                "2/2": {"ste": 89.3, "msqe": 89.4, "fisher": 89.4, "kd": 89.9}},
    "cifar100": {"4/4": {"ste": 72.0, "msqe": 72.3, "fisher": 72.1, "kd": 73.6}},
}
P2_TEACHER = {"cifar10": 94.4, "cifar100": 74.1}
P2_METHODS = ("ste", "msqe", "fisher", "kd")
P2_PAPER_T = 4.0

P3_REFERENCE: dict[str, dict[str, float]] = {
    # MRPC F1, mean of 3 runs: weights, structure (full precision), structure on 8/4/2/1-bit weights
    "bert-base-uncased": {"weights": 0.889, "structure": 0.904, "structure-8": 0.906, "structure-4": 0.894,
                          "structure-2": 0.812, "structure-1": 0.534, "prior": 0.8122},  # prior: always "equivalent"
}
P3_COLUMNS = ("weights", "structure", "structure-8", "structure-4", "structure-2", "structure-1")

# --- tolerances of the soft claims (fractions of the metric, i.e. 0.01 = one point)
SAME_TOLERANCE = 0.005  # "the same": |difference| within this, or within the larger sd over seeds
MATCH_TOLERANCE = 0.01  # "matches" / "as good as": at most this much below
MOSTLY_TOLERANCE = 0.03  # "mostly holds": at most this much below
PRIOR_TOLERANCE = 0.01  # "collapses to the label prior": at most this much above the prior's score


@dataclass(frozen=True)
class Stat:
    """Mean and sample sd (ddof 1; 0 for one value) of one cell's values over seeds."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """The statistics of ``values`` (at least one)."""
        arr = np.asarray(values, np.float64)
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))


@dataclass
class Verdict:
    """One claim checked: how many of its comparisons hold, and the ones that do not."""

    paper: str
    claim: str  # the paper's claim in words
    test: str  # what was compared
    passed: int = 0
    total: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        """Count one comparison; keep its description when it fails."""
        self.total += 1
        self.passed += bool(ok)
        if not ok:
            self.failures.append(what)

    @property
    def status(self) -> str:
        """``holds``, ``partly holds``, ``does not hold`` or ``not testable`` (no comparison possible)."""
        if self.total == 0:
            return "not testable"
        if self.passed == self.total:
            return "holds"
        return "partly holds" if self.passed else "does not hold"

    def line(self) -> str:
        """The verdict as one Markdown bullet."""
        if self.total == 0:
            return f"- **not testable**: {self.claim}: no runs to compare ({self.test})"
        text = f"- **{self.status}**: {self.claim}: {self.test}: holds at {self.passed}/{self.total}"
        if self.failures:
            shown = "; ".join(self.failures[:6]) + (f"; and {len(self.failures) - 6} more" if len(self.failures) > 6
                                                     else "")
            text += f" (not at: {shown})"
        return text


def _same(a: Stat, b: Stat) -> bool:
    return abs(a.mean - b.mean) <= max(SAME_TOLERANCE, a.sd, b.sd)


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}"


# --- P1 -----------------------------------------------------------------------------------------------------

def p1_claims(avg: Mapping[tuple[str, str, int], Stat], cells: Mapping[tuple[str, str, int, str], Stat],
              prior: Mapping[tuple[str, str], float]) -> list[Verdict]:
    """P1's claims from the average ``avg[(model, scheme, bits)]`` and the cells ``cells[(model, scheme, bits, task)]``
    (scores as fractions), and the label prior's score ``prior[(model, task)]``."""
    models = sorted({k[0] for k in avg})
    every_bits = Verdict("P1", "k-means beats linear at every bit width", "mean task score, k-means > linear")
    every_task = Verdict("P1", "k-means beats linear on every task", "each task and bit width, k-means > linear")
    gap = Verdict("P1", "the gap grows as bits fall", "gap (k-means - linear) at b-1 bits >= gap at b bits")
    optimal = Verdict("P1", "(ours) optimal 1-D clustering is at least as good as k-means",
                      f"mean task score, optimal >= k-means - {_fmt(SAME_TOLERANCE)} points")
    collapse = Verdict("P1", "linear quantization at 1 bit collapses to the label prior (CoLA, MRPC in the paper)",
                       f"each task, linear 1-bit score <= prior + {_fmt(PRIOR_TOLERANCE)} points")
    for model in models:
        bits = sorted({b for (m, s, b) in avg if m == model and s == "kmeans" and (m, "linear", b) in avg})
        gaps = {}
        for b in bits:
            k, lin = avg[(model, "kmeans", b)], avg[(model, "linear", b)]
            gaps[b] = k.mean - lin.mean
            every_bits.check(gaps[b] > 0, f"{model} {b}-bit: {_fmt(k.mean)} vs {_fmt(lin.mean)}")
        for low, high in zip(bits, bits[1:]):
            gap.check(gaps[low] >= gaps[high], f"{model} {low} vs {high} bits: gap {_fmt(gaps[low])} vs "
                                               f"{_fmt(gaps[high])}")
        for (m, s, b, task), k in sorted(cells.items()):
            if m == model and s == "kmeans" and (m, "linear", b, task) in cells:
                lin = cells[(m, "linear", b, task)]
                every_task.check(k.mean > lin.mean, f"{model} {task} {b}-bit: {_fmt(k.mean)} vs {_fmt(lin.mean)}")
        for (m, s, b), o in sorted(avg.items()):
            if m == model and s == "optimal" and (m, "kmeans", b) in avg:
                k = avg[(m, "kmeans", b)]
                optimal.check(o.mean >= k.mean - SAME_TOLERANCE, f"{model} {b}-bit: {_fmt(o.mean)} vs {_fmt(k.mean)}")
        for (m, s, b, task), lin in sorted(cells.items()):
            if m == model and s == "linear" and b == 1 and (m, task) in prior:
                p = prior[(m, task)]
                collapse.check(lin.mean <= p + PRIOR_TOLERANCE, f"{model} {task}: {_fmt(lin.mean)} vs prior {_fmt(p)}")
    return [every_bits, every_task, gap, optimal, collapse]


# --- P2 -----------------------------------------------------------------------------------------------------

def p2_claims(acc: Mapping[tuple[str, str, str], Stat], trace: Mapping[tuple[str, str, str], Stat],
              sweep_acc: Mapping[tuple[str, str, float], Stat],
              sweep_trace: Mapping[tuple[str, str, float], Stat]) -> list[Verdict]:
    """P2's claims from accuracy ``acc[(task, "A/W", method)]`` and fitted Hessian trace ``trace[...]`` (same
    keys), and the KD temperature sweep ``sweep_acc/sweep_trace[(task, "A/W", T)]``."""
    pairs = sorted({(t, aw) for t, aw, _ in acc})
    order = [("kd", "fisher"), ("kd", "msqe"), ("fisher", "ste"), ("msqe", "ste")]
    ranked = {(a, b): Verdict("P2", f"{a.upper()} >= {b.upper()} at every bit width",
                              f"mean accuracy, {a} >= {b}") for a, b in order}
    same_acc = Verdict("P2", "MSQE and Fisher give the same accuracy",
                       f"|difference| <= max({_fmt(SAME_TOLERANCE)} points, the larger sd)")
    same_flat = Verdict("P2", "MSQE and Fisher give the same flatness",
                        "|trace difference| <= max(5% of the larger trace, the larger sd)")
    for task, aw in pairs:
        for (a, b), verdict in ranked.items():
            if (task, aw, a) in acc and (task, aw, b) in acc:
                x, y = acc[(task, aw, a)], acc[(task, aw, b)]
                verdict.check(x.mean >= y.mean, f"{task} {aw}: {_fmt(x.mean)} vs {_fmt(y.mean)}")
        if (task, aw, "msqe") in acc and (task, aw, "fisher") in acc:
            x, y = acc[(task, aw, "msqe")], acc[(task, aw, "fisher")]
            same_acc.check(_same(x, y), f"{task} {aw}: {_fmt(x.mean)} vs {_fmt(y.mean)}")
        if (task, aw, "msqe") in trace and (task, aw, "fisher") in trace:
            x, y = trace[(task, aw, "msqe")], trace[(task, aw, "fisher")]
            tol = max(0.05 * max(abs(x.mean), abs(y.mean)), x.sd, y.sd)
            same_flat.check(abs(x.mean - y.mean) <= tol, f"{task} {aw}: {x.mean:.4g} vs {y.mean:.4g}")
    flatter = Verdict("P2", "higher temperature gives flatter minima", "KD fitted Hessian trace falls from each T "
                      "to the next higher T")
    better = Verdict("P2", "higher temperature gives higher accuracy", "KD accuracy rises from each T to the next "
                     "higher T")
    for verdict, table, want_lower in ((flatter, sweep_trace, True), (better, sweep_acc, False)):
        for task, aw in sorted({(t, aw) for t, aw, _ in table}):
            temps = sorted(T for t, a, T in table if (t, a) == (task, aw))
            for lo, hi in zip(temps, temps[1:]):
                x, y = table[(task, aw, lo)].mean, table[(task, aw, hi)].mean
                ok = y < x if want_lower else y > x
                shown = (f"{x:.4g} -> {y:.4g}" if want_lower else f"{_fmt(x)} -> {_fmt(y)}")
                verdict.check(ok, f"{task} {aw} T {lo:g} -> {hi:g}: {shown}")
    return [*ranked.values(), same_acc, same_flat, flatter, better]


# --- P3 -----------------------------------------------------------------------------------------------------

def p3_claims(cells: Mapping[tuple[str, str, str], Stat], prior: Mapping[tuple[str, str], float]) -> list[Verdict]:
    """P3's claims from ``cells[(model, task, column)]`` (columns of :data:`P3_COLUMNS`) and the label prior."""
    match = Verdict("P3", "fine-tuning the structure matches fine-tuning the weights",
                    f"structure >= weights - {_fmt(MATCH_TOLERANCE)} points")
    eight = Verdict("P3", "8-bit weights match full precision",
                    f"structure-8 >= structure - {_fmt(MATCH_TOLERANCE)} points")
    four = Verdict("P3", "4-bit weights mostly hold", f"structure-4 >= structure - {_fmt(MOSTLY_TOLERANCE)} points")
    two = Verdict("P3", "2-bit weights collapse to the label prior",
                  f"structure-2 <= prior + {_fmt(PRIOR_TOLERANCE)} points")
    one = Verdict("P3", "1-bit weights are worse than 2-bit or unstable", "structure-1 <= structure-2, or a larger "
                  "sd over seeds")
    for model, task in sorted({(m, t) for m, t, _ in cells}):
        def get(column: str) -> Stat | None:
            return cells.get((model, task, column))  # noqa: B023 - used within this iteration only

        where = f"{model} {task}"
        if get("structure") and get("weights"):
            match.check(get("structure").mean >= get("weights").mean - MATCH_TOLERANCE,
                        f"{where}: {get('structure').mean:.3f} vs {get('weights').mean:.3f}")
        for verdict, column, tol in ((eight, "structure-8", MATCH_TOLERANCE), (four, "structure-4", MOSTLY_TOLERANCE)):
            if get(column) and get("structure"):
                verdict.check(get(column).mean >= get("structure").mean - tol,
                              f"{where}: {get(column).mean:.3f} vs {get('structure').mean:.3f}")
        if get("structure-2") and (model, task) in prior:
            two.check(get("structure-2").mean <= prior[(model, task)] + PRIOR_TOLERANCE,
                      f"{where}: {get('structure-2').mean:.3f} vs prior {prior[(model, task)]:.3f}")
        if get("structure-1") and get("structure-2"):
            s1, s2 = get("structure-1"), get("structure-2")
            one.check(s1.mean <= s2.mean or s1.sd > s2.sd,
                      f"{where}: {s1.mean:.3f} +- {s1.sd:.3f} vs {s2.mean:.3f} +- {s2.sd:.3f}")
    return [match, eight, four, two, one]


def p3_scheme_claim(stats: Mapping[tuple, Stat]) -> Verdict:
    """Ours, not P3's (P3 quantizes linearly): does a k-means base keep as much as a linear base at equal bits?
    ``stats[(model, task, column, scheme)]``."""
    verdict = Verdict("P3", "(ours) a k-means base is at least as good as a linear base at the same bits",
                      f"structure-b on k-means >= structure-b on linear - {_fmt(MATCH_TOLERANCE)} points")
    for (model, task, col, scheme), km in sorted(stats.items(), key=str):
        if scheme == "kmeans" and (lin := stats.get((model, task, col, "linear"))) is not None:
            verdict.check(km.mean >= lin.mean - MATCH_TOLERANCE,
                          f"{model} {task} {col}: {km.mean:.3f} vs {lin.mean:.3f}")
    return verdict
