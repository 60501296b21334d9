"""This process's resident memory, from Linux's ``/proc/self/status``, for the
benchmarks: the current RSS, and the peak (VmHWM) since it was last reset."""

__all__ = ['rss_mb', 'peak_rss_mb', 'reset_peak_rss']


def _status_mb(field: str):
    """``/proc/self/status``'s ``field`` (``VmRSS``, ``VmHWM``) in MiB, or None."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(f'{field}:'):
                return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    """Current resident set size in MiB (nan where the kernel does not report it)."""
    value = _status_mb('VmRSS')
    return float('nan') if value is None else value


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since :func:`reset_peak_rss` (or the process's
    start). Unlike ``ru_maxrss``, which Linux carries across ``exec`` from the
    parent, it starts anew in every program."""
    value = _status_mb('VmHWM')
    if value is None:
        raise RuntimeError('no VmHWM in /proc/self/status')
    return value


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) anew from the current RSS."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
