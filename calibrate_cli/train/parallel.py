"""Training the runs of a grid (``calibrate validate``, ``calibrate sweep``), one or several at once.

With ``jobs = 1`` the runs train one after the other in this process, which loads the
dataset once. With ``jobs = N > 1`` they train N at a time in worker processes
(``spawn``: no state, no OpenMP pool, inherited from the parent), each of which loads the
dataset once and sets torch's thread count from the run's ``--threads`` (default: the
CPU count divided by N, at least 1). On a machine with several GPUs the workers take
them in turn (worker i trains on GPU i mod the GPU count). A run depends only on its own settings and seeds,
so the results are those of ``jobs = 1`` at the same ``--threads``; the tests check that.

Ctrl-C: every worker finishes writing its current run's completed epochs (each run
catches the interrupt as ``calibrate train`` does), the parent then raises
``KeyboardInterrupt``; running the same command again resumes the grid. A parent that dies
without a chance to stop its workers (``kill -9``, SIGTERM) is noticed by each worker within
a second: the worker interrupts its run the same way (its completed epochs saved) and exits,
instead of training on as an orphan that a re-run of the grid would find holding the run's
folder.

A worker that dies (``kill -9``, the out-of-memory killer) ends the grid with one line saying
so and how to resume (a :class:`~calibrate_cli.errors.RunError`, exit 1): every run's completed
epochs are on disk (each epoch is written atomically), and the run it was training resumes
from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Callable

from .config import TrainConfig

_BUNDLE = None  # the dataset of a worker process, loaded once
_RUNNING = threading.Event()  # set while a worker trains a run


def _load_bundle(cfg: TrainConfig):
    from .data import load_dataset

    return load_dataset(cfg.dataset, cfg.data_dir, classes=cfg.classes,
                        train_per_class=cfg.train_samples_per_class,
                        test_per_class=cfg.test_samples_per_class,
                        image_size=cfg.image_size, seed=cfg.data_seed)


def _resume(cfg: TrainConfig) -> bool:
    from .records import CHECKPOINT

    return os.path.isfile(os.path.join(cfg.out, CHECKPOINT))


def default_threads(jobs: int) -> int:
    """CPU threads per run when ``jobs`` runs share the machine: physical cores // jobs, at
    least 1 (the runs' own load is expected, so the load average does not lower it)."""
    from .threads import physical_cores

    return max(1, physical_cores() // max(1, jobs))


#: Seconds a worker whose parent died gives its interrupted run to save, before it exits.
ORPHAN_GRACE = 60.0


def _watch_parent(parent: int, poll: float = 1.0) -> None:
    """Interrupt this worker (SIGINT: the run saves its completed epochs) once ``parent`` is
    gone, then end the process: nobody is left to give it work or read its result."""
    while os.getppid() == parent:
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGINT)
    end = time.monotonic() + ORPHAN_GRACE
    while _RUNNING.is_set() and time.monotonic() < end:
        time.sleep(0.1)
    os._exit(130)


def _worker_init(cfg_dict: dict, threads: int, counter, parent: int | None = None) -> None:
    """Threads, and on a machine with several GPUs one GPU per worker, in turn; a watch on the
    parent process (see the module's docstring). The dataset is loaded by the first run."""
    if parent is not None:
        # the watch interrupts this worker by SIGINT: a grid started in the background (nohup,
        # `&`) passes SIGINT on ignored, and the orphan would train on instead of saving
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="calibrate-parent-watch").start()
    import torch

    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if cfg_dict.get("device") in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(index % torch.cuda.device_count())


def _worker_run(cfg_dict: dict, command: str | None, resume_hint: str | None) -> dict:
    global _BUNDLE
    from .loop import train

    cfg = TrainConfig(**cfg_dict)
    if _BUNDLE is None:  # here, not in the initializer: an error reaches the parent as itself
        _BUNDLE = _load_bundle(cfg)
    _RUNNING.set()
    try:
        result = train(cfg, resume=_resume(cfg), bundle=_BUNDLE, progress=False,
                       command=command, resume_hint=resume_hint)
    finally:
        _RUNNING.clear()
    return {"last_top1": result.last_top1, "best_top1": result.best_top1,
            "epsilon": result.derived.get("epsilon")}


def train_runs(todo: list[tuple[str, TrainConfig]], *, jobs: int = 1, bundle=None,
               progress: bool = True, command: str | None = None,
               log: Callable[[str], None] = print, resume_hint: str | None = None) -> None:
    """Train (or resume) each ``(tag, config)`` of ``todo``; ``jobs`` at a time."""
    if not todo:
        return
    from .threads import available_cpus

    cpus = len(available_cpus())
    if int(jobs) > max(cpus, 1) and len(todo) > cpus:  # one process per CPU at most
        log(f"--jobs {jobs} is more than the {cpus} CPUs this process may run on; "
            f"training {cpus} runs at a time")
        jobs = cpus
    jobs = max(1, min(int(jobs), len(todo)))
    if jobs == 1:
        from .loop import train

        for tag, cfg in todo:
            resume = _resume(cfg)
            log(f"{tag}: {'resuming' if resume else 'training'} in {cfg.out}")
            if bundle is None:
                bundle = _load_bundle(cfg)
            train(cfg, resume=resume, bundle=bundle, progress=progress, command=command,
                  resume_hint=resume_hint)
        return

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from ..errors import RunError

    from .threads import bound

    threads, why = bound(todo[0][1].threads or default_threads(jobs))
    todo = [(tag, dataclasses.replace(cfg, threads=bound(cfg.threads or threads)[0]))
            for tag, cfg in todo]
    log(f"training {len(todo)} runs, {jobs} at a time, {threads} thread(s) each"
        + (f" ({why})" if why != "--threads" else ""))
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(todo[0][1].to_dict(), threads, ctx.Value("i", 0), os.getpid()))
    pending = {}
    queue = list(todo)
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                tag, cfg = queue.pop(0)
                log(f"{tag}: {'resuming' if _resume(cfg) else 'training'} in {cfg.out}")
                pending[pool.submit(_worker_run, cfg.to_dict(), command, resume_hint)] = tag
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                tag = pending.pop(fut)
                try:
                    r = fut.result()  # re-raises a run's error here
                except BrokenProcessPool:
                    raise RunError(
                        f"a worker process died (killed, or out of memory) while training {tag}; "
                        "the completed epochs of every run are saved, "
                        + (resume_hint or "run the same command again to continue")) from None
                if r["last_top1"] is not None:
                    log(f"{tag}: done, test top-1 {100 * r['last_top1']:.2f}% at the last epoch, "
                        f"{100 * r['best_top1']:.2f}% best")
    except BaseException:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # let the workers save their epochs
        raise
    pool.shutdown(wait=True)
