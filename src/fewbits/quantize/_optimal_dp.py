"""Compiled (numba) dynamic program behind ``optimal``: the exact least-squares partition of sorted atoms.

Atoms are a group's sorted distinct values (or histogram bins) with weights. The program works on
true squared errors from prefix sums pivoted at the weighted median and anchored at the first atom
of the bulk, and redoes in double-double any row whose rounding could decide its argmin, so a
tensor's outliers neither swamp the bulk's sums nor get merged by rounding. Callers validate.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from fewbits.quantize._kernels import _NB


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's fma), for the exact products of double-double arithmetic."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64, f64, f64]))
        return builder.call(fn, args)

    return sig, codegen


@njit(**_NB)
def _two_sum(a, b):
    """``a + b`` as an unevaluated pair ``(s, e)`` with ``s + e`` exact (Knuth)."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@njit(**_NB)
def _dd_add(ah, al, bh, bl):
    """Double-double sum ``(ah + al) + (bh + bl)``."""
    s, e = _two_sum(ah, bh)
    e += al + bl
    h = s + e
    return h, e - (h - s)


@njit(**_NB)
def _dd_mul(ah, al, b):
    """Double-double product ``(ah + al) * b`` for a double ``b``."""
    p = ah * b
    e = _fma(ah, b, -p) + al * b
    h = p + e
    return h, e - (h - p)


@njit(**_NB)
def _weighted_rank(c, a, n, frac, total):
    """First atom index (from ``a``) at which the cumulative weight reaches ``frac * total``."""
    t = 0
    acc = c[a]
    while t < n - 1 and acc < frac * total:
        t += 1
        acc += c[a + t]
    return t


@njit(inline="always", **_NB)
def _round_row(pre, fast, t):
    """``fast[:, t]``: row ``t`` of the double-double sums rounded to doubles."""
    fast[0, t] = pre[t, 0] + pre[t, 1]
    fast[1, t] = pre[t, 2] + pre[t, 3]
    fast[2, t] = pre[t, 4] + pre[t, 5]


@njit(**_NB)
def _anchored_sums(v, c, a, n, pre, fast):
    """Double-double prefix sums of weight, ``w*e`` and ``w*e**2`` with ``e`` the distance to the
    weighted median (the pivot), anchored at the first atom ``p`` of the bulk (the lowest value
    within 64 interquartile ranges of the lower quartile): ``pre[i] - pre[m]`` are the sums over
    atoms ``[m, i)``, and a row only adds the atoms between ``p`` and it, so outliers below the
    bulk never enter the sums of the bulk, and those above it only the rows past them. Without
    outliers ``p = 0``: plain prefix sums from the lowest value. Row layout:
    ``(C, c_lo, S, s_lo, Q, q_lo)``; ``fast[:, t]`` gets ``C, S, Q`` rounded to doubles."""
    total = 0.0
    for t in range(n):
        total += c[a + t]
    low = v[a + _weighted_rank(c, a, n, 0.25, total)]
    spread = v[a + _weighted_rank(c, a, n, 0.75, total)] - low
    pivot = v[a + _weighted_rank(c, a, n, 0.5, total)]
    p = 0
    while p < n - 1 and v[a + p] < low - 64.0 * spread:
        p += 1
    pre[p, :] = 0.0
    fast[:, p] = 0.0
    for t in range(p, n):  # rows above p: add atom t
        e = v[a + t] - pivot
        w = c[a + t]
        sh, sl = _dd_mul(w, 0.0, e)
        qh, ql = _dd_mul(sh, sl, e)
        pre[t + 1, 0], pre[t + 1, 1] = _dd_add(pre[t, 0], pre[t, 1], w, 0.0)
        pre[t + 1, 2], pre[t + 1, 3] = _dd_add(pre[t, 2], pre[t, 3], sh, sl)
        pre[t + 1, 4], pre[t + 1, 5] = _dd_add(pre[t, 4], pre[t, 5], qh, ql)
        _round_row(pre, fast, t + 1)
    for t in range(p - 1, -1, -1):  # rows below p: subtract atom t
        e = v[a + t] - pivot
        w = c[a + t]
        sh, sl = _dd_mul(w, 0.0, e)
        qh, ql = _dd_mul(sh, sl, e)
        pre[t, 0], pre[t, 1] = _dd_add(pre[t + 1, 0], pre[t + 1, 1], -w, 0.0)
        pre[t, 2], pre[t, 3] = _dd_add(pre[t + 1, 2], pre[t + 1, 3], -sh, -sl)
        pre[t, 4], pre[t, 5] = _dd_add(pre[t + 1, 4], pre[t + 1, 5], -qh, -ql)
        _round_row(pre, fast, t)


#: A row of the program is trusted in plain doubles when the rounding bound of its candidates
#: (about 4 eps times the sums of squares about the pivot that enter them) is at most this fraction
#: of the row's least error. Else, if the best candidate beats the second by more than twice the
#: bound, only its value is recomputed in double-double; otherwise the whole row is.
EXACT_TRUST = 2.0 ** -30
HISTOGRAM_TRUST = 2.0 ** -16  # the bins already cost up to 1.6e-5


@njit(**_NB)
def _sse_dd(pre, v, c, a, m, i):
    """Weighted squared error of atoms ``[m, i)``: up to 16 atoms directly from their values (two
    passes); longer runs in double-double, ``Q - 2 mu S + mu**2 C`` with ``mu`` the rounded mean,
    exact up to ``C`` times the square of mu's rounding (second order)."""
    if i - m <= 1:
        return 0.0
    if i - m <= 16:
        cw = 0.0
        sw = 0.0
        for t in range(a + m, a + i):
            cw += c[t]
            sw += c[t] * v[t]
        if cw <= 0.0:
            return 0.0
        mean = sw / cw
        err = 0.0
        for t in range(a + m, a + i):
            err += c[t] * (v[t] - mean) ** 2
        return err
    qh, ql = _dd_add(pre[i, 4], pre[i, 5], -pre[m, 4], -pre[m, 5])
    sh, sl = _dd_add(pre[i, 2], pre[i, 3], -pre[m, 2], -pre[m, 3])
    ch, cl = _dd_add(pre[i, 0], pre[i, 1], -pre[m, 0], -pre[m, 1])
    if ch + cl <= 0.0:
        return 0.0
    mu = sh / ch
    th, tl = _dd_mul(sh, sl, -2.0 * mu)
    uh, ul = _dd_mul(ch, cl, mu)
    uh, ul = _dd_mul(uh, ul, mu)
    rh, rl = _dd_add(qh, ql, th, tl)
    rh, rl = _dd_add(rh, rl, uh, ul)
    return max(rh + rl, 0.0)


@njit(inline="always", **_NB)  # a call per row passing four arrays cost 1.4x the whole program
def _row_fast(shifted, fast, i, lo, hi):
    """Leftmost ``m`` in ``[lo, hi]`` minimising ``shifted[m] - S**2 / C`` of atoms ``[m, i)`` in plain
    doubles: ``(value, m)``.

    ``shifted[m]`` is the least error of atoms ``[0, m)`` in the layer's clusters minus ``Q[m]``
    (``fast`` holds ``C, S, Q`` rounded to doubles), so a candidate's error is the value plus
    ``Q[i]``, and the scan needs that term only once.
    """
    ci = fast[0, i]
    si = fast[1, i]
    best = np.inf
    best_m = lo
    for m in range(lo, hi + 1):
        dc = ci - fast[0, m]
        ds = si - fast[1, m]
        val = shifted[m] - (ds * ds / dc if dc > 0.0 else 0.0)
        if val < best:
            best = val
            best_m = m
    return best, best_m


@njit(inline="always", **_NB)
def _rounding_bound(shifted, fast, i, lo, hi, best_m):
    """Bound on the rounding of a row's candidates: about 4 eps times the sums of squares about the
    pivot that enter them (``|Q|`` grows away from the anchor, so its largest is at ``lo`` or ``hi``)."""
    return 4e-15 * (abs(fast[2, i]) + max(abs(fast[2, lo]), abs(fast[2, hi])) + abs(shifted[best_m]))


@njit(inline="always", **_NB)
def _needs_care(shifted, fast, trust, i, lo, hi, best, best_m):
    """Whether a row's rounding bound is above ``trust`` of its least error (plain doubles may not do)."""
    return _rounding_bound(shifted, fast, i, lo, hi, best_m) > trust * (best + fast[2, i])


@njit(**_NB)
def _row_careful(shifted, total, pre, fast, v, c, a, trust, i, lo, hi, best, best_m):
    """A row whose rounding bound is above ``trust`` of its minimum: ``(shifted, total, m)`` of its least
    error. The runner-up decides: a gap above twice the bound keeps the argmin and recomputes only its
    value in double-double, else every candidate is recomputed so from ``total`` (the layer's least
    errors, not shifted)."""
    qi = fast[2, i]
    bound = _rounding_bound(shifted, fast, i, lo, hi, best_m)
    ci = fast[0, i]
    si = fast[1, i]
    second = np.inf
    for m in range(lo, hi + 1):
        dc = ci - fast[0, m]
        ds = si - fast[1, m]
        val = shifted[m] - (ds * ds / dc if dc > 0.0 else 0.0)
        if m != best_m and val < second:
            second = val
    if second - best > 2.0 * (bound + trust * (best + qi)):  # a certain argmin: only its value in double-double
        exact = total[best_m] + _sse_dd(pre, v, c, a, best_m, i)
        return exact - qi, exact, best_m
    best = np.inf
    for m in range(lo, hi + 1):
        val = total[m] + _sse_dd(pre, v, c, a, m, i)
        if val < best:
            best = val
            best_m = m
    return best - qi, best, best_m


@njit(**_NB)
def _row_min(shifted, total, pre, fast, v, c, a, trust, i, lo, hi):
    """One row, checked: ``(shifted, total, m)`` of the leftmost least error over splits ``[lo, hi]``."""
    best, best_m = _row_fast(shifted, fast, i, lo, hi)
    if _needs_care(shifted, fast, trust, i, lo, hi, best, best_m):
        return _row_careful(shifted, total, pre, fast, v, c, a, trust, i, lo, hi, best, best_m)
    return best, best + fast[2, i], best_m


@njit(**_NB)
def _first_rows(prev, prev_t, fast, trust, i):
    """Rows ``i, i - 1, ..., 0`` of the first layer (one cluster, atoms ``[0, i)``) until one needs
    care: returns ``(i, value)`` of it, or ``i = -1`` when done (a call per row cost 40 ns)."""
    while i >= 0:
        best, _ = _row_fast(prev, fast, i, 0, 0)
        if _needs_care(prev, fast, trust, i, 0, 0, best, 0):
            return i, best
        prev[i] = best
        prev_t[i] = best + fast[2, i]
        i -= 1
    return -1, 0.0


@njit(**_NB)
def _knuth_rows(prev, fast, trust, arg, cur, cur_t, j, i, upper):
    """Rows ``i, i - 1, ..., 0`` of layer ``j``, each scanned between ``arg[j - 1, i]`` and the argmin
    of the row above (Knuth's bounds), until one needs care: returns it ``(i, lo, hi, value, m)``,
    or ``i = -1`` when the layer is done. No call in here: a call on the rare careful path made
    the whole loop 1.5x slower, so the caller handles that row and resumes."""
    while i >= 0:
        lo = arg[j - 1, i]
        hi = min(upper, i)
        best, best_m = _row_fast(prev, fast, i, lo, hi)
        if _needs_care(prev, fast, trust, i, lo, hi, best, best_m):
            return i, lo, hi, best, best_m
        cur[i] = best
        cur_t[i] = best + fast[2, i]
        arg[j, i] = best_m
        upper = best_m
        i -= 1
    return -1, 0, 0, 0.0, 0


@njit(inline="always", **_NB)
def _push_halves(stack, top, mid, best_m):
    """Push the two halves around row ``mid`` of the entry just popped (still at ``stack[top]``)."""
    ilo, ihi, mlo, mhi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
    if mid - 1 >= ilo:
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = ilo, mid - 1, mlo, best_m
        top += 1
    if mid + 1 <= ihi:
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = mid + 1, ihi, best_m, mhi
        top += 1
    return top


@njit(**_NB)
def _split_rows(prev, fast, trust, arg, cur, cur_t, j, stack, top):
    """Divide and conquer over the rows of layer ``j`` (the middle row of each stacked range, its
    argmin bounding both halves) until a row needs care: returns ``(top, mid, lo, hi, value, m)``
    with that row's entry popped, or ``mid = -1`` when the layer is done (no call in here either)."""
    while top > 0:
        top -= 1
        mid = (stack[top, 0] + stack[top, 1]) // 2
        lo = max(stack[top, 2], arg[j - 1, mid])
        hi = min(stack[top, 3], mid)
        best, best_m = _row_fast(prev, fast, mid, lo, hi)
        if _needs_care(prev, fast, trust, mid, lo, hi, best, best_m):
            return top, mid, lo, hi, best, best_m
        cur[mid] = best
        cur_t[mid] = best + fast[2, mid]
        arg[j, mid] = best_m
        top = _push_halves(stack, top, mid, best_m)
    return 0, -1, 0, 0, 0.0, 0


@njit(**_NB)
def _layer(prev, prev_t, pre, fast, v, c, a, trust, n, j, arg, cur, cur_t, stack):
    """Layer ``j`` of the program: Knuth's bounds once clusters are small (``j**2 * 5 * log2(n) >
    n``, about O(n + n**2 / j**2)), else divide and conquer (O(n log n)); rows that need care are
    redone by :func:`_row_careful` between the fast runs."""
    if j * j * 5.0 * np.log2(max(n, 2)) > n:
        i, upper = n, n
        while True:
            i, lo, hi, best, best_m = _knuth_rows(prev, fast, trust, arg, cur, cur_t, j, i, upper)
            if i < 0:
                return
            cur[i], cur_t[i], upper = _row_careful(prev, prev_t, pre, fast, v, c, a, trust, i, lo, hi, best, best_m)
            arg[j, i] = upper
            i -= 1
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 0, n, 0, n
    top = 1
    while True:
        top, mid, lo, hi, best, best_m = _split_rows(prev, fast, trust, arg, cur, cur_t, j, stack, top)
        if mid < 0:
            return
        cur[mid], cur_t[mid], best_m = _row_careful(prev, prev_t, pre, fast, v, c, a, trust, mid, lo, hi, best, best_m)
        arg[j, mid] = best_m
        top = _push_halves(stack, top, mid, best_m)


@njit(**_NB)
def _dp_bounds(pre, fast, v, c, a, trust, n, k, arg, bounds):
    """Exact optimal partition of ``n`` sorted atoms into ``k`` (possibly empty) clusters.

    Wang & Song's dynamic program over layers ``j`` (clusters so far) and prefixes ``i``, with
    sums anchored at the median atom (a run of outliers never enters the bulk's sums) and rows
    whose rounding could decide the argmin redone in double-double (:func:`_row_careful`). The
    cost is Monge, so the leftmost optimal split ``arg[j, i]`` is monotone in ``i`` and in ``j``,
    which :func:`_layer` uses (2**8 levels on a group some 10x cheaper with Knuth's bounds). The
    last layer needs only ``i = n`` (one O(n) scan; at 1 bit that is the whole program).
    ``bounds`` gets ``k + 1`` atom indices: cluster ``c`` is atoms ``[bounds[c], bounds[c + 1])``.
    """
    prev = np.empty(n + 1, np.float64)  # shifted (total - Q) least errors of the last layer
    prev_t = np.zeros(n + 1, np.float64)  # total least errors of the last layer
    cur = np.empty(n + 1, np.float64)
    cur_t = np.empty(n + 1, np.float64)
    prev[0] = -fast[2, 0]
    arg[0, :n + 1] = 0
    i = n
    while i >= 0:  # one cluster: atoms [0, i); reads only row 0
        i, best = _first_rows(prev, prev_t, fast, trust, i)
        if i >= 0:
            prev[i], prev_t[i], _ = _row_careful(prev, prev_t, pre, fast, v, c, a, trust, i, 0, 0, best, 0)
            i -= 1
    stack = np.empty((256, 4), np.int64)
    for j in range(1, k - 1):
        _layer(prev, prev_t, pre, fast, v, c, a, trust, n, j, arg, cur, cur_t, stack)
        prev, cur = cur, prev
        prev_t, cur_t = cur_t, prev_t
    _, _, arg[k - 1, n] = _row_min(prev, prev_t, pre, fast, v, c, a, trust, n, arg[k - 2, n], n)  # the last layer: i = n only
    bounds[k] = n
    for j in range(k - 1, 0, -1):
        bounds[j] = arg[j, bounds[j + 1]]
    bounds[0] = 0


@njit(**_NB)
def _centroids_from_bounds(atom_v, atom_c, a, bounds, k, out):
    """Mean of each cluster, summed over its atoms (one pass over all, and no prefix sum far out
    in it); an empty one (no weight) takes its nearest atom value, keeping order."""
    last = atom_v[a] if a < atom_v.size else 0.0
    for j in range(k):
        lo_, hi_ = bounds[j], bounds[j + 1]
        cw = 0.0
        sw = 0.0
        for t in range(a + lo_, a + hi_):
            cw += atom_c[t]
            sw += atom_c[t] * atom_v[t]
        if cw > 0.0:
            out[j] = sw / cw
            last = out[j]
        elif hi_ > lo_:
            out[j] = atom_v[a + lo_]  # only zero-weight atoms: keep a value among them
            last = out[j]
        else:
            out[j] = last
    for j in range(k - 2, -1, -1):  # leading empties copy the first real centroid
        if out[j] > out[j + 1]:
            out[j] = out[j + 1]


@njit(**_NB)
def optimal_centroids(ptr, atom_v, atom_c, k, trust, out):
    """Optimal (least weighted squared error) ``k`` centroids of every group's atoms, sorted; ``trust``:
    the relative rounding a row of the program may keep (``EXACT_TRUST``, ``HISTOGRAM_TRUST``)."""
    n_groups = ptr.size - 1
    max_n = 0
    for g in range(n_groups):
        max_n = max(max_n, ptr[g + 1] - ptr[g])
    pre = np.empty((max_n + 1, 6), np.float64)
    fast = np.empty((3, max_n + 1), np.float64)
    arg = np.empty((k, max_n + 1), np.int32)
    bounds = np.empty(k + 1, np.int64)
    for g in range(n_groups):
        a = ptr[g]
        n = ptr[g + 1] - a
        if n == 0:
            out[g, :] = 0.0
            continue
        _anchored_sums(atom_v, atom_c, a, n, pre, fast)
        if n <= k:  # every atom its own cluster: zero error
            for j in range(k + 1):
                bounds[j] = min(j, n)
        else:
            _dp_bounds(pre, fast, atom_v, atom_c, a, trust, n, k, arg, bounds)
        _centroids_from_bounds(atom_v, atom_c, a, bounds, k, out[g])
