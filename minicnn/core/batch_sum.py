"""Sums over the whole batch when a batch is split among replicas in threads: ``batch_sum``.

A model that splits a batch among replicas of itself (``minicnn.training.parallel``) gives each
replica a slice. A layer whose samples meet only through sums over the batch (BatchNorm's
mean, variance and the two gradient sums) still computes the whole batch's result if it takes
those sums with ``batch_sum``: each replica hands in its slice's partial sum, waits for the
others, and gets the total, added up in replica order (the same in every replica, and the same
from run to run). Such a layer declares ``batch_sums = True`` (``Layer.batch_sums``).

Outside a split (the usual case) ``batch_sum(a)`` is ``a`` itself, at no cost. The group a
replica belongs to is a per-thread mode (a ``ContextVar``), set by ``replica_scope``.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["ReplicaGroup", "batch_sum", "replica_count", "replica_scope"]


class ReplicaGroup:
    """``count`` replicas (threads) working on slices of one batch, adding partial sums."""

    def __init__(self, count: int):
        self.count = count
        self._barrier = threading.Barrier(count)
        # Two sets of slots, used in turn: a replica writes the other set in its next sum,
        # and comes back to this one only after the next sum's barrier, which every replica
        # reaches after reading this one. So one barrier per sum is enough (a second one to
        # guard the reads cost as much again: about 60 us per wait on two cores).
        self._slots: list[list[Any]] = [[None] * count, [None] * count]
        self._turn = [0] * count

    def all_sum(self, rank: int, partial: Any) -> Any:
        """The sum of every replica's ``partial`` (an array or number, the same shape in each;
        or a tuple of them, summed item by item), in rank order; blocks until all ``count``
        replicas have handed theirs in."""
        slots = self._slots[self._turn[rank]]
        self._turn[rank] ^= 1
        slots[rank] = partial
        self._barrier.wait()
        if isinstance(partial, tuple):
            return tuple(_in_order([slot[k] for slot in slots]) for k in range(len(partial)))
        return _in_order(slots)

    def abort(self) -> None:
        """Release every replica waiting in ``all_sum`` (with ``threading.BrokenBarrierError``):
        called when one replica fails, so the others do not wait for it forever."""
        self._barrier.abort()


def _in_order(values: list[Any]) -> Any:
    total = values[0]
    for other in values[1:]:
        total = total + other
    return total


_member: ContextVar[tuple[ReplicaGroup, int] | None] = ContextVar("minicnn_replica",
                                                                  default=None)


@contextmanager
def replica_scope(group: ReplicaGroup, rank: int) -> Iterator[None]:
    """Inside this block (in this thread) ``batch_sum`` adds over ``group``, as replica
    ``rank``."""
    token = _member.set((group, rank))
    try:
        yield
    finally:
        _member.reset(token)


def batch_sum(partial: Any) -> Any:
    """``partial`` (a sum over this replica's slice of the batch: an array, a number, or a
    tuple of them) summed over every replica of the split batch; ``partial`` itself when the
    batch is not split."""
    member = _member.get()
    if member is None:
        return partial
    group, rank = member
    return group.all_sum(rank, partial)


def replica_count() -> int:
    """How many replicas (threads) share the split batch this thread works on; 1 when the
    batch is not split."""
    member = _member.get()
    return 1 if member is None else member[0].count
