"""This process's resident memory, from Linux's ``/proc/self/status``, for the
benchmarks: the current RSS, and the peak (VmHWM) since it was last reset; and the
peak memory figure the benchmarks report, named for what it is.

Without ``/proc`` (not Linux) there is no current RSS (nan), :func:`peak_rss_mb`
raises, :func:`reset_peak_rss` returns False, and the peak figure
(:func:`peak_rss_figure`) is ``getrusage``'s ``ru_maxrss``, which cannot be reset: a
peak since the process started."""
import sys

__all__ = ['rss_mb', 'peak_rss_mb', 'reset_peak_rss', 'peak_rss_figure', 'peak_memory',
           'peak_mem_header', 'PEAK_MEM_HEADERS']

# A table's header for the benchmarks' ``peak_mem_mb`` (MiB), by its ``peak_mem_kind``:
# the process's peak resident memory on the CPU, the caching allocator's peak of
# allocated tensors on CUDA.
PEAK_MEM_HEADERS = {'rss': 'peak_rss_MiB', 'cuda_allocated': 'peak_cuda_allocated_MiB'}
# What a peak RSS figure's source adds where the peak could not be reset (VmHWM starts
# anew at exec, ru_maxrss does not).
NOT_RESET = {'VmHWM': ' (not reset: a peak since this program started)',
             'ru_maxrss': ' (not reset: a peak since the process started)'}


def _status_mb(field: str):
    """``/proc/self/status``'s ``field`` (``VmRSS``, ``VmHWM``) in MiB, or None (also
    where there is no ``/proc``)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(f'{field}:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
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


def reset_peak_rss() -> bool:
    """Start the peak (VmHWM) anew from the current RSS. Returns whether it could:
    False where ``/proc/self/clear_refs`` cannot be written (no ``/proc``): the peak
    then runs on from the start (give the answer to :func:`peak_memory`)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return True


def peak_rss_figure(was_reset: bool = True) -> tuple:
    """``(MiB, source)``: this program's peak resident set size, from ``'VmHWM'``
    (:func:`peak_rss_mb`), or from ``'ru_maxrss'`` where there is no
    ``/proc/self/status`` (not Linux). ``ru_maxrss`` is the process's peak over its
    whole life, before ``exec`` too: a child started by a larger parent reports at
    least the parent's size. ``was_reset``: False where :func:`reset_peak_rss` could
    not reset the peak, the source then saying so (``'ru_maxrss (not reset: a peak
    since the process started)'``)."""
    value = _status_mb('VmHWM')
    if value is not None:
        return value, 'VmHWM' if was_reset else 'VmHWM' + NOT_RESET['VmHWM']
    import resource
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss / (2**20 if sys.platform == 'darwin' else 1024),  # B / KiB
            'ru_maxrss' if was_reset else 'ru_maxrss' + NOT_RESET['ru_maxrss'])


def peak_memory(device, was_reset: bool = True) -> dict:
    """The benchmarks' peak memory on ``device`` (a ``torch.device``), in MiB, under
    ``peak_mem_mb`` (the key tools/gpu_benchmarks.py and the recorded JSON read) with
    ``peak_mem_kind`` saying which figure it is: ``'cuda_allocated'``
    (``torch.cuda.max_memory_allocated``) or ``'rss'`` (:func:`peak_rss_figure`, its
    source under ``peak_rss_source``). Reset the peak before what it should cover;
    ``was_reset``: :func:`reset_peak_rss`'s answer (the CPU's source says where it
    could not)."""
    if device.type == 'cuda':
        import torch
        return dict(peak_mem_mb=torch.cuda.max_memory_allocated(device) / 2**20,
                    peak_mem_kind='cuda_allocated')
    value, source = peak_rss_figure(was_reset)
    return dict(peak_mem_mb=value, peak_mem_kind='rss', peak_rss_source=source)


def peak_mem_header(kinds) -> str:
    """A table's header for ``peak_mem_mb`` of rows of these ``peak_mem_kind`` values:
    :data:`PEAK_MEM_HEADERS`' for one known kind, ``peak_mem_MiB`` otherwise."""
    kinds = set(kinds)
    return PEAK_MEM_HEADERS.get(kinds.pop(), 'peak_mem_MiB') if len(kinds) == 1 \
        else 'peak_mem_MiB'
