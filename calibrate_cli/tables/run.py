"""Running the rows of the tables: Averagers shared across rows, groups, one pool of workers.

* The row groups of all tables asked for go to one pool, the costliest first (:func:`run_tables`),
  so that no worker waits at the end of one table for the next to begin.
* Exact rows are grouped per logit std (one Averager per std caches its Laplace kernels) and
  run from the largest K down (one representation per kernel then serves every K).
* Monte Carlo rows of losses that reduce their draws (NCE, NFL, biTemp and their combinations)
  are grouped by K across all stds and losses: at each K one set of standard-normal draws is
  made and reduced for every std (:func:`share_draws`), then every row at that K is solved
  from the reduced draws, then they are dropped (memory stays bounded). The groups interleave
  the K grid, so that each worker gets small and large K alike.
* Within a worker, <δ_k> and its slope are memoised per (loss, parameters, K, z): the ``match``
  and ``peak`` rows of the same loss and K share the search for the peak of <δ_k>(z).

Monte Carlo rows draw ``samples`` logit vectors per K while K · samples ≤ MC_DRAW_BUDGET,
fewer above (never below MC_MIN_SAMPLES): the error of <δ_k> near its peak falls faster than
1/√K, and K_ref = 10 of ``match`` keeps every sample.
"""

from __future__ import annotations

MC_DRAW_BUDGET = 1 << 22
MC_MIN_SAMPLES = 32
MC_GROUPS = 6  # Monte Carlo groups (interleaved K) per table
MEMO_LIMIT = 200_000


def format_params(params: dict) -> str:
    """``a=0.6;q=0.6``: a row's parameters, exact (repr) values sorted by name; '' for none."""
    return ";".join(f"{k}={float(v)!r}" for k, v in sorted(params.items()))


def parse_params(text: str) -> dict:
    """The parameters of a row back from :func:`format_params`'s text."""
    if not text:
        return {}
    return {k: float(v) for k, v in (part.split("=", 1) for part in text.split(";"))}


def _memo_averager(dist, **kwargs):
    """An Averager whose mean_delta and slope remember their results (deterministic: exact
    kernels, or Monte Carlo on fixed seeded draws)."""
    from ..engine.average import Averager

    class Memo(Averager):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._memo: dict = {}

        def _remember(self, kind, loss, params, classes, z, compute):
            import numpy as np

            z = np.atleast_1d(np.asarray(z, dtype=float))
            key = (kind, loss.name, tuple(sorted(params.items())), classes, z.tobytes())
            if key not in self._memo:
                if len(self._memo) > MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = compute(loss, params, classes, z)
            return self._memo[key]

        def mean_delta(self, loss, params, classes, z):
            return self._remember("value", loss, params, classes, z, super().mean_delta)

        def slope(self, loss, params, classes, z):
            return self._remember("slope", loss, params, classes, z, super().slope)

        def drop(self, classes):
            super().drop(classes)
            for key in [k for k in self._memo if k[3] == classes]:
                del self._memo[key]

    return Memo(dist, **kwargs)


class Averagers:
    """One (memoising) Averager per (std, samples, seed): it caches kernels and draws across
    rows. Monte Carlo ones follow the table's draw budget."""

    def __init__(self):
        self._cache = {}

    def get(self, std: float, samples: int | None, seed: int | None):
        from ..engine.average import DEFAULT_SAMPLES
        from ..engine.logits import Gaussian

        key = (float(std), samples or DEFAULT_SAMPLES, seed or 0)
        if key not in self._cache:
            self._cache[key] = _memo_averager(
                Gaussian(0.0, float(std)), samples=key[1], seed=key[2],
                draw_budget=MC_DRAW_BUDGET, min_samples=MC_MIN_SAMPLES)
        return self._cache[key]


def share_draws(averagers, classes: int, reducers) -> None:
    """The per-K reduction pass of several Averagers over one set of draws: Gaussians with the
    same seed and samples (NumPy) draw std × the same standard normals, so drawing those once
    gives each Averager, bit for bit, what its own pass would (tables: six stds, one draw)."""
    from ..engine.logits import Gaussian

    first = averagers[0]
    if not all(isinstance(a.dist, Gaussian) and a._torch is None and a.seed == first.seed
               and a.samples_at(classes) == first.samples_at(classes) for a in averagers):
        for a in averagers:
            a._reduce_pass(classes, reducers)
        return
    works = [(a, a._pass_work(classes, reducers)) for a in averagers]
    works = [(a, w) for a, w in works if w is not None]
    if not works:
        return
    parts = [{f: [] for f in w[0]} for _, w in works]
    unit = Gaussian(0.0, 1.0)
    for base in first._chunks_of(unit, classes):
        for (a, w), p in zip(works, parts):
            a._apply(w[0], base * a.dist.std, p)  # = a.dist.sample(rng, shape), same rng
    for (a, w), p in zip(works, parts):
        a._pass_store(classes, w, p)


def samples_at(samples: int, classes: int) -> int:
    """The Monte Carlo vectors a table row at K draws (see the module docstring)."""
    return min(samples, max(MC_MIN_SAMPLES, MC_DRAW_BUDGET // max(classes - 1, 1)))


def _reducible_mc(loss: str) -> bool:
    from ..losses import get_loss

    spec = get_loss(loss)
    return not spec.sigma_only and spec.reducible


def _group_key(name, row, k_index):
    if name == "epsilon" and row.get("samples") and _reducible_mc(row["loss"]):
        return ("mc", row["samples"], row.get("seed"), k_index[row["classes"]] % MC_GROUPS)
    if row.get("samples"):  # one Averager (one set of draws per K) per std for reducible losses
        share = "reducible" if _reducible_mc(row["loss"]) else row["loss"]
        return (row["logit_std"], row["samples"], row.get("seed"), share)
    return (row["logit_std"], None, None)


def _reducers(rows):
    from ..engine.average import reducer_of
    from ..losses import get_loss
    from ..losses.registry import lse_and_sum

    out = [lse_and_sum]
    for loss, params in dict.fromkeys((r["loss"], r["params"]) for r in rows):
        out += [reducer_of(t) for t in get_loss(loss).terms(parse_params(params))
                if t.loss.mc_reduce is not None]
    return list(dict.fromkeys(out))


def run_group(args):
    """Compute the rows of one group (in a worker process or in this one) with the table's
    kernel (a module-level function of calibrate_cli.tables.build: it pickles by name); returns the
    rows and the seconds they took."""
    import time

    t0 = time.perf_counter()
    return _run_group(*args), time.perf_counter() - t0


def _run_group(name, kernel, rows):
    avs = Averagers()
    shared = name == "epsilon" and rows and rows[0].get("samples") and _reducible_mc(rows[0]["loss"])
    if not shared:  # largest K first: its Laplace representations reach the smallest u, and
        # serve every smaller K after it (ascending K would rebuild them as K grows)
        out = [None] * len(rows)
        for i in sorted(range(len(rows)), key=lambda i: -rows[i]["classes"]):
            out[i] = kernel(rows[i], avs)
        return out
    reducers = _reducers(rows)
    stds = sorted({r["logit_std"] for r in rows})
    group = [avs.get(s, rows[0]["samples"], rows[0]["seed"]) for s in stds]
    keep = {r["reference_classes"] for r in rows if r.get("reference_classes")}
    for k in sorted(keep):
        share_draws(group, k, reducers)
    out: list = [None] * len(rows)
    by_k: dict = {}
    for i, r in enumerate(rows):
        by_k.setdefault(r["classes"], []).append(i)
    for k in sorted(by_k):
        share_draws(group, k, reducers)
        for i in by_k[k]:
            out[i] = kernel(rows[i], avs)
        if k not in keep:
            for av in group:
                av.drop(k)
    return out


def run_tables(tables, jobs, progress):
    """The rows of several tables, ``tables`` = [(name, inputs, kernel)], each row computed by
    ``kernel(row, averagers)``: all groups of all tables in one pool of ``jobs`` processes, the
    costly ones first (so that the pool stays busy to the end). Returns per table its rows in
    input order and the seconds its groups took (summed over the workers)."""
    work, where = [], []
    for t, (name, inputs, kernel) in enumerate(tables):
        k_index = {k: i for i, k in enumerate(sorted({r["classes"] for r in inputs}))}
        groups: dict = {}
        for i, r in enumerate(inputs):
            groups.setdefault(_group_key(name, r, k_index), []).append((i, r))
        for g in groups.values():
            work.append((name, kernel, [r for _, r in g]))
            where.append((t, [i for i, _ in g]))
    ranked = sorted(range(len(work)), key=lambda j: -_cost(work[j][0], work[j][2]))
    out = [[None] * len(inputs) for _, inputs, _ in tables]
    seconds = [0.0] * len(tables)

    def collect(j, res):
        (rows, took), (t, order) = res, where[j]
        for i, r in zip(order, rows):
            out[t][i] = r
        seconds[t] += took
        if progress:
            progress(tables[t][0], len(rows))

    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for j, res in zip(ranked, pool.map(run_group, [work[j] for j in ranked])):
                collect(j, res)
    else:
        for j in ranked:
            collect(j, run_group(work[j]))
    return list(zip(out, seconds))


def _cost(name, rows):
    """Rough seconds: a row's solve (a transfer builds a Laplace representation per parameter
    value it tries: dearer than a root in z, and one without a root scans the parameter's whole
    range before it says so; measured per row on two idle cores: epsilon 0.011, q 0.04,
    presets 0.16, transfer 0.23), plus the draws of Monte Carlo rows (shared by the rows at the
    same K of one group)."""
    seconds = 0.0
    draws = {}
    per_row = {"q": 0.04, "presets": 0.16, "transfer": 0.23}
    for r in rows:
        seconds += per_row.get(name, 0.02 if r.get("samples") else 0.006)
        if r.get("samples"):
            draws[(r["classes"], r["logit_std"])] = samples_at(r["samples"], r["classes"]) * r["classes"]
    return seconds + 2e-8 * sum(draws.values())
