"""The page-embedding cache: one safetensors file per page, keyed by content.

Page embeddings are keyed by `sha256(format, model key, task, dataset revision, sha256(image bytes))`, so a
different checkpoint, dataset revision or image can never hit a stale entry; one atomically written file per page
lets an interrupted evaluation resume without re-encoding finished pages, and each file carries a sha256 of its
tensor (a damaged entry is re-encoded, never used). Image digests are read from the stored bytes, without decoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from colq_sweep.fsio import atomic_write

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

# Bump when the stored embedding format or what goes into a page changes (e.g. the prompt): old entries then
# simply stop matching.
PAGE_CACHE_FORMAT = "colq_sweep-pages-v2"  # v2: every entry carries a sha256 of its tensor


def page_key(model_key: str, task: str, dataset_revision: str, image_sha256: str) -> str:
    """Cache key of one page's embedding: any change of checkpoint, task data or image bytes changes it."""
    parts = (PAGE_CACHE_FORMAT, model_key, task, dataset_revision, image_sha256)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class PageStore:
    """One safetensors file per page under `root/<key[:2]>/<key>.safetensors`, each written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> torch.Tensor | None:
        """The stored embedding, or None (a miss) when absent, unreadable or not matching its checksum: a damaged
        entry is removed and re-encoded, never an error and never a wrong embedding."""
        from safetensors import safe_open

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                want = (f.metadata() or {}).get("sha256")
                embedding = f.get_tensor("embedding")
            if want != _tensor_sha256(embedding):
                raise ValueError("checksum mismatch")
            return embedding
        except Exception as e:  # noqa: BLE001
            log.warning("page cache entry %s is damaged (%s); re-encoding it", p, e)
            with contextlib.suppress(OSError):
                p.unlink()
            return None

    def put(self, key: str, embedding: torch.Tensor) -> None:
        from safetensors.torch import save_file

        embedding = embedding.contiguous()
        meta = {"sha256": _tensor_sha256(embedding)}
        atomic_write(self.path(key), lambda tmp: save_file({"embedding": embedding}, str(tmp), metadata=meta))


def _tensor_sha256(t: torch.Tensor) -> str:
    """Checksum of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _image_pixel_digest(image: Any) -> str:
    """Digest of a decoded image (used only when the raw file bytes are not reachable)."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def undecoded(dataset: Dataset, column: str):
    """(the dataset with `column` read as stored bytes/path dicts, the `datasets.Image` feature that decodes them),
    or None when the column is not a `datasets.Image` (its values are then images already)."""
    from datasets import Image

    feature = dataset.features.get(column)
    if not isinstance(feature, Image):
        return None
    return dataset.cast_column(column, Image(decode=False, mode=feature.mode)), Image(mode=feature.mode)


def image_index(dataset: Dataset, column: str = "image", chunk: int = 64) -> list[tuple[str, int]]:
    """(sha256 of the encoded image bytes, pixel count) of each row, read without decoding any image.

    A `datasets.Image` column is read with `decode=False` (embedded bytes, or the file at its path) and the size
    comes from the image header; anything else is decoded and its pixels hashed.
    """
    from PIL import Image as PILImage

    raw = undecoded(dataset, column)
    if raw is None:
        return [(_image_pixel_digest(im), im.size[0] * im.size[1]) for im in dataset[column]]
    out = []
    for batch in raw[0].select_columns([column]).iter(batch_size=chunk):
        for item in batch[column]:
            data = item.get("bytes")
            if data is None:
                data = Path(item["path"]).read_bytes()
            with PILImage.open(io.BytesIO(data)) as im:  # reads the header only
                pixels = im.size[0] * im.size[1]
            out.append((hashlib.sha256(data).hexdigest(), pixels))
    return out
