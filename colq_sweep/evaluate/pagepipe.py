"""Pages as a pipeline: worker threads (or spawned worker processes) decode and preprocess the next batches (PIL
resize and normalise, the tokenizer; all release the GIL) while the current batch runs on the device, so the
forward pass, not the host, sets the pace. With `pixels="cpu"` the workers compute pixels with tensor ops
(evaluate/pixels.py) instead of PIL; with `pixels="cuda"` they only decode and tokenize, and the pixel work is left
to the device (the batch carries its uint8 pages under pixels.HOST_KEY). Missing pages are batched in order of size, so a batch holds pages of
(nearly) one token count and little padding. Batch composition is all the pipeline decides: a batch's embeddings
are the same with any number of workers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from colq_sweep.evaluate.pagecache import undecoded

if TYPE_CHECKING:
    from datasets import Dataset

    from colq_sweep.model import ColQwen3Processor

Batch = Mapping[str, torch.Tensor]
Source = tuple[Any, Sequence[Any]]  # (datasets Image feature or None, the batch's items as stored)


def default_preprocess_workers(device: str) -> int:
    """Threads that preprocess pages ahead of the forward pass: on a GPU up to 8 (leaving a core for the loop that
    feeds it); on a CPU one, which overlaps with the forward without taking the cores its matmuls use."""
    if not str(device).startswith("cuda"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores - 1))  # the cores this process may use (cgroup / Slurm allocation), not the host's


def decode_pages(feature: Any, items: Sequence[Any]) -> list[Any]:
    """Images of one batch: `items` as stored (bytes/path dicts) decoded by their `datasets.Image` feature, exactly
    as `datasets` would decode them; with `feature=None` the items are images already."""
    return list(items) if feature is None else [feature.decode_example(item) for item in items]


def prepare_batch(processor: ColQwen3Processor, feature: Any, items: Sequence[Any], dtype: torch.dtype | None,
                  pixels: str = "pil", pin: bool = False):  # fmt: skip
    """Decode and preprocess one batch of pages; returns (pages, processor outputs). Pixels are cast to the vision
    tower's dtype here, as its patch embedding would do first thing, so half as many bytes cross to the device.
    `pixels="cuda"`: decoded pages and tokens only (page-locked when `pin`), pixels.finish runs on the device."""
    from colq_sweep.evaluate import pixels as px

    images = decode_pages(feature, items)
    if pixels == "cuda":
        return len(images), px.host_batch(processor, images, pin=pin)
    if pixels == "cpu":
        return len(images), px.finish(px.host_batch(processor, images), processor, "cpu", dtype)
    batch = dict(processor.process_images(images))
    pixels = batch.get("pixel_values")
    if pixels is not None and dtype is not None and pixels.is_floating_point() and pixels.dtype != dtype:
        batch["pixel_values"] = pixels.to(dtype)
    return len(images), batch


_WORKER_PROCESSOR: ColQwen3Processor | None = None


def _init_worker(processor: ColQwen3Processor) -> None:
    global _WORKER_PROCESSOR
    torch.set_num_threads(1)  # one core per worker process
    _WORKER_PROCESSOR = processor


def _prepare_in_worker(feature: Any, items: Sequence[Any], dtype: torch.dtype | None, pixels: str = "pil"):
    # tensors go back through torch's shared-memory pickling (torch.multiprocessing), not through the pipe
    return prepare_batch(_WORKER_PROCESSOR, feature, items, dtype, pixels)


def size_order(pixels: Sequence[int], indices: Sequence[int]) -> list[int]:
    """`indices` sorted by the page's pixel count, largest first (stable): consecutive pages then have (nearly) the
    same number of visual tokens, so a batch carries little padding."""
    return sorted(indices, key=lambda i: -pixels[i])


def prepare_in_thread(processor, feature, items, dtype, pin: bool, pixels: str = "pil"):
    """`prepare_batch`, then page-locked on CUDA."""
    n, batch = prepare_batch(processor, feature, items, dtype, pixels, pin)
    if pin and pixels != "cuda":  # (a host batch's pages are pinned by prepare_batch, its small tensors need not be)  # page-locked: the copy to the device runs without a staging copy and without blocking this thread
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return n, batch


def stored_pages(dataset: Dataset, chunks: Iterable[list[int]], column: str = "image") -> Iterator[Source]:
    """(feature, items) per chunk of row indices: a `datasets.Image` column yields its stored bytes/path dicts,
    read here without decoding (workers decode them); any other column its values."""
    raw = undecoded(dataset, column)
    for idx in chunks:
        if raw is None:
            yield None, dataset.select(idx)[column]
        else:
            yield raw[1], raw[0].select(idx)[column]


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PagePipeline:
    """Prepares page batches ahead of the forward: `workers` threads, or spawned processes (`mode="process"`: no
    GIL shared with the thread that drives the device; tensors come back through shared memory), 0 = in the calling
    thread. Processes are spawned, never forked (the parent holds a CUDA context), once, and kept until `close()`."""

    def __init__(self, workers: int, mode: str = "thread", pixels: str = "pil"):
        if workers < 0:
            raise ValueError(f"preprocess_workers must be >= 0; got {workers}")
        if mode not in ("thread", "process"):
            raise ValueError(f"preprocess_mode must be 'thread' or 'process'; got {mode!r}")
        self.workers, self.mode, self.pixels = workers, mode, pixels
        self._processes = None

    def close(self) -> None:
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)
            self._processes = None

    def _preparer(self, processor: ColQwen3Processor, dtype: torch.dtype, pin: bool):
        """(prepare(feature, items) -> (pages, batch), the pool that runs it ahead of the forward, or None)."""
        if self.mode == "process" and self.workers:
            if self._processes is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self._processes = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_init_worker, initargs=(processor,))  # fmt: skip
            prepare = functools.partial(_prepare_in_worker, dtype=dtype, pixels=self.pixels)
            return prepare, contextlib.nullcontext(self._processes)
        prepare = functools.partial(prepare_in_thread, processor, dtype=dtype, pin=pin, pixels=self.pixels)
        if not self.workers:
            return prepare, None
        return prepare, ThreadPoolExecutor(self.workers, thread_name_prefix="colq-pages")

    def run(
        self, processor: ColQwen3Processor, dtype: torch.dtype, pin: bool, sources: Iterable[Source],
        forward: Callable[[int, Batch, float], list[torch.Tensor]],
    ) -> Iterator[list[torch.Tensor]]:  # fmt: skip
        """`forward(pages, batch, t0)` of one prepared batch per source, in order, with up to 2 x `workers` batches
        prepared ahead (`t0`: when the wait for that batch began). Pixels are cast to `dtype`; `pin`: page-locked."""
        prepare, pool_cm = self._preparer(processor, dtype, pin)
        sources = iter(sources)
        if pool_cm is None:
            for source in sources:
                t0 = time.perf_counter()
                yield forward(*prepare(*source), t0)
            return
        with pool_cm as pool:
            pending: deque = deque(pool.submit(prepare, *s) for s in itertools.islice(sources, 2 * self.workers))
            try:
                while pending:
                    t0 = time.perf_counter()
                    n, batch = pending.popleft().result()
                    pending.extend(pool.submit(prepare, *s) for s in itertools.islice(sources, 1))
                    yield forward(n, batch, t0)
            finally:
                for f in pending:
                    f.cancel()
