"""How many CPU threads torch uses when ``--threads`` is not given.

torch's own default is one thread per physical core. On a machine whose cores are busy with
other work, its OpenMP threads spin while they wait for each other, and a run can become ten
or twenty times slower than with one thread. So the default here is the number of *free*
physical cores: the physical cores this process may run on, less the one-minute load average,
rounded, at least 1 (a loaded 2-core machine gets 1). The choice is made once per process
(a ``validate`` grid keeps the choice of its first run, not one lowered by its own load) and
printed with its reason. OpenMP's wait policy is set to PASSIVE (sleep instead of spin) unless
``OMP_WAIT_POLICY`` is set, so that load that starts after the choice cannot collapse a run
either.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys

_CHOICE: tuple[int, str] | None = None


def available_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None) -> int:
    """Physical cores among ``cpus`` (Linux topology files; else the logical count)."""
    cpus = available_cpus() if cpus is None else cpus
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology"
        try:
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
            with open(f"{base}/physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def choose(cores: int, load: float | None) -> int:
    """Free physical cores: ``cores - load`` rounded, between 1 and ``cores``."""
    if load is None:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def default_threads() -> tuple[int, str]:
    """(threads, reason) for this process; decided on the first call."""
    global _CHOICE
    if _CHOICE is None:
        cores = physical_cores()
        load = load_average()
        n = choose(cores, load)
        where = f"{cores} physical core{'s' if cores != 1 else ''}"
        why = f"{where}, load {load:.1f}" if load is not None else where
        _CHOICE = (n, f"free cores: {why}; --threads N to change")
    return _CHOICE


def bound(requested: int) -> tuple[int, str]:
    """(threads, reason) for ``--threads requested``: at most the logical CPUs this process may
    run on. More threads than CPUs only wait for each other, and OpenMP gives each its own
    stack: ``--threads 100000`` would exhaust memory (failed imports, a crash), so it is clamped,
    and the reason says so."""
    cpus = len(available_cpus())
    if requested > cpus:
        return cpus, (f"--threads {requested} is more than the {cpus} CPU{'s' if cpus != 1 else ''} "
                      f"this process may run on; using {cpus}")
    return int(requested), "--threads"


def resolve(requested: int | None) -> tuple[int, str]:
    """``--threads`` if given (clamped by :func:`bound`), else :func:`default_threads`."""
    if requested is not None:
        return bound(int(requested))
    return default_threads()


def before_torch() -> None:
    """Call before torch is first imported: OpenMP threads sleep rather than spin while
    waiting (unless the environment says otherwise)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
