"""What a model author writes: a ``Model`` with ``load()`` and ``predict_batch()``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A declared input or output. ``-1`` marks a variable dimension; for a batching
    model the first dimension is the batch dimension and is ``-1``."""

    name: str
    datatype: str
    shape: Sequence[int]
    optional: bool = False
    #: An output's class labels by index, for classification answers "value:index:label".
    labels: Sequence[str] = ()


@dataclass(frozen=True)
class SequenceInfo:
    """Control data of one request of a stateful sequence (video stream)."""

    id: str
    slot: int
    start: bool
    end: bool


@dataclass(frozen=True)
class BatchItem:
    """One request's share of a batch: rows ``[offset, offset + rows)``."""

    request_id: str
    rows: int
    offset: int
    sequence: Optional[SequenceInfo] = None

    @property
    def slice(self) -> slice:
        """``inputs[name][item.slice]`` are this item's rows."""
        return slice(self.offset, self.offset + self.rows)


@dataclass
class BatchContext:
    """Everything about a batch besides its tensors."""

    batch_id: int
    items: List[BatchItem]
    #: Sum of ``items[].rows``: the batch dimension of every input and output.
    total_rows: int
    #: Output names the broker wants (all declared outputs when it named none). Only these are sent.
    outputs: List[str]
    log: logging.Logger
    #: A non-batching model (registry ``batch_size: 0``, Triton ``max_batch_size: 0``): one
    #: item, inputs and outputs without a batch dimension (shapes are whole).
    whole: bool = False
    _item_errors: List[str] = field(default_factory=list, repr=False)
    _state_of: Callable[[SequenceInfo], Any] = field(default=lambda _seq: {}, repr=False)

    def fail_item(self, index: int, message: str) -> None:
        """Fails one item alone; its rows in the outputs are ignored (fill them with anything)."""
        if not isinstance(index, int) or index < 0 or index >= len(self.items):
            raise IndexError(f"no item {index} in this batch")
        self._item_errors[index] = message or "failed"

    def item_of_row(self, row: int) -> int:
        """Index of the item that owns batch row ``row``."""
        for i, it in enumerate(self.items):
            if it.offset <= row < it.offset + it.rows:
                return i
        raise IndexError(f"no row {row} in this batch of {self.total_rows} rows")

    def state(self, index: int) -> Any:
        """Stateful models: the state of item ``index``'s sequence (``Model.create_state``,
        default a dict): the same object for every request of the sequence, a fresh one
        when the item has the start flag (or the copy holds none, e.g. after a restart),
        dropped when the broker ends the sequence (END_SEQUENCE). Mutate it in place.
        Raises ``ValueError`` for an item without sequence control data."""
        seq = self.items[index].sequence
        if seq is None:
            raise ValueError(f"item {index} ({self.items[index].request_id}) is not part of a sequence")
        return self._state_of(seq)


@dataclass
class StreamContext:
    """What ``predict_stream`` gets besides the inputs: its request's place in the batch."""

    batch_id: int
    #: The request (batch item) this call answers.
    item: BatchItem
    #: Non-batching model: the inputs have no batch dimension.
    whole: bool
    #: Output names the broker wants (all declared outputs when it named none).
    outputs: List[str]
    log: Any


class Model:
    """Base class of a model. Set the metadata as class (or instance) attributes,
    implement ``predict_batch``, optionally ``load`` and ``end_sequence``, then
    ``serve(MyModel())``."""

    #: Announced in READY; the broker's name (env ``TB_MODEL``) wins.
    name: str = "model"
    version: str = ""
    #: Rows per batch this copy accepts.
    max_batch: int = 1
    #: Batches accepted in flight (1 or 2). With 2 the broker sends the next batch while one
    #: runs, so it is already here when that one ends; they run one after the other.
    credits: int = 1
    #: With credits 2: run both batches at once on two threads instead of one after the other.
    parallel: bool = False
    #: Sequence slots (stateful models).
    max_sequences: int = 0
    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    #: A decoupled model (Triton's decoupled transaction policy): implement
    #: ``predict_stream``, which yields 0..n responses per request (gRPC ModelStreamInfer only).
    decoupled: bool = False

    def load(self) -> None:
        """Loads weights; runs before READY. An exception exits the process with 1."""

    def predict_batch(self, inputs: Mapping[str, np.ndarray], ctx: BatchContext) -> Mapping[str, Any]:
        """Inputs keyed by name, batch dimension first (``ctx.total_rows`` rows): numeric
        inputs are read-only numpy views of the received frames (no copy), BYTES inputs
        object arrays of ``bytes``. Returns a dict output name -> array covering
        ``ctx.total_rows`` rows (converted to the declared datatype). An exception fails
        the whole batch; the copy keeps serving."""
        raise NotImplementedError

    def predict_stream(self, inputs: Mapping[str, np.ndarray], ctx: StreamContext) -> Iterable[Mapping[str, Any]]:
        """Decoupled models: a generator called once per request with that request's own
        rows (whole arrays for a non-batching model); each ``yield``-ed dict output name ->
        array is one response. Returning ends the request (the final marker); an exception
        fails it with its message. Requests of one batch run one after the other."""
        raise NotImplementedError

    def create_state(self, seq: SequenceInfo) -> Any:
        """Stateful models: the initial state of a sequence (default an empty dict)."""
        return {}

    def end_sequence(self, id: str, reason: str, slot: int, state: Any) -> None:  # noqa: A002 - the protocol's name
        """Stateful models: the broker ended the sequence (reason ``end``, ``cancelled``,
        ``idle`` or ``unspecified``). The SDK has already dropped its state and passes it
        here (``None`` if the copy held none) to free what it holds. Runs on a worker thread."""
