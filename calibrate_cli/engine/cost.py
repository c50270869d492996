"""Up-front cost of the Monte Carlo work of a command, for its progress line and its warning.

Losses whose δ_k needs every σ_j and cannot be reduced to a few numbers per draw (those
without ``mc_reduce``: NFL, biTemp and their combinations, your own losses) evaluate the loss
on ``samples`` whole logit vectors of length K at every z the solver asks for, so their cost
is about

    evaluations × samples × K × (seconds per logit),

and can reach hours (``--samples 2000000``, or K = 10^6). The evaluations a command makes are
counted from the solver's structure (the scan of z or of the parameter, plus what the peak and
root refinements took in a survey of NFL and biTemp, 20 to 40); the seconds per logit are timed
here, on one small chunk of draws of the run's distribution, so the estimate holds for this
machine and its current load. Losses that reduce each draw (NCE) cost one pass of draws per K,
counted at the time of drawing alone. On a loaded machine the timing is noisy: the estimate is
meant to be right within a factor of about 2 to 3 (``benchmarks/bench_mc_cost.py`` measures it).

Nothing is estimated when the work is small (under :data:`SMALL` logits in all): the timing
itself would cost more than it tells.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .average import MAX_DRAWS, Averager
from ..losses.registry import LossSpec

#: Whole-vector evaluations the solver adds to its scan of z (peak: slopes and Brent on the
#: slope; match/target: the peak, then Brent on each side of it), from a survey of NFL and
#: biTemp at K = 3 ... 10^4 and logit std 0.5 and 2 (the largest seen, rounded up).
EXTRA_EVALUATIONS = {"match": 40, "target": 40, "peak": 30}
#: Below this many logits in all, no estimate (well under a second of work).
SMALL = 20_000_000
#: Logits in the timed chunk.
PROBE = 1 << 18


@dataclass(frozen=True)
class Cost:
    """The estimated Monte Carlo work of a command."""

    seconds: float
    draws: int  # logits drawn in all: what ``Averager.on_draws`` counts
    evaluations: int  # whole-vector evaluations
    samples: int
    classes: int  # the largest K with whole-vector work

    def describe(self) -> str:
        return (f"Monte Carlo over whole logit vectors: about {self.evaluations} evaluations "
                f"of {self.samples} vectors of up to K = {self.classes} logits")


def whole_vector_terms(loss: LossSpec, params: Mapping[str, float]) -> list:
    """The terms of ``loss`` that are averaged by evaluating whole logit vectors."""
    return [t for t in loss.terms(params) if t.loss.sigma is None and t.loss.mc_reduce is None]


def _monte_carlo(loss: LossSpec, params) -> bool:
    return any(t.loss.sigma is None for t in loss.terms(params))


def epsilon_evaluations(averager: Averager, classes: int, criterion: str = "match",
                        reference_classes: int = 10) -> dict[int, int]:
    """{K: whole-vector evaluations} of ``solve_epsilon``."""
    from .window import scan_window

    n = len(scan_window(averager.dist, averager, classes)) + EXTRA_EVALUATIONS.get(criterion, 40)
    out = {classes: n}
    if criterion == "match" and reference_classes != classes:
        out[reference_classes] = 1
    return out


def transfer_evaluations(loss: LossSpec, params: Mapping[str, float], param: str,
                         k_from: int, k_to: int) -> dict[int, int]:
    """{K: whole-vector evaluations} of ``solve_transfer``: a parameter that only weights a
    term costs one evaluation (each term is evaluated once and re-weighted); one inside a
    whole-vector term costs the scan of the parameter and the root's refinement."""
    from .param_scan import near_scan as _scan

    spec = loss.param(param)
    value = float(params[param])
    other = dict(params)
    for v in (value * 1.5, value * 0.5, value + 0.5, value - 0.5):
        if v != value and spec.contains(v):
            other[param] = v
            break

    def keys(p):
        return {(t.loss.name, tuple(sorted(t.params.items()))) for t in whole_vector_terms(loss, p)}

    inside = keys(params) != keys(other)
    n_to = len(_scan(spec, value)) + 15 if inside else 2
    out = {k_to: n_to}
    out[k_from] = out.get(k_from, 0) + 1
    return out


def monte_carlo_cost(averager: Averager,
                     work: list[tuple[LossSpec, Mapping[str, float], Any]]) -> Cost | None:
    """The estimated cost of ``work``: per loss, its parameters and {K: evaluations} (or a
    function returning it, called only for a loss averaged by Monte Carlo). None when
    nothing is averaged by Monte Carlo, the work is small, or the engine will refuse it
    (more than ``MAX_DRAWS`` draws)."""
    at = averager.samples_at  # vectors drawn at K (the draw budget lowers it at large K)
    entries = []  # (K, whole-vector terms, evaluations of each)
    passes: set[int] = set()  # K with one pass of draws (reductions, control variates)
    for loss, params, evals in work:
        if not _monte_carlo(loss, params):
            continue
        if callable(evals):
            evals = evals()
        terms = whole_vector_terms(loss, params)
        for k, n in evals.items():
            if at(k) * (k - 1) > MAX_DRAWS:
                return None  # refused by the engine with its own message
            passes.add(k)
            if terms:
                entries.append((k, terms, n))
    logits = (sum(n * len(terms) * at(k) * k for k, terms, n in entries)
              + sum(at(k) * (k - 1) for k in passes))
    if logits < SMALL:
        return None
    seconds, draws = 0.0, 0
    for k in passes:
        seconds += at(k) * (k - 1) * _rates(averager, k, [])[0]
        draws += at(k) * (k - 1)
    for k, terms, n in entries:  # every evaluation of a term draws its vectors anew
        seconds += n * at(k) * k * _rates(averager, k, terms)[1]
        draws += n * len(terms) * at(k) * (k - 1)
    evaluations = sum(n * len(terms) for _, terms, n in entries)
    if not evaluations and seconds < 2.0:
        return None
    largest = max(k for k, _, _ in entries) if entries else max(passes)
    return Cost(seconds, draws, evaluations, at(largest), largest)


def _rates(averager: Averager, classes: int, terms: list) -> tuple[float, float]:
    """(seconds per drawn logit, seconds per logit of one evaluation of every whole-vector
    term, drawing included), the median of three timings of one chunk of about PROBE logits
    (the median, not the fastest: on a loaded machine the run will see the load too)."""
    n = classes - 1
    rows = max(1, min(averager.samples_at(classes), PROBE // n))
    rng = np.random.default_rng([averager.seed, classes, 2 ** 31])  # not the run's draws
    zk = math.log(n) + averager._log_m  # where p = σ_k is about 1/2
    draw, evaluate = [], []
    with np.errstate(all="ignore"):
        for _ in range(3):
            t0 = time.perf_counter()
            c = averager.dist.sample(rng, (rows, n))
            t1 = time.perf_counter()
            if terms:
                logits = np.empty((rows, classes))
                logits[:, 0] = zk
                logits[:, 1:] = c
                for t in terms:
                    t.loss.full(logits, t.params)
            t2 = time.perf_counter()
            draw.append((t1 - t0) / (rows * n))
            evaluate.append((t2 - t0) / (rows * classes))
    return float(np.median(draw)), float(np.median(evaluate))
