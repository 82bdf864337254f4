"""Datasets placed in the Hugging Face cache as if they had been downloaded from the Hub, for offline use.

With `HF_HUB_OFFLINE=1`, `datasets.load_dataset("ORG/NAME", name=config)` reads only the *prepared* Arrow cache
`<HF_DATASETS_CACHE>/ORG___NAME/<config>/0.0.0/<hash>/` (never the Hub snapshot cache). `publish_dataset` writes
exactly that with the library's own builder (`DatasetBuilder.download_and_prepare` of the `generator` packaged
module, under the Hub id and the config's own name), the hash being the dataset revision. Tests use it to stand
tiny data in for real Hub ids (NeelNanda/pile-10k, ViDoRe), so the code a real run takes is what they exercise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def datasets_cache() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE)


def publish_dataset(
    repo_id: str,
    rows_by_split: dict[str, Callable[[], Iterable[dict[str, Any]]]],
    revision: str,
    config_name: str = "default",
    features=None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Write `repo_id` (config `config_name`, at `revision`) into the datasets cache; return its folder.

    `rows_by_split`: split name -> a function yielding that split's rows (dicts)."""
    from datasets import Features, Split, SplitGenerator
    from datasets.packaged_modules.generator.generator import Generator

    class _HubSplits(Generator):
        """The generator builder with named splits (it has only "train" of its own)."""

        def _split_generators(self, dl_manager):
            return [SplitGenerator(name=Split(s), gen_kwargs={"split": s}) for s in rows_by_split]

        def _generate_examples(self, split):
            yield from enumerate(rows_by_split[split]())

    builder = _HubSplits(
        cache_dir=str(cache_dir or datasets_cache()),
        dataset_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        config_name=config_name,
        config_id=config_name,  # the folder the offline loader looks for is the config's bare name
        hash=revision,
        generator=lambda: iter(()),
        features=Features(features) if isinstance(features, dict) else features,
    )
    builder.download_and_prepare()
    return Path(builder.cache_dir)
