"""Compiled (numba) loops behind the 1-D quantizers; callers validate, these trust their input.

Data comes as ``(n_groups, group_size)`` arrays. Values are shifted by a per-group ``center`` so
that prefix sums stay small (squared error is shift-invariant). A group's data is summarised as
sorted *atoms* (distinct values, or histogram bins) with a weight ``c`` (count or sum of
sample_weight) and a weighted sum ``s``; a cluster of consecutive atoms ``[m, i)`` costs
``Q - S**2 / C`` with ``C, S, Q`` the prefix-sum differences. ``optimal``'s dynamic program is in
:mod:`fewbits.quantize._optimal_dp`.

Nearest-centroid assignment uses a lookup table over ``[lo, hi]``: each table cell stores the code
of its lowest value, and a value walks up past the few midpoints inside its cell. A value exactly
on a midpoint goes to the lower centroid everywhere (``code = #{midpoints < x}``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NB = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_NB)
def linear_codes(x, lo, hi, bits, codes, wsum, xsum, center):
    """P1's linear bins: ``floor((x - lo) / w)`` with ``w = (hi - lo) / 2**bits``, clamped; per-bin sums."""
    n_groups, n = x.shape
    k = 1 << bits
    for g in range(n_groups):
        width = (hi[g] - lo[g]) / k
        for t in range(n):
            v = np.float64(x[g, t])
            b = 0
            if width > 0.0:
                q = (v - lo[g]) / width
                b = min(int(q), k - 1)
            codes[g, t] = b
            wsum[g, b] += 1.0
            xsum[g, b] += v - center[g]


#: A group whose bins cover only its bulk gets this fraction of the fine bins: over the full range most
#: of them lay empty (MiniLM-L6's output.dense: 19,746 of 65,536 non-empty at 8 bits), and the whole
#: budget over the bulk cost 7x the time for a gap of 0 instead of 1e-5 (BENCHMARKS.md).
ZOOMED_SHARE = 4


@njit(**_NB)
def _bulk_range(x, g, n, stride, low, high, n_coarse, tail, cnt):
    """``[low, high]`` narrowed to the bulk of group ``g``: while at most ``tail`` of the sampled
    values lie beyond a quarter of the coarse bins, zoom onto the bins between those tails (a
    value 1e12 times the bulk's scale takes 4 zooms). Without outliers the full range is kept."""
    top = n_coarse - 1
    cnt[:] = 0
    for zoom in range(8):
        width = (high - low) / n_coarse
        if not width > 0.0:
            break
        cnt[:] = 0
        m = 0
        for t in range(0, n, stride):
            v = np.float64(x[g, t])
            if low <= v <= high:
                cnt[min(int((v - low) / width), top)] += 1
                m += 1
        first = 0
        acc = cnt[0]
        while first < top and acc <= tail * m:
            first += 1
            acc += cnt[first]
        last = top
        acc = cnt[top]
        while last > first and acc <= tail * m:
            last -= 1
            acc += cnt[last]
        if last - first + 1 >= n_coarse // 4 or zoom == 7:
            break
        low, high = low + first * width, low + (last + 1) * width
    return low, high  # cnt: the sample's coarse counts over [low, high]


@njit(**_NB)
def _fine_parts(cnt, n_fine, cut):
    """Cut coarse bin ``b`` into ``2**p[b]`` parts, ``p[b]`` the least with ``2**p[b]`` at least
    ``n_fine`` times its share of ``sum(cbrt(cnt + 1))``; ``cut[b]`` = (its first fine bin, shift
    from the finest part to its own). Returns the finest power and the number of fine bins."""
    n_coarse = cnt.size
    log_parts = np.zeros(n_coarse, np.int64)  # per group: hoisted, the value pass ran 3.5x slower
    total = 0.0
    for b in range(n_coarse):
        total += np.cbrt(cnt[b] + 1.0)
    for b in range(n_coarse):
        share = n_fine * np.cbrt(cnt[b] + 1.0) / total
        while (1 << log_parts[b]) < share:
            log_parts[b] += 1
    finest = log_parts.max()
    used = 0
    for b in range(n_coarse):
        cut[b, 0] = used
        cut[b, 1] = finest - log_parts[b]
        used += 1 << log_parts[b]
    return finest, used


@njit(**_NB)
def _tail_atoms(vals, wts, count, has_sw, mid, out, atom_v, atom_c, atom_s):
    """Sort ``vals[:count]`` (the values beyond the bulk) into exact atoms from ``out`` on."""
    order = np.argsort(vals[:count], kind="mergesort")
    t = 0
    while t < count:
        v = vals[order[t]]
        c = 0.0
        while t < count and vals[order[t]] == v:
            c += wts[order[t]] if has_sw else 1.0
            t += 1
        atom_v[out] = v - mid
        atom_c[out] = c
        atom_s[out] = c * (v - mid)
        out += 1
    return out


@njit(**_NB)
def histogram_atoms(x, sw, has_sw, lo, hi, n_coarse, n_fine, tail_cap, center, ptr, atom_v, atom_c, atom_s):
    """A histogram of each group with about ``n_fine`` bins placed where its values are, compressed
    to its non-empty bins (the atoms), plus every value beyond the bulk as an exact atom.

    The bins cover ``[low, high]``: the group's range, or, when a few values lie far out (at most
    ``tail_cap / 4`` of them by a sample), the bulk between them (:func:`_bulk_range`); the values
    outside become atoms of their own, sorted (at most ``tail_cap`` per side: with more, which the
    sample missed, the group is binned over its full range instead), and the bins over that bulk
    are ``n_fine // ZOOMED_SHARE``. Coarse bins are equal-width, ``b = floor((x - low) / ((high -
    low) / n_coarse))``: over the full range the linear scheme's expression with a finer width (a
    multiple of its ``2**bits``), so linear's partition is one the histogram can express. Coarse
    bin ``b`` is cut into ``2**p[b]`` equal parts, the power of two at least ``n_fine`` times its
    share of ``sum(cbrt(count + 1))`` (counts on a sample of about 2**16 values; an optimal
    quantizer's levels are dense as the cube root of the density, and the +1 keeps sparse tails
    resolved). One division gives both indices: the value's position in units of the finest part, exact in
    floating point because the parts are powers of two. ``atom_v`` holds the weighted mean of each
    bin (plain mean where its weight is 0), centred on ``center[g]``, which becomes the middle of
    ``[low, high]``. Bins keep one interleaved row of sums (weight and weighted sum; with
    sample_weight also count and plain sum).
    """
    n_groups, n = x.shape
    fields = 4 if has_sw else 2
    acc = np.zeros((n_coarse + 2 * n_fine, fields), np.float64)
    cnt = np.empty(n_coarse, np.int64)
    cut = np.empty((n_coarse, 2), np.int64)  # per coarse bin: first fine bin, shift to its part
    tails = np.empty((2, tail_cap), np.float64)
    tail_w = np.empty((2, tail_cap), np.float64)
    stride = _sample_stride(n)
    out = 0
    ptr[0] = 0
    for g in range(n_groups):
        tail = 0.25 * tail_cap / n
        while True:
            low, high = _bulk_range(x, g, n, stride, lo[g], hi[g], n_coarse, tail, cnt)
            zoomed = low != lo[g] or high != hi[g]  # else no value lies outside: the pass skips the tests
            finest, used = _fine_parts(cnt, n_fine // ZOOMED_SHARE if zoomed else n_fine, cut)
            acc[:used] = 0.0
            n_low, n_high = _bin_values(x, sw, has_sw, g, low, high, zoomed, cut, finest, tails, tail_w, acc)
            if n_low <= tail_cap and n_high <= tail_cap:
                break
            tail = -1.0  # more values beyond the bulk than the tails hold: the full range, no zoom
        mid = 0.5 * (low + high)
        center[g] = mid
        out = _tail_atoms(tails[0], tail_w[0], n_low, has_sw, mid, out, atom_v, atom_c, atom_s)
        for f in range(used):
            count = acc[f, 2] if has_sw else acc[f, 0]
            if count > 0.0:
                atom_c[out] = acc[f, 0]
                atom_s[out] = acc[f, 1]
                atom_v[out] = acc[f, 1] / acc[f, 0] if acc[f, 0] > 0.0 else acc[f, 3] / count
                out += 1
        out = _tail_atoms(tails[1], tail_w[1], n_high, has_sw, mid, out, atom_v, atom_c, atom_s)
        ptr[g + 1] = out


@njit(**_NB)
def _bin_values(x, sw, has_sw, g, low, high, zoomed, cut, finest, tails, tail_w, acc):
    """One pass over group ``g``: each value's sums into its fine bin over ``[low, high]`` (centred
    on its middle), or, when ``zoomed``, a value beyond it into ``tails`` (``tail_cap`` per side).
    Returns how many lay beyond on each side; a count above the cap means the pass is void (such
    a value in an edge bin would put the atoms out of order), and the caller redoes the group."""
    n = x.shape[1]
    n_coarse = cut.shape[0]
    tail_cap = tails.shape[1]
    width = (high - low) / n_coarse
    mid = 0.5 * (low + high)
    fine_width = width / (1 << finest)
    last = (n_coarse << finest) - 1
    mask = (1 << finest) - 1
    top_u = (high - low) / fine_width
    n_low = 0
    n_high = 0
    for t in range(n):
        v = np.float64(x[g, t])
        f = 0
        u = (v - low) / fine_width
        if zoomed and not (0.0 <= u <= top_u):  # one test, not two: the zoomed pass was 1.3x slower
            side = 0 if u < 0.0 else 1
            held = n_low if side == 0 else n_high
            if held >= tail_cap:
                return tail_cap + 1, tail_cap + 1
            tails[side, held] = v
            tail_w[side, held] = sw[g, t] if has_sw else 1.0
            n_low += 1 - side
            n_high += side
            continue
        if width > 0.0:
            q = min(max(int(u), 0), last)
            b = q >> finest
            f = cut[b, 0] + ((q & mask) >> cut[b, 1])
        d = v - mid
        if has_sw:
            w = sw[g, t]
            acc[f, 0] += w
            acc[f, 1] += w * d
            acc[f, 2] += 1.0
            acc[f, 3] += d
        else:
            acc[f, 0] += 1.0
            acc[f, 1] += d
    return n_low, n_high


@njit(**_NB)
def _sample_stride(n):
    """Every how many values the sample that finds the bulk takes one: ``n // 65536``, raised to a
    prime of at least 7 (when above 1). A stride sharing a factor with a weight matrix's row length
    (multiples of 2, 3 and 5) samples only some columns and can miss an outlier column entirely."""
    s = n // 65536
    if s <= 1:
        return 1
    s = max(s, 7)
    while True:
        d = 2
        while d * d <= s and s % d != 0:
            d += 1
        if d * d > s:
            return s
        s += 1


@njit(**_NB)
def sorted_atoms(xs, sws, has_sw, center, ptr, atom_v, atom_c, atom_s, atom_q):
    """Run-length encode each sorted row into distinct values with their total weight."""
    n_groups, n = xs.shape
    out = 0
    ptr[0] = 0
    for g in range(n_groups):
        t = 0
        while t < n:
            v = xs[g, t]
            d = np.float64(v) - center[g]
            c = 0.0
            while t < n and xs[g, t] == v:
                c += sws[g, t] if has_sw else 1.0
                t += 1
            atom_v[out] = d
            atom_c[out] = c
            atom_s[out] = c * d
            atom_q[out] = c * d * d
            out += 1
        ptr[g + 1] = out


@njit(**_NB)
def _prefix(c, s, q, a, b, pc, ps, pq):
    """Prefix sums of atoms ``[a, b)`` into ``pc, ps, pq`` (length ``b - a + 1``)."""
    pc[0] = 0.0
    ps[0] = 0.0
    pq[0] = 0.0
    for t in range(b - a):
        pc[t + 1] = pc[t] + c[a + t]
        ps[t + 1] = ps[t] + s[a + t]
        pq[t + 1] = pq[t] + q[a + t]


@njit(**_NB)
def assign(x, sw, has_sw, centroids, lo, hi, center, n_cells, accumulate, codes, wsum, xsum):
    """Nearest-centroid codes of every value (sorted centroids); with ``accumulate``, each code's
    weight and centered sum too (the exact means of a Lloyd step).

    The cell of a value is found by multiplying with the inverse cell width (a division per value
    made this pass 2.5x slower); the table's 1e-9 margin absorbs the rounding, and the walk past
    midpoints gives the exact code. The walk ends at a ``+inf`` sentinel, so its branch is almost
    never taken and the CPU predicts it: testing ``code < k - 1`` first made 1 bit 5x slower. Sums
    go to 8 interleaved accumulators per code so consecutive values do not wait on one memory slot.
    """
    n_groups, n = x.shape
    k = centroids.shape[1]
    table = np.empty(n_cells, np.uint8)
    mids = np.empty(k, np.float64)
    lanes_w = np.zeros((k, 8), np.float64)
    lanes_x = np.zeros((k, 8), np.float64)
    top = n_cells - 1
    for g in range(n_groups):
        mid = center[g]
        for j in range(k - 1):
            mids[j] = 0.5 * (centroids[g, j] + centroids[g, j + 1]) + mid
        mids[k - 1] = np.inf
        low = lo[g]
        width = (hi[g] - low) / n_cells
        inv = 1.0 / width if width > 0.0 else 0.0
        margin = (hi[g] - low) * 1e-9
        j = 0
        for t in range(n_cells):  # code of the lowest value a cell can hold
            edge = low + t * width - margin
            while mids[j] < edge:
                j += 1
            table[t] = j
        for t in range(n):
            v = np.float64(x[g, t])
            cell = int((v - low) * inv)
            code = table[min(cell, top)] if cell >= 0 else 0  # below lo: outliers left out of the table
            while v > mids[code]:
                code += 1
            codes[g, t] = code
            if accumulate:
                w = sw[g, t] if has_sw else 1.0
                lanes_w[code, t & 7] += w
                lanes_x[code, t & 7] += w * (v - mid)
        if accumulate:
            for c in range(k):
                for lane in range(8):
                    wsum[g, c] += lanes_w[c, lane]
                    xsum[g, c] += lanes_x[c, lane]
                    lanes_w[c, lane] = 0.0
                    lanes_x[c, lane] = 0.0


@njit(**_NB)
def _seg_cost(pc, ps, pq, a, b, c):
    """Weighted squared distance of atoms ``[a, b)`` to the point ``c`` (centered coordinates)."""
    if b <= a:
        return 0.0
    val = (pq[b] - pq[a]) - 2.0 * c * (ps[b] - ps[a]) + c * c * (pc[b] - pc[a])
    return max(val, 0.0)


@njit(**_NB)
def _first_above(v, a, n, thr):
    """Number of atoms among ``v[a:a+n]`` (sorted) that are <= ``thr``."""
    lo_ = 0
    hi_ = n
    while lo_ < hi_:
        m = (lo_ + hi_) // 2
        if v[a + m] <= thr:
            lo_ = m + 1
        else:
            hi_ = m
    return lo_


@njit(**_NB)
def _cells(v, a, n, pc, ps, pq, cent, nc, bnd, mass):
    """Voronoi cells of the sorted ``cent[:nc]``: atom bounds ``bnd[:nc+1]`` and each cell's cost."""
    bnd[0] = 0
    bnd[nc] = n
    for j in range(1, nc):
        bnd[j] = _first_above(v, a, n, 0.5 * (cent[j - 1] + cent[j]))
    total = 0.0
    for j in range(nc):
        mass[j] = _seg_cost(pc, ps, pq, bnd[j], bnd[j + 1], cent[j])
        total += mass[j]
    return total


@njit(**_NB)
def _sample_atom(pc, ps, pq, cent, nc, bnd, mass, u):
    """Atom index drawn with probability proportional to its weighted D**2 (``u`` in [0, potential))."""
    for j in range(nc):
        if u < mass[j] or j == nc - 1:
            lo_ = bnd[j]  # smallest t in the cell with cost(bnd[j], t + 1) > u
            hi_ = bnd[j + 1] - 1
            while lo_ < hi_:
                m = (lo_ + hi_) // 2
                if _seg_cost(pc, ps, pq, bnd[j], m + 1, cent[j]) > u:
                    hi_ = m
                else:
                    lo_ = m + 1
            return max(lo_, 0)
        u -= mass[j]
    return 0


@njit(**_NB)
def _insert_delta(v, a, n, pc, ps, pq, cent, nc, bnd, c):
    """Change of the potential if ``c`` joined the sorted ``cent[:nc]``: only the atoms that move
    to ``c`` (between its neighbours' midpoints with it) count, so O(log n)."""
    p = 0
    while p < nc and cent[p] <= c:
        p += 1
    lo_ = _first_above(v, a, n, 0.5 * (cent[p - 1] + c)) if p > 0 else 0
    hi_ = _first_above(v, a, n, 0.5 * (c + cent[p])) if p < nc else n
    if hi_ <= lo_:
        return 0.0
    if p == 0:
        old = _seg_cost(pc, ps, pq, lo_, hi_, cent[0])
    elif p == nc:
        old = _seg_cost(pc, ps, pq, lo_, hi_, cent[nc - 1])
    else:
        split = min(max(bnd[p], lo_), hi_)
        old = _seg_cost(pc, ps, pq, lo_, split, cent[p - 1]) + _seg_cost(pc, ps, pq, split, hi_, cent[p])
    return _seg_cost(pc, ps, pq, lo_, hi_, c) - old


@njit(**_NB)
def _insert_sorted(cent, nc, val):
    """Insert ``val`` into the sorted ``cent[:nc]``."""
    p = nc
    while p > 0 and cent[p - 1] > val:
        cent[p] = cent[p - 1]
        p -= 1
    cent[p] = val


@njit(**_NB)
def _kmeanspp(v, a, n, pc, ps, pq, k, n_trials, uniforms, cent, bnd, mass):
    """Greedy k-means++ seeding (as scikit-learn's): per new centre, ``n_trials`` D**2-sampled
    candidates, keep the one that lowers the potential most. ``uniforms`` supplies the randomness."""
    u = uniforms[0] * pc[n]  # first centre: an atom drawn with probability ~ its weight
    lo_ = 0
    hi_ = n - 1
    while lo_ < hi_:
        m = (lo_ + hi_) // 2
        if pc[m + 1] > u:
            hi_ = m
        else:
            lo_ = m + 1
    cent[0] = v[a + lo_]
    r = 1
    for nc in range(1, k):
        phi = _cells(v, a, n, pc, ps, pq, cent, nc, bnd, mass)
        if phi <= 0.0:  # every atom sits on a centre: fill with copies (empty clusters)
            for j in range(nc, k):
                cent[j] = cent[nc - 1]
            return
        best_delta = np.inf
        best_val = 0.0
        for _ in range(n_trials):
            cand = v[a + _sample_atom(pc, ps, pq, cent, nc, bnd, mass, uniforms[r] * phi)]
            r += 1
            delta = _insert_delta(v, a, n, pc, ps, pq, cent, nc, bnd, cand)
            if delta < best_delta:
                best_delta = delta
                best_val = cand
        _insert_sorted(cent, nc, best_val)


@njit(**_NB)
def _lloyd(v, a, n, pc, ps, pq, cent, k, max_iter, tol, bnd, old):
    """Lloyd iterations on sorted atoms: each is k binary searches and k prefix-sum means.

    Stops after ``max_iter`` (-1: no limit), when the partition no longer changes (a fixed point),
    or when the squared error falls by less than ``tol`` times itself. Returns the iterations run.
    """
    for j in range(k + 1):
        old[j] = -1
    err_prev = np.inf
    it = 0
    while max_iter < 0 or it < max_iter:
        bnd[0] = 0
        bnd[k] = n
        same = True
        for j in range(1, k + 1):
            if j < k:
                bnd[j] = _first_above(v, a, n, 0.5 * (cent[j - 1] + cent[j]))
            if bnd[j] != old[j]:
                same = False
            old[j] = bnd[j]
        if same:
            break
        err = 0.0
        for j in range(k):
            dc = pc[bnd[j + 1]] - pc[bnd[j]]
            if dc > 0.0:
                cent[j] = (ps[bnd[j + 1]] - ps[bnd[j]]) / dc
            err += _seg_cost(pc, ps, pq, bnd[j], bnd[j + 1], cent[j])
        for j in range(1, k):  # empty clusters keep their centre, which may now be out of order
            _insert_sorted(cent, j, cent[j])
        it += 1
        if err_prev - err <= tol * err:
            break
        err_prev = err
    return it


@njit(**_NB)
def kmeans_centroids(ptr, atom_v, atom_c, atom_s, atom_q, k, n_trials, n_init, uniforms, max_iter, tol,
                     out, iters):
    """k-means++ then Lloyd on every group's sorted atoms, ``n_init`` times, keeping the least error.

    Restart ``r`` draws from ``uniforms[r]``, the same row for every group, so a group gets the
    same centroids alone as in a batch.
    """
    n_groups = ptr.size - 1
    max_n = 0
    for g in range(n_groups):
        max_n = max(max_n, ptr[g + 1] - ptr[g])
    pc = np.empty(max_n + 1, np.float64)
    ps = np.empty(max_n + 1, np.float64)
    pq = np.empty(max_n + 1, np.float64)
    cent = np.empty(k + 1, np.float64)
    bnd = np.empty(k + 1, np.int64)
    old = np.empty(k + 1, np.int64)
    mass = np.empty(k, np.float64)
    for g in range(n_groups):
        a = ptr[g]
        n = ptr[g + 1] - a
        _prefix(atom_c, atom_s, atom_q, a, a + n, pc, ps, pq)
        best = np.inf
        for r in range(n_init):
            _kmeanspp(atom_v, a, n, pc, ps, pq, k, n_trials, uniforms[r], cent, bnd, mass)
            it = _lloyd(atom_v, a, n, pc, ps, pq, cent, k, max_iter, tol, bnd, old)
            err = _cells(atom_v, a, n, pc, ps, pq, cent, k, bnd, mass)  # error of the nearest-centroid codes
            if err < best:
                best = err
                iters[g] = it
                for j in range(k):
                    out[g, j] = cent[j]
