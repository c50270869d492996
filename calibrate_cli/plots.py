r"""Figures (``calibrate plot``), drawn with matplotlib's Agg backend.

Each ``figure_<name>`` returns a matplotlib Figure whose lines hold exactly
the plotted numbers (the tests read them back with ``Line2D.get_data``);
:func:`save_figure` writes PNG, SVG or PDF by extension, atomically.

1. ``delta-mae``: MAE's <δ_k>(z_k) for K = 10 and 100 over the histogram of
   the initial logits (the paper's Figure 1). MAE = 2 - 2σ_k, δ_k = -2σ_k(1-σ_k).
2. ``losses``: several σ_k-only losses at K = 10 and 1000, each <δ_k>(z)
   divided by its largest |<δ_k>| (their scales differ), with the histogram of
   the correct-class logit shifted by MAE's ε (match, K_ref = 10).
3. ``q-calibration``: GCE at K = 100 with q = 0.7, at K = 1000 with the same q
   and with the transferred q; right: the transferred q against K.
4. ``epsilon-vs-k``: ε(K) for the criteria match and peak, with the mean-field
   approximations ln((K-1)/(K_ref-1)) and ln(K-1) + s²/2 (MAE, Gaussian).
5. ``logit-histogram``: measured logits (per-row centred) and the Gaussian
   N(0, std²) fitted by moments, with the Kolmogorov–Smirnov distance.
6. ``accuracy``: test top-1 against epoch from a ``calibrate validate`` run,
   mean over seeds with a ±1 std band, one panel per noise setting; below, the
   fraction of mislabelled training samples predicted as their noisy label
   (memorisation), when the runs recorded it (:func:`plot_accuracy`).
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np

from .errors import UsageError

FIGURES = ("delta-mae", "losses", "q-calibration", "epsilon-vs-k", "logit-histogram", "accuracy")
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
LOSSES = ("mae", "gce", "agce", "aul", "ael", "rce")
DPI = 120


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_output(path: str) -> str:
    """The matplotlib format for ``path``; UsageError unless .png, .svg or .pdf."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"--out '{path}': the extension must be .png, .svg or .pdf")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out '{path}': folder '{folder}' does not exist")
    return FORMATS[ext]


def save_figure(fig, path: str, *, dpi: int = DPI) -> None:
    """Render ``fig`` in the format of ``path``'s extension and write it atomically."""
    from .utils.atomic import write_atomic

    fmt = check_output(path)
    buf = io.BytesIO()
    meta = {"Software": None} if fmt == "png" else ({"Date": None} if fmt == "svg"
                                                     else {"CreationDate": None})
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    _plt().close(fig)
    write_atomic(path, buf.getvalue())


def _default_dist(dist):
    from .engine.logits import Gaussian

    return Gaussian() if dist is None else dist


def _logit_sample(dist, n: int = 20000, seed: int = 0) -> np.ndarray:
    """Values of the logit distribution (its own values when measured) for histograms."""
    if hasattr(dist, "values"):
        return np.asarray(dist.values) + dist.mean
    return dist.sample(np.random.default_rng(seed), (n,)) + dist.mean


def _z_grid(dist, av, k_max: int, n: int = 301) -> np.ndarray:
    zc = dist.mean + math.log((k_max - 1) * av._m)
    lo = dist.mean - 4.0 - 3 * dist.std
    return np.linspace(lo, zc + 6.0, n)


def _hist(ax, values, color, label, bins=60):
    ax.hist(values, bins=bins, density=True, color=color, alpha=0.25, label=label)
    ax.set_yticks([])
    ax.set_ylabel("density of initial logits", color="0.4")


def _desc(dist) -> str:
    d = dist.describe()
    if d["kind"] == "gaussian":
        return f"Gaussian logits, std {d['std']:g}"
    return f"measured logits, std {d['std']:.3g}"


# ---------------------------------------------------------------- figure 1
def figure_delta_mae(dist=None, classes=(10, 100)):
    """<δ_k>(z) of MAE for each K in ``classes`` over the histogram of initial logits."""
    from .engine.average import Averager
    from .losses import get_loss, resolve_params

    plt = _plt()
    dist = _default_dist(dist)
    av = Averager(dist)
    mae = get_loss("mae")
    params = resolve_params(mae)
    z = _z_grid(dist, av, max(classes))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, k in enumerate(classes):
        ax.plot(z, av.mean_delta(mae, params, k, z).value, color=f"C{i}", lw=2, label=f"K = {k}")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("correct-class logit $z_k$")
    ax.set_ylabel(r"$\langle\delta_k\rangle(z_k)$")
    ax.set_title(f"MAE: average error of the correct class ({_desc(dist)})", fontsize=10)
    ax.legend(loc="lower right")
    _hist(ax.twinx(), _logit_sample(dist), "0.3", "initial logits")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure 2
def figure_losses(dist=None, losses=LOSSES, classes=(10, 1000)):
    """Normalised <δ_k>(z) of σ_k-only losses at each K; histogram shifted by MAE's ε."""
    from .engine.average import Averager
    from .losses import get_loss, resolve_params
    from .engine.solve import solve_epsilon

    plt = _plt()
    dist = _default_dist(dist)
    av = Averager(dist)
    specs = [get_loss(n) for n in losses]
    bad = [s.name for s in specs if not s.sigma_only]
    if bad:
        raise UsageError(f"the losses figure draws σ_k-only losses; {', '.join(bad)} needs Monte Carlo")
    fig, axes = plt.subplots(1, len(classes), figsize=(5.2 * len(classes), 4.0), squeeze=False)
    values = _logit_sample(dist)
    mae = get_loss("mae")
    for ax, k in zip(axes[0], classes):
        z = _z_grid(dist, av, k)
        for i, spec in enumerate(specs):
            v = av.mean_delta(spec, resolve_params(spec), k, z).value
            ax.plot(z, v / np.max(np.abs(v)), color=f"C{i}", lw=1.6, label=spec.name)
        eps = solve_epsilon(mae, resolve_params(mae), k, dist, averager=av).epsilon
        eps = 0.0 if abs(eps) < 5e-9 else eps
        ax.set_title(f"K = {k}: histogram shifted by ε = {eps:.2f} (MAE, match)", fontsize=10)
        ax.set_xlabel("correct-class logit $z_k$")
        ax.set_ylabel(r"$\langle\delta_k\rangle$ / max $|\langle\delta_k\rangle|$")
        tw = ax.twinx()
        if abs(eps) > 1e-9:
            tw.hist(values, bins=60, density=True, color="0.6", alpha=0.2, label="ε = 0")
        _hist(tw, values + eps, "C3", "shifted by ε")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Bounded losses at initialisation ({_desc(dist)}; defaults of each loss)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure 3
def figure_q_calibration(dist=None, k_from=100, k_to=1000, q_from=0.7, sweep=None):
    """GCE's <δ_k>(z) before and after transferring q; q against K on the right."""
    from .engine.average import Averager
    from .errors import NoSolutionError
    from .losses import get_loss
    from .engine.solve import solve_q

    plt = _plt()
    dist = _default_dist(dist)
    av = Averager(dist)
    gce = get_loss("gce")
    q_to = solve_q(k_from, k_to, dist, q_from=q_from, averager=av).value
    z = _z_grid(dist, av, max(k_from, k_to))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.4, 4.0))
    curves = [(k_from, q_from, "C0", "-"), (k_to, q_from, "C1", "--"), (k_to, q_to, "C1", "-")]
    for k, q, color, ls in curves:
        ax.plot(z, av.mean_delta(gce, {"q": q}, k, z).value, color=color, ls=ls, lw=1.8,
                label=f"K = {k}, q = {q:.3f}")
    target = float(av.mean_delta(gce, {"q": q_from}, k_from, dist.mean).value[0])
    ax.axvline(dist.mean, color="0.5", lw=0.8)
    ax.plot([dist.mean], [target], "ko", ms=5)
    ax.set_xlabel("correct-class logit $z_k$")
    ax.set_ylabel(r"$\langle\delta_k\rangle(z_k)$")
    ax.set_title(f"GCE: q = {q_from} at K = {k_from} becomes {q_to:.3f} at K = {k_to}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ks = list(sweep) if sweep is not None else [int(k) for k in np.unique(np.round(
        np.geomspace(10, 10**5, 13)))]
    qs = []
    for k in ks:
        try:
            qs.append(solve_q(k_from, k, dist, q_from=q_from, averager=av).value)
        except NoSolutionError:
            qs.append(np.nan)
    bx.semilogx(ks, qs, "o-", color="C2", ms=4, label="transferred q")
    bx.plot([k_to], [q_to], "s", color="C1", ms=7)
    bx.axhline(q_from, color="0.6", lw=0.8, ls=":")
    bx.set_xlabel("number of classes K")
    bx.set_ylabel("q")
    bx.set_title(f"q(K) from q = {q_from} at K = {k_from} ({_desc(dist)})", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure 4
def figure_epsilon_vs_k(dist=None, loss="mae", classes=None, reference_classes=10):
    """ε(K) for the match and peak criteria and their mean-field approximations."""
    from .engine.average import Averager
    from .errors import NoSolutionError
    from .losses import get_loss, resolve_params
    from .engine.solve import solve_epsilon

    plt = _plt()
    dist = _default_dist(dist)
    av = Averager(dist)
    spec = get_loss(loss)
    params = resolve_params(spec)
    ks = np.array(classes if classes is not None else
                  sorted({int(round(k)) for k in np.geomspace(2, 10**6, 31)}))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, crit in enumerate(("match", "peak")):
        eps = []
        for k in ks:
            try:
                eps.append(solve_epsilon(spec, params, int(k), dist, criterion=crit,
                                         reference_classes=reference_classes, averager=av).epsilon)
            except NoSolutionError:
                eps.append(np.nan)
        ax.semilogx(ks, eps, "o-", ms=3, color=f"C{i}", label=crit)
    m = av._m  # E[e^{z-μ}]
    ax.semilogx(ks, np.log((ks - 1) / (reference_classes - 1)), ":", color="C0",
                label=r"mean field $\ln\frac{K-1}{K_{ref}-1}$")
    ax.semilogx(ks, np.log(ks - 1) + np.log(m), ":", color="C1",
                label=r"mean field $\ln(K-1)+\ln E[e^{z}]$")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("number of classes K")
    ax.set_ylabel("logit bias ε")
    ax.set_title(f"{spec.name}: ε against K (K_ref = {reference_classes}; {_desc(dist)})",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure 5
def figure_logit_histogram(logits, title: str = "measured logits"):
    """Histogram of per-row centred logits [N, K] and the moment-fitted Gaussian."""
    from .measure import logit_stats

    plt = _plt()
    z = np.asarray(logits, dtype=float)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or z.shape[1] < 2 or z.size < 4:
        raise UsageError(f"logit histogram: need logits of shape [N, K], got {np.shape(logits)}")
    stats = logit_stats(z) if z.shape[0] >= 2 else None
    c = (z - z.mean(axis=1, keepdims=True)).ravel()
    s = float(c.std())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.hist(c, bins=80, density=True, color="C0", alpha=0.5, label=f"{c.size} logits")
    x = np.linspace(c.min() - s, c.max() + s, 400)
    ax.plot(x, np.exp(-0.5 * (x / s) ** 2) / (s * math.sqrt(2 * math.pi)), color="C3", lw=2,
            label=f"Gaussian fit, std {s:.4f}")
    if stats is not None:
        text = (f"skewness {stats['skewness']:+.3f}\nexcess kurtosis "
                f"{stats['excess_kurtosis']:+.3f}\nKS distance {stats['ks_distance']:.4f}")
        ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlabel(r"logit minus its row mean, $z_{nk} - \bar z_n$")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- figure 6
def accuracy_curves(results: dict, key: str = "test_top1") -> dict:
    """{(label, noise): (epochs, mean %, std %, n)} over the runs that have epochs.

    Runs of one (label, noise) are cut to their common epochs (a run still
    in progress does not shorten the others' history beyond what they share).
    ``key``: the per-epoch list of each run (``test_top1``; ``memorised``, which is
    empty without noise: such groups are left out).
    """
    runs = results.get("runs") if isinstance(results, dict) else None
    if not isinstance(runs, list):
        raise UsageError("validate results: no 'runs' list (is this a results.json of "
                         "'calibrate validate'?)")
    try:
        groups: dict = {}
        for r in runs:
            if r.get("epochs") and r.get(key) and all(v is not None for v in r[key]):
                groups.setdefault((r["label"], r["noise"]), []).append(r)
        out = {}
        for group, rs in groups.items():
            common = sorted(set.intersection(*[set(r["epochs"]) for r in rs]))
            if not common:
                continue
            acc = np.array([[100.0 * float(dict(zip(r["epochs"], r[key]))[e])
                             for e in common] for r in rs])
            std = acc.std(axis=0, ddof=1) if len(rs) > 1 else np.zeros(len(common))
            out[group] = (np.array(common), acc.mean(axis=0), std, len(rs))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"validate results: a run entry is not as 'calibrate validate' writes "
                         f"it ({type(exc).__name__}: {exc})") from None
    return out


def figure_accuracy(results: dict, *, allow_empty: bool = False):
    """Figure 6; with ``allow_empty`` a run with no finished epoch gives a figure saying so."""
    plt = _plt()
    curves = accuracy_curves(results)
    if not curves:
        if not allow_empty:
            raise UsageError("validate results: no run has any finished epoch yet")
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    grid = results.get("grid", {})
    noises = list(dict.fromkeys(k[1] for k in curves))
    labels = list(dict.fromkeys(k[0] for k in curves))
    memo = accuracy_curves(results, "memorised")
    rows = 2 if memo else 1
    fig, axes = plt.subplots(rows, len(noises), figsize=(4.8 * len(noises), 3.8 * rows),
                             squeeze=False, sharey="row")
    for row, data in enumerate([curves, memo][:rows]):
        for ax, noise in zip(axes[row], noises):
            for i, label in enumerate(labels):
                if (label, noise) not in data:
                    continue
                ep, mean, std, n = data[(label, noise)]
                ax.plot(ep, mean, color=f"C{i % 10}", lw=1.6, label=f"{label} (n={n})")
                ax.fill_between(ep, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2, lw=0)
            ax.set_title(f"noise {noise}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 (%), mean ± std over seeds")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if memo:
        axes[1][0].set_ylabel("memorised (%): mislabelled training\nsamples predicted as their "
                              "noisy label")
        for noise, ax in zip(noises, axes[1]):
            if not any(k[1] == noise for k in memo):
                ax.text(0.5, 0.5, "no label noise", ha="center", va="center",
                        transform=ax.transAxes)
    if grid:
        fig.suptitle(f"{grid.get('dataset', '')}, K = {grid.get('classes') or 'all'}, "
                     f"{grid.get('model', '')}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_accuracy(results: dict, path: str) -> None:
    """Figure 6 from a parsed ``<validate out>/results.json``, written to ``path``.

    Called by ``calibrate validate`` at the end of a run: never fails for lack of
    data (a run with no finished epoch gives a figure saying so).
    """
    check_output(path)
    save_figure(figure_accuracy(results, allow_empty=True), path)


def read_validate(folder: str) -> dict:
    """The parsed results.json of a ``calibrate validate`` output folder (or the file itself)."""
    path = folder if os.path.isfile(folder) else os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise UsageError(f"--validate '{folder}': no results.json there (run 'calibrate validate' "
                         "first)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read '{path}': {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise UsageError(f"'{path}' is not the results.json of 'calibrate validate' (expected an "
                         f"object with a 'runs' list, found {type(data).__name__})")
    return data
