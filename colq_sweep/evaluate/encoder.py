"""ColQwen3 as an mteb encoder, with the content-addressed page cache (pagecache.py) and the page pipeline
(pagepipe.py).

`ColQwen3Encoder` is an mteb `AbsEncoder` whose `ModelMeta` declares MaxSim similarity, so mteb scores
queries against pages by late interaction itself. It wraps any `ColQwen3` (bf16 base or quantized) with its
`ColQwen3Processor`, which builds Tomoro's exact query and page prompts; the model is either handed over
already loaded or loaded lazily, on the first input that really needs a forward pass.

Within a run page embeddings are kept in memory for the current task, so a task's corpus is encoded once although
mteb asks for it once per language subset; on disk (`PageStore`) they persist across runs.

Embeddings are returned as ragged lists of `(tokens, dim)` float32 tensors without padding positions, so the
scores do not depend on how pages or queries were batched (mteb zero-pads ragged inputs itself for MaxSim); each
batch's embeddings come back to the host in one copy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType

from colq_sweep.config.specs import IndexSpec
from colq_sweep.evaluate.index import IndexTransform
from colq_sweep.evaluate.pagecache import PageStore, image_index, page_key
from colq_sweep.evaluate.pagepipe import (
    PagePipeline,
    Source,
    chunks,
    default_preprocess_workers,
    size_order,
    stored_pages,
)
from colq_sweep.evaluate.pixels import HOST_KEY, PIXELS, finish

if TYPE_CHECKING:
    from datasets import Dataset
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from colq_sweep.model import ColQwen3, ColQwen3Processor

log = logging.getLogger(__name__)

ModelLoader = Callable[[], "tuple[ColQwen3, ColQwen3Processor]"]
BatchObserver = Callable[[str, Mapping[str, torch.Tensor]], None]
STATS = ("pages_encoded", "queries_encoded", "pages_from_memory", "pages_from_disk", "page_seconds", "query_seconds",
         "load_seconds", "encode_calls", "weights_device_bytes")  # fmt: skip

DEFAULT_ORG = "colq_sweep"


def mteb_model_name(name: str) -> str:
    """mteb wants 'organisation/name'; a bare name (e.g. a config's `model.name`) gets the `colq_sweep/` org."""
    if not name or name.strip() != name or "\\" in name or name.count("/") > 1:
        raise ValueError(f"model name must be 'name' or 'organisation/name'; got {name!r}")
    return name if "/" in name else f"{DEFAULT_ORG}/{name}"


def colqwen3_model_meta(name: str, revision: str, embed_dim: int | None = None) -> ModelMeta:
    """mteb metadata of one ColQwen3 checkpoint; name and revision name its result-cache folder
    (`results/<org>__<name>/<revision>/`), so they must be unique per checkpoint."""
    if not revision or any(c in revision for c in "/\\ ") or revision in (".", ".."):
        raise ValueError(f"model revision names a folder; got {revision!r}")
    return ModelMeta(
        loader=None,
        name=mteb_model_name(name),
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=None,
        memory_usage_mb=None,
        max_tokens=None,
        embed_dim=embed_dim,
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers"],
        similarity_fn_name=ScoringFunction.MAX_SIM,
        use_instructions=False,
        training_datasets=None,
        modalities=["image", "text"],
        model_type=["late-interaction"],
    )


def weights_device_bytes(model) -> int:
    """What the loaded model's tensors (parameters and buffers, packed quantized weights and their scales included)
    occupy where it runs: its weight memory on the GPU when it runs on one."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


class _Pending:
    """One batch's real token vectors on their way to the host: queued behind the forward (into page-locked memory,
    with an event) on CUDA, already there elsewhere."""

    def __init__(self, host: torch.Tensor, done, lengths: list[int]):
        self.host, self.done, self.lengths = host, done, lengths

    @classmethod
    def of(cls, real: torch.Tensor, lengths: list[int]) -> _Pending:
        if real.device.type != "cuda":
            return cls(real.to("cpu"), None, lengths)
        host = torch.empty(real.shape, dtype=real.dtype, pin_memory=True)
        host.copy_(real, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(host, done, lengths)

    def get(self) -> list[torch.Tensor]:
        host = self.host
        if self.done is not None:
            self.done.synchronize()
            host = host.clone()  # out of page-locked memory: the embeddings may live as long as the corpus
        return list(torch.split(host, self.lengths))


class ColQwen3Encoder(AbsEncoder):
    """mteb encoder for ColQwen3: Tomoro's prompts, MaxSim scoring, one encode per page and task.

    Args:
        model, processor: an already loaded ColQwen3 and its processor; or pass `loader` instead and they are
            loaded on the first input that needs a forward pass (a run served from caches loads nothing).
        model_name, model_revision: the mteb identity (result-cache folder) of this exact checkpoint. They also
            key the page cache, so they must differ between checkpoints (pass the artifact key of a quantized
            model as its revision).
        device: where inputs go ("cpu", "cuda", "cuda:N"); a model without a device map is moved there.
        query_batch_size, page_batch_size: forward batch sizes.
        page_store: on-disk page cache (None: memory only). corpus_cache=False turns all page caching off
            (mteb then has every subset's corpus encoded again, as it does natively).
        preprocess_workers: workers decoding and preprocessing pages ahead of the forward pass (None:
            `default_preprocess_workers(device)`; 0: none, each batch is prepared in the calling thread).
        preprocess_mode: "thread" (workers are threads of this process) or "process" (spawned worker processes,
            tensors returned through shared memory: no GIL shared with the thread that drives the device).
        pixels: where page pixels are computed: "pil" (the PIL image processor, in the preprocessing workers),
            "cpu" (evaluate/pixels.py's tensor ops, in the workers) or "cuda" (the workers decode and tokenize, the
            tensor ops run on the model's device just before its forward). Not part of `model_revision`: the
            caller keys it (keys.page_revision).
        compile: `torch.compile` each decoder layer and vision block before the first forward
            (`colq_sweep.model.compile_regions`); embeddings then differ from eager ones by float round-off.
        dataset_revisions: task name -> dataset revision used in page keys (default: the task metadata's).
        index: what the index stores of each page (evaluate/index.py), applied to the pages mteb receives.
        page_revision: what keys the page cache (default: model_revision; an index setting is in the revision of
            the results, not of the pages).
    """

    def __init__(
        self,
        model: ColQwen3 | None = None,
        processor: ColQwen3Processor | None = None,
        *,
        model_name: str,
        model_revision: str,
        loader: ModelLoader | None = None,
        device: str = "cpu",
        query_batch_size: int = 64,
        page_batch_size: int = 8,
        page_store: PageStore | None = None,
        corpus_cache: bool = True,
        dataset_revisions: Mapping[str, str] | None = None,
        preprocess_workers: int | None = None,
        preprocess_mode: str = "thread",
        pixels: str = "pil",
        compile: bool = False,
        index: IndexSpec | None = None,
        page_revision: str | None = None,
    ):
        if (model is None) != (processor is None):
            raise ValueError("pass both model and processor, or neither (with loader=)")
        if model is None and loader is None:
            raise ValueError("pass model + processor, or a loader")
        self.model = model
        self.processor = processor
        self._loader = loader
        self.device = device
        self.query_batch_size = int(query_batch_size)
        self.page_batch_size = int(page_batch_size)
        self.page_store = page_store if corpus_cache else None
        self.corpus_cache = corpus_cache
        self.dataset_revisions = dict(dataset_revisions or {})
        self.compile = bool(compile)
        workers = default_preprocess_workers(device) if preprocess_workers is None else int(preprocess_workers)
        if pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)}; got {pixels!r}")
        self.pixels = pixels
        self.pages = PagePipeline(workers, preprocess_mode, pixels)  # its worker processes live until release()
        self.mteb_model_meta = colqwen3_model_meta(model_name, model_revision)
        # pages are keyed by what decides their embeddings (`page_revision`), not by the index setting
        self.model_key = f"{self.mteb_model_meta.name}@{page_revision or model_revision}"
        pooled = PageStore(self.page_store.root / "pooled") if self.page_store is not None else None
        self.index = IndexTransform(index or IndexSpec(), pooled)
        self.observer: BatchObserver | None = None  # sees every processed batch before its forward pass
        self.progress = None  # console.EvalProgress: advanced by every page and query handled (cached ones too)
        self._memo: dict[str, torch.Tensor] = {}
        self._memo_task: str | None = None
        self.stats: dict[str, float] = dict.fromkeys(STATS, 0)
        if model is not None:
            self._prepare_model()

    # ------------------------------------------------------------------------------------------ model

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def release(self) -> None:
        """Drop this encoder's references to the model, processor and in-memory pages (a later input that needs
        a forward pass loads again through `loader`)."""
        if self._loader is not None:
            self.model = self.processor = None
        self._memo, self._memo_task = {}, None
        self.pages.close()
        if torch.cuda.is_available() and hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()  # the pinned host blocks the page pipeline used (up to ~2 GB at 8 workers)

    def _ensure_loaded(self) -> None:
        if self.model is not None:
            return
        t0 = time.perf_counter()
        log.info("loading %s for encoding", self.model_key)
        self.model, self.processor = self._loader()
        self._prepare_model()
        self.stats["load_seconds"] += time.perf_counter() - t0
        self.stats["weights_device_bytes"] = float(weights_device_bytes(self.model))

    def _prepare_model(self) -> None:
        model = self.model
        if getattr(model, "hf_device_map", None) is None and str(model.device) != str(
            torch.device(self.device)
        ):
            model.to(self.device)
        model.eval()
        if self.compile and not getattr(model, "colq_compiled", False):
            from colq_sweep.model import compile_regions

            compile_regions(model)
        embed_dim = getattr(model.config, "embed_dim", None)
        if embed_dim is not None:
            self.mteb_model_meta = self.mteb_model_meta.model_copy(update={"embed_dim": int(embed_dim)})

    def _autocast(self):
        """bf16 autocast on CUDA for a model held in float32; otherwise the model runs in its own dtype."""
        device = torch.device(self.model.device)
        if device.type == "cuda" and self.model.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, kind: str, batch: Mapping[str, torch.Tensor], defer: bool = False):
        """Run one processed batch; return one (real tokens, dim) tensor per input, on the CPU. `defer=True` returns a
        `_Pending` instead: the copy to the host is queued behind the forward and `.get()` waits for it, so the
        caller can launch the next batch first (the device is not left idle while the host prepares it)."""
        if self.observer is not None:
            self.observer(kind, batch)
        device = self.model.device
        non_blocking = torch.device(device).type == "cuda"
        inputs = {
            k: v.to(device, non_blocking=non_blocking and v.is_pinned()) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        with torch.inference_mode(), self._autocast():
            out = self.model(**inputs)
        # Which tokens are real is read from the host's mask, so nothing here waits for the device; the gather keeps
        # every input's real tokens in order (what out[mask] selects), then one copy to the host.
        mask = batch["attention_mask"].to("cpu").bool()
        lengths = mask.sum(dim=1).tolist()
        rows = mask.reshape(-1).nonzero().squeeze(1).to(out.device)
        real = out.detach().reshape(-1, out.shape[-1]).index_select(0, rows)
        pending = _Pending.of(real, lengths)
        return pending if defer else pending.get()

    # ---------------------------------------------------------------------------------------- queries

    def encode_queries(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Tomoro's query inputs (stripped text + 10 end-of-text tokens), `query_batch_size` at a time."""
        if not texts:
            return []
        self._ensure_loaded()
        t0 = time.perf_counter()
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), self.query_batch_size):
            chunk = list(texts[start : start + self.query_batch_size])
            out.extend(self._forward("query", self.processor.process_queries(chunk)))
            self._advance(len(chunk))
        self.stats["queries_encoded"] += len(texts)
        self.stats["query_seconds"] += time.perf_counter() - t0
        return [e.float() for e in out]

    # ------------------------------------------------------------------------------------------ pages

    def encode_pages(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Tomoro's page inputs (one image per chat prompt), `page_batch_size` at a time, in the given order; no
        caching."""
        out: list[torch.Tensor] = []
        for embs in self._page_pipeline((None, c) for c in chunks(list(images), self.page_batch_size)):
            out.extend(embs)
        return [e.float() for e in out]

    def _page_pipeline(self, sources: Iterable[Source]) -> Iterator[list[torch.Tensor]]:
        """Encode one batch per source `(datasets Image feature or None, items)`, in order, through the pipeline.
        Pixels are cast to the vision tower's dtype; on CUDA, thread-prepared batches are pinned."""
        self._ensure_loaded()
        dtype = self.model.vlm.model.visual.patch_embed.proj.weight.dtype
        pin = torch.device(self.model.device).type == "cuda"
        held = None  # a batch's results are collected after the next batch is launched
        launched = iter(self.pages.run(self.processor, dtype, pin, sources, self._forward_pages))
        while True:
            try:
                pending = next(launched)
            except StopIteration:
                break
            except BaseException:
                if held is not None:  # the finished batch is delivered (and cached) before the failure propagates
                    yield self._collect(held)
                raise
            if held is not None:
                yield self._collect(held)
            held = pending
        if held is not None:
            yield self._collect(held)

    def _collect(self, pending: _Pending) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        embs = pending.get()
        self.stats["page_seconds"] += time.perf_counter() - t0
        return embs

    def _forward_pages(self, n: int, batch: Mapping[str, torch.Tensor], t0: float) -> _Pending:
        if HOST_KEY in batch:  # pixels=cuda: the pages came decoded; their pixel work runs on the model's device
            dtype = self.model.vlm.model.visual.patch_embed.proj.weight.dtype
            batch = finish(dict(batch), self.processor, self.model.device, dtype)
        pending = self._forward("page", batch, defer=True)
        self.stats["pages_encoded"] += n
        self.stats["page_seconds"] += time.perf_counter() - t0
        self._advance(n)
        return pending

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)

    def _corpus_uncached(self, inputs: DataLoader) -> list[torch.Tensor]:
        def batches() -> Iterator[tuple[None, list[Any]]]:
            buffer: list[Any] = []
            for batch in inputs:
                buffer.extend(batch["image"])
                while len(buffer) >= self.page_batch_size:
                    chunk, buffer = buffer[: self.page_batch_size], buffer[self.page_batch_size :]
                    yield None, chunk
            if buffer:
                yield None, buffer

        out: list[torch.Tensor] = []
        for embs in self._page_pipeline(batches()):
            out.extend(embs)
        return [e.float() for e in out]

    def _corpus_cached(self, dataset: Dataset, task_metadata: TaskMetadata) -> tuple[list[torch.Tensor], list[str]]:
        task = task_metadata.name
        if self._memo_task != task:  # keep only the current task's pages in memory
            self._memo, self._memo_task = {}, task
        revision = self.dataset_revisions.get(task) or str(task_metadata.dataset.get("revision", ""))
        index = image_index(dataset)
        keys = [page_key(self.model_key, task, revision, d) for d, _ in index]
        out: list[torch.Tensor | None] = [None] * len(keys)
        missing: list[int] = []
        for i, key in enumerate(keys):
            emb = self._memo.get(key)
            if emb is not None:
                self.stats["pages_from_memory"] += 1
            elif self.page_store is not None and (emb := self.page_store.get(key)) is not None:
                emb = emb.float()
                self._memo[key] = emb
                self.stats["pages_from_disk"] += 1
            else:
                missing.append(i)
            out[i] = emb
        self._advance(len(keys) - len(missing))  # pages from memory or disk count as done at once
        if missing:
            log.info(
                "%s: encoding %d of %d pages (%d cached)",
                task,
                len(missing),
                len(keys),
                len(keys) - len(missing),
            )
        groups = list(chunks(size_order([p for _, p in index], missing), self.page_batch_size))
        if not groups:  # all from memory or disk: no model, no workers
            return out, keys  # type: ignore[return-value]
        for idx, embs in zip(groups, self._page_pipeline(stored_pages(dataset, groups)), strict=True):
            for i, emb in zip(idx, embs, strict=True):
                if self.page_store is not None:
                    self.page_store.put(keys[i], emb)
                emb = emb.float()
                self._memo[keys[i]] = emb
                out[i] = emb
        return out, keys  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------- mteb

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        """mteb entry point: queries are text, documents are page images (ViDoRe is text-to-image)."""
        self.stats["encode_calls"] += 1
        dataset = getattr(inputs, "dataset", None)
        columns = set(getattr(dataset, "column_names", None) or [])
        is_pages = prompt_type == PromptType.document or (prompt_type is None and "image" in columns)
        if not is_pages:
            if "image" in columns:
                raise ValueError("ColQwen3Encoder encodes text queries and image pages, not image queries")
            texts = [t for batch in inputs for t in batch["text"]]
            return self.encode_queries(texts)
        if "text" in columns:
            raise ValueError("ColQwen3Encoder encodes image-only pages (Tomoro's page prompt has no text)")
        keys = None
        if self.corpus_cache and dataset is not None and "image" in columns:
            pages, keys = self._corpus_cached(dataset, task_metadata)
        else:
            pages = self._corpus_uncached(inputs)
        return self.index.apply(pages, keys, task_metadata.name)


