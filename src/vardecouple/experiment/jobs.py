"""Several arm × seed jobs at once: spawned processes, each with its share of the threads
and, when there are several GPUs, its own GPU."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import make_context
from vardecouple.experiment.evaluation import evaluate_arm_seed
from vardecouple.progress import tag_reports

__all__ = ["job_gpus"]


def _worker(
    config: ExperimentConfig, out: Path, arm: str, seed: int, threads: int, progress: bool
) -> None:
    torch.set_num_threads(threads)
    if progress:  # the jobs share one terminal: whole lines, each tagged with its job
        tag_reports(f"{arm} seed {seed}")
    context = make_context(config, out)
    context.progress = progress
    evaluate_arm_seed(context, arm, seed)


def job_gpus(jobs: int, visible: str | None = None, count: int | None = None) -> list[str | None]:
    """The GPU each of ``jobs`` worker processes sees (its ``CUDA_VISIBLE_DEVICES``): the
    visible GPUs in turn (``visible``: the parent's ``CUDA_VISIBLE_DEVICES``, ``count``:
    how many CUDA reports); ``None`` for every job when there is no GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if count is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else []
    ids = ids[:count] if ids else [str(k) for k in range(count)]
    return [ids[k % len(ids)] if ids else None for k in range(jobs)]


def _pin_gpu(queue: Any) -> None:
    """A job process's initializer: it sees only the GPU it is given (before CUDA starts)."""
    gpu = queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def run_parallel(
    config: ExperimentConfig,
    out: Path,
    arm: str,
    seeds: list[int],
    jobs: int,
    on_done: Any = None,
    progress: bool = False,
) -> None:
    """Train and evaluate ``seeds`` of ``arm`` in ``jobs`` processes (spawned; each its
    own GPU when several are visible, :func:`job_gpus`); ``on_done(seed)`` is called as
    each one finishes. With ``progress`` each job reports its training and decoding in
    whole lines tagged ``[ARM seed N]``."""

    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(seeds))
    gpus = context.Queue()
    for gpu in job_gpus(workers):  # with several GPUs each job has its own
        gpus.put(gpu)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_gpu,
                             initargs=(gpus,)) as pool:  # fmt: skip
        futures = {
            pool.submit(_worker, config, out, arm, seed, threads, progress): seed for seed in seeds
        }
        for future in as_completed(futures):
            future.result()  # re-raises a worker's error
            if on_done is not None:
                on_done(futures[future])
