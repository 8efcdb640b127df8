"""Streamed rows (a datasets.IterableDataset: llmjepa-train --dataset_streaming, or the library's train_dataset),
read, checked and tokenized as the Trainer's data loader draws them, never all at once.

Each row goes through the same recognition (views/formats.py) and encoding (views/encoding.py) as a row of a
list does; a bad row stops the run with its one line when it is reached (or, with drop_bad_rows, is counted
and skipped: the counts are on the stream, `bad_rows`), so a stream is not checked before training as a list
is. Rows come in the source's order (no shuffle); with data-loader workers each takes every n-th row.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .encoding import Encoded, EncodeReport, ViewConfig, encode
from .examples import parse_object
from .formats import DEFAULT_FORMAT, BadRow, BadRows, DataFormat

logger = logging.getLogger("llmjepa")


def is_stream(dataset: Any) -> bool:
    """An iterable dataset with no length: a torch IterableDataset, or a datasets.IterableDataset."""
    if isinstance(dataset, EncodedStream):
        return False
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    return hasattr(dataset, "__iter__") and not hasattr(dataset, "__len__") and hasattr(dataset, "column_names")


class EncodedStream(torch.utils.data.IterableDataset):
    """Encoded examples from a stream of rows, made lazily (one pass per epoch; workers split the rows)."""

    def __init__(
        self,
        rows: Iterable[Any],
        tokenizer: Any,
        cfg: ViewConfig,
        fmt: DataFormat = DEFAULT_FORMAT,
        drop_bad_rows: bool = False,
        where: Callable[[int], str] | None = None,
        name: str = "train_dataset",
    ) -> None:
        self.rows, self.tokenizer, self.cfg, self.fmt = rows, tokenizer, cfg, fmt
        self.where = where or (lambda k: f"{name}[{k}]")
        self.bad_rows = BadRows(drop=drop_bad_rows)
        self.report = EncodeReport()

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it each epoch; a datasets stream reshuffles by it
        if hasattr(self.rows, "set_epoch"):
            self.rows.set_epoch(epoch)

    def __iter__(self) -> Iterator[Encoded]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, row in enumerate(self.rows):
            if k % workers != worker:
                continue
            try:
                example = parse_object(row, self.where(k), None, self.fmt)
            except BadRow as e:
                self.bad_rows.take(e)  # raises unless drop_bad_rows
                logger.warning("llmjepa: bad row dropped: %s", e)  # a stream is counted as it goes: each one said
                continue
            encoded = encode(example, k, self.tokenizer, self.cfg, self.report)
            if encoded is None:
                length = self.cfg.max_length
                logger.warning("llmjepa: %s dropped: the prompt alone fills max_length %d", example.source, length)
                continue
            yield encoded
