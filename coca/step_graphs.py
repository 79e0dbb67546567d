"""CUDA graphs of the decoder's one-token step, one per batch shape, replayed step after step.

A one-token step is a few hundred small kernels; replaying it as a captured graph costs one
launch. Graphs read their inputs by address, so the decoder that owns a StepGraphs must keep its
buffers (caches, cross K/V, position) at fixed addresses for as long as a graph is kept, and
call clear() whenever it replaces one. coca.caption_engine relies on this to replay one decoder's
graphs batch after batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

# Graphs captured in this process, all decoders together: capture is the expensive part, so a
# benchmark reads this to check that a run captures a constant number, not one per batch.
_captured = 0


def captured_graph_count() -> int:
    """How many one-token step graphs have been captured in this process so far."""
    return _captured


class StepGraphs:
    """CUDA graphs of the one-token step, one per (rows, layout) key.

    The first step at a key runs eagerly on a side stream (warm-up, as CUDA graph capture
    requires); the second captures the step and replays it; later steps only replay. Inputs and
    outputs go through static buffers; logits are cloned so callers may keep them. Each graph has
    its own memory pool (replay order across keys is arbitrary) and only the most recent
    `max_graphs` are kept. If capture fails, graphs are switched off and steps run eagerly.

    Under CUDA autocast the step is captured with autocast's weight-cast cache off (a cached cast
    made during capture would outlive the graph's memory): the graph then holds the casts
    themselves, and the autocast dtype is part of the key.
    """

    def __init__(self, enabled: bool, max_graphs: int = 3) -> None:
        self.enabled = enabled
        self.max_graphs = max_graphs
        self._seen: set[tuple] = set()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._seen.clear()
        self._graphs.clear()

    def run(
        self, key: tuple, step: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor
    ) -> torch.Tensor:
        if not self.enabled:
            return step(tokens)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (*key, autocast)
        if key in self._graphs:
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(tokens)
            graph.replay()
            return static_out.clone()
        if key not in self._seen:
            self._seen.add(key)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), _no_autocast_cache(autocast):
                out = step(tokens)
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self._capture(key, step, tokens, autocast)

    def _capture(
        self,
        key: tuple,
        step: Callable[[torch.Tensor], torch.Tensor],
        tokens: torch.Tensor,
        autocast: torch.dtype | None,
    ) -> torch.Tensor:
        static_in = tokens.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the indexer's GPU JPEG decoder keeps working (and syncing its own
            # stream) on another thread meanwhile; in the default global mode any such call made
            # the capture fail on the H100 and decoding fell back to eager steps.
            capture = torch.cuda.graph(graph, capture_error_mode="thread_local")
            with capture, _no_autocast_cache(autocast):
                static_out = step(static_in)
        except RuntimeError as exc:  # capture records without running, so no state has changed
            logger.warning("CUDA graph capture failed (%s); decoding without graphs", exc)
            self.enabled = False
            self.clear()
            return step(tokens)
        while len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = (graph, static_in, static_out)
        global _captured
        _captured += 1
        logger.debug("captured a CUDA graph for decoding step %s", key)
        graph.replay()  # capture records without running: run this step now
        return static_out.clone()


@contextlib.contextmanager
def _no_autocast_cache(dtype: torch.dtype | None) -> Iterator[None]:
    """Re-enter CUDA autocast at `dtype` with the weight-cast cache off (None: do nothing)."""
    if dtype is None:
        yield
        return
    with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
        yield
