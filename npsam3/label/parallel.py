"""Labelling in worker processes on this machine: each loads the bundle once and labels one
image at a time; the parent (the only writer of the rows) takes the results as they come.

Workers are spawned (a fresh interpreter each; concurrent.futures) with NPSAM3_NUM_THREADS and the BLAS / OpenMP
thread variables set to cores / workers, so they are in force before npsam3 and NumPy load and
the workers together use the cores once, not N times over.
"""

import itertools
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from ..errors import Npsam3Error

THREAD_VARIABLES = ("NPSAM3_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def thread_environment(threads):
    """The environment variables that hold a process to ``threads`` compute threads."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def limit_threads(threads):
    """Hold this process to ``threads`` threads: npsam3's pool and onnxruntime sessions made from
    now on (NPSAM3_NUM_THREADS), and BLAS (already loaded: threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    os.environ.update(thread_environment(threads))
    threadpool_limits(threads)


@contextmanager
def _environment(variables):
    """``os.environ`` with ``variables`` set, restored on exit (spawned children inherit it)."""
    old = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_labeler = None


def _start_worker(settings, kernels):
    global _labeler
    from .labeler import Labeler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _labeler = Labeler(settings, kernels)


def _label(path):
    return _labeler(path)


def label_in_processes(settings, paths, workers, threads=None, kernels=None):
    """(kind, value) per path from ``workers`` spawned processes, in completion order (see
    Labeler); threads per worker default to cores / workers. Two images per worker are in
    flight at most. Leaving the generator early (an error, Ctrl-C, SIGTERM) cancels the rest (the
    workers end after their current image); a worker that dies (e.g. killed for memory) ends the
    job with an error, the rows so far kept."""
    threads = threads or max(1, cores() // workers)
    todo = iter(paths)
    with _environment(thread_environment(threads)):  # workers are spawned as work is submitted
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(settings, kernels))
        try:
            running = {pool.submit(_label, p) for p in itertools.islice(todo, 2 * workers)}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                running |= {pool.submit(_label, p) for p in itertools.islice(todo, len(done))}
                for future in done:
                    yield future.result()
        except BrokenProcessPool:
            raise Npsam3Error("a worker process died (out of memory?); the rows so far are "
                              "kept: run the job again to go on") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
