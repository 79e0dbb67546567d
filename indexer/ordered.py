"""An ordered, bounded parallel map over threads: the decode stages' shared scheduling."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(
    work: Callable[[In], Out], items: Iterable[In], threads: int, window: int, name: str
) -> Generator[Out, None, None]:
    """`work(item)` for every item on `threads` threads, yielded in input order.

    At most `window` items (at least `threads`) are submitted ahead of the one being yielded, so
    memory stays bounded however long `items` is. Closing the generator early cancels what has
    not started and waits for what has.
    """
    threads = max(1, threads)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    pending: deque[Future[Out]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= max(threads, window):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
