"""Streamed rows (a datasets.IterableDataset: llmjepa-train --dataset_streaming, or the library's train_dataset),
read, checked and tokenized as the Trainer's data loader draws them, never all at once.

Each row goes through the same recognition (views/formats.py) and encoding (views/encoding.py) as a row of a
list does; a bad row stops the run with its one line when it is reached (or, with drop_bad_rows, is counted
and skipped: `counts()` gives them, data-loader workers' included), so a stream is not checked before training
as a list is. Rows come in the source's order (no shuffle); with data-loader workers each takes every n-th row.
"""

import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from functools import partial
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
        self.rows, self.tokenizer, self.cfg, self.fmt, self.drop = rows, tokenizer, cfg, fmt, drop_bad_rows
        self.where = where or partial(indexed_name, name)
        self.restart_counts()

    def restart_counts(self) -> None:
        """Count bad rows, dropped prompts and truncated or short examples from here on (llmjepa-train reads the
        first example before training). Data-loader workers send theirs through a queue; `counts` gathers them
        in the training process."""
        self.bad_rows = BadRows(drop=self.drop)
        self.report = EncodeReport()
        self.counted: set[tuple[str, str]] = set()  # (kind, row name) counted so far: each row once per kind
        self.dropped_queue = multiprocessing.get_context().SimpleQueue()

    def counts(self) -> tuple[BadRows, EncodeReport]:
        """The bad rows dropped (by kind), the prompts dropped (report.dropped) and the examples truncated or
        with fewer steps (report.truncated, fewer_steps, fallback; report.examples stays 0: a stream's size is
        unknown) so far, the workers' included."""
        while not self.dropped_queue.empty():
            kind, where, message = self.dropped_queue.get()
            self.count(kind, where, message)
        return self.bad_rows, self.report

    def count(self, kind: str, where: str, message: str) -> None:
        """One row dropped or noted, counted once however many passes meet it (as a whole dataset's rows are)."""
        if (kind, where) in self.counted:
            return
        self.counted.add((kind, where))
        if kind == LONG_PROMPT:
            self.report.dropped += 1
            self.report.dropped_sources.append(where)
        elif kind in NOTED:
            setattr(self.report, NOTED[kind], getattr(self.report, NOTED[kind]) + 1)
        else:
            self.bad_rows.take(BadRow(where, kind, message))

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
                if not self.drop:
                    raise
                logger.warning("llmjepa: bad row dropped: %s", e)  # a stream is counted as it goes: each one said
                self.tell(info, (e.kind, e.where, e.message))
                continue
            report = EncodeReport()  # this row's: counted once below, however many passes meet it
            encoded = encode(example, k, self.tokenizer, self.cfg, report)
            if encoded is None:
                length = self.cfg.max_length
                logger.warning("llmjepa: %s dropped: the prompt alone fills max_length %d", example.source, length)
                self.tell(info, (LONG_PROMPT, example.source, ""))
                continue
            for kind, field in NOTED.items():
                if getattr(report, field):
                    self.tell(info, (kind, example.source, ""))
            yield encoded

    def tell(self, worker: Any, event: tuple[str, str, str]) -> None:
        """A row dropped or noted, counted here, or sent to the training process from a data-loader worker."""
        if worker is not None:
            self.dropped_queue.put(event)
        else:
            self.count(*event)


LONG_PROMPT = "long prompt"  # a dropped row's kind where its prompt alone fills max_length
# rows kept but noted, as EncodeReport counts them for a whole dataset: the kind and the report's field
NOTED = {"truncated": "truncated", "fewer steps": "fewer_steps", "no separator": "fallback"}


def indexed_name(name: str, k: int) -> str:
    return f"{name}[{k}]"
