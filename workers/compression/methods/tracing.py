"""Tracing a model into torch-pruning's dependency graph, bounded in time and index size, with every
failure typed: `analysis` runs a body under a CPU-time budget and turns what torch-pruning raises into
`UnsupportedOp` naming the module or op it was handling; `trace` builds the graph and says where groups must
end (channel shuffles, nodes whose channels torch-pruning cannot infer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.node import Node

from workers.compression.errors import CompressionError, UnsupportedOp

__all__ = ["BudgetSpent", "analysis", "check_deadline", "culprit", "trace"]

_MAX_INDICES = 1 << 21  # one flatten mapping's output, at most: VGG-16's classifier needs 25,088
# Indices one group search may add in all: ViT-H's residual stream, 1280 channels through 32 blocks, adds
# ~0.5 M; a search that cycles through mis-inferred splits (MaxViT's grid attention) adds without end.
_MAX_GROUP_INDICES = 1 << 20


class _Overrun(BaseException):
    """Raised when an analysis has spent its budget; a BaseException, so that handlers of torch-pruning's
    own errors let it through (it never escapes `analysis`)."""


def culprit(exc: BaseException, names: dict[Any, str]) -> str:
    """Names the module or op torch-pruning was handling when `exc` was raised: the innermost frame
    holding a graph node or a named module."""
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, Node):
                module = value.module
                label = names.get(module) or (module._grad_fn if hasattr(module, "_grad_fn") else None)
                return f"{label or ''} ({type(module).__name__})".strip()
            if isinstance(value, nn.Module) and value in names and names[value]:
                return f"{names[value]} ({type(value).__name__})"
    return "an unnamed op"


_DEPS_PER_NODE = 4  # a group reaches a node as a consumer and as a producer, a concat's parts more than once
# The group search running in this thread (absent outside one): .indices and .deps it has added so far,
# and .max_deps, `_DEPS_PER_NODE` per node of its graph.
_search = threading.local()

# .at: the deadline, in this thread's CPU seconds, of the analysis running in it, if any. CPU time rather than
# wall time, so that a busy machine (other workers, other jobs) does not fail a graph that fits the budget.
_deadline = threading.local()


_CLOCK_EVERY = 64


def check_deadline() -> None:
    """Raises `_Overrun` when this thread's analysis has spent its budget (a no-op outside one)."""
    at = getattr(_deadline, "at", None)
    if at is not None and time.thread_time() > at:
        raise _Overrun


def _check_deadline_sampled() -> None:
    """check_deadline for hooks torch-pruning calls once per dependency: reads the thread's CPU clock (a
    syscall, 31% of Swin-B's analysis time) every `_CLOCK_EVERY`th call only."""
    _deadline.calls = getattr(_deadline, "calls", 0) + 1
    if _deadline.calls % _CLOCK_EVERY == 0:
        check_deadline()


class BudgetSpent(UnsupportedOp):
    """An analysis ran out of its time budget (same code as UnsupportedOp: the graph is the cause)."""


@contextmanager
def analysis(what: str, names: dict[Any, str], budget_s: float) -> Iterator[None]:
    """Runs the body under a CPU-time budget and maps whatever torch-pruning raises to UnsupportedOp.

    The budget is checked cooperatively, at every dependency torch-pruning adds to a group (where its
    search once grew for 15+ minutes) and between groups: an exception injected from another thread could
    land inside a context manager's exit and leave process-wide state (a torch function mode) behind.
    """
    outer = getattr(_deadline, "at", None)
    mine = time.thread_time() + budget_s
    _deadline.at = mine if outer is None else min(outer, mine)
    try:
        yield
    except _Overrun as exc:
        raise BudgetSpent(
            f"{what} exceeded its {budget_s:g} CPU-second budget at {culprit(exc, names)}: the graph is too "
            "large or too irregular to analyse; use an unstructured method (magnitude, weightmom)") from None
    except CompressionError:
        raise
    except Exception as exc:  # torch-pruning's own failures (KeyError, ZeroDivisionError, asserts, ...)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UnsupportedOp(
            f"{what} failed at {culprit(exc, names)} ({type(exc).__name__}: {first}); use an unstructured "
            "method (magnitude, weightmom) for this model") from exc
    finally:
        _deadline.at = outer


class _TooManyIndices(RuntimeError):
    """A group search mapped more indices, or added more dependencies, than a real group holds (the group
    is left alone)."""


def _patch_torch_pruning() -> None:
    """Four guards around torch-pruning 1.6 (idempotent; outside our analyses it behaves as before but for
    the first guard):
    - its channel inference fails on some reshapes and concatenations (ZeroDivisionError on a channel
      shuffle's view, TypeError on torchvision Swin's channels-last concat): such a node gets no mapping
      and is listed in `graph.secateur_unmapped` with the reason, and `_trace` ends groups there;
    - it recomputes every mapping of the graph on each group query, quadratic in the graph (DenseNet-121:
      20 s of 29): a graph flagged `secateur_mapped` (ours: groups are queried, then pruned at once) keeps
      the mapping computed when it was built;
    - its group search has no bound: each dependency it adds checks the running analysis's budget and
      counts against `_MAX_GROUP_INDICES` and `_DEPS_PER_NODE` (searches cycling through MaxViT's grid
      attention, RexNet's partial residual adds: 20,000 dependencies, quadratic, 100+ s), and a
      flatten mapping may not produce more indices than the traced forward's largest tensor holds
      (`secateur_limit`, set by `trace`): one that does has mis-inferred a reshape (chained through Swin
      V2's windows they multiplied to millions: 137 of its 138 s of analysis went to 28 such groups);
    - its search asks, for every dependency it reaches, whether the group already holds it, by scanning the
      whole group (quadratic: 47% of Swin-B's 67 s): inside a search, groups index their items by target and
      handler."""
    if getattr(index_mapping.update_index_mapping, "secateur_guarded", False):
        return
    update = index_mapping.update_index_mapping
    add_dep = tp.dependency.Group.add_dep
    flatten = index_mapping._FlattenIndexMapping.__call__
    search = tp.DependencyGraph.get_pruning_group
    has_pruning_op = tp.dependency.Group.has_pruning_op

    def guarded(mapping: Callable[[Any, Any], None], what: str) -> Callable[[Any, Any], None]:
        """Wraps one node mapping: a failure leaves the node unmapped and recorded."""
        def guarded_mapping(graph: Any, node: Any) -> None:
            """Maps the node, or records that its channels cannot be inferred."""
            try:
                mapping(graph, node)
            except (ZeroDivisionError, TypeError, IndexError):
                if not hasattr(graph, "secateur_unmapped"):
                    graph.secateur_unmapped = {}
                graph.secateur_unmapped[node] = f"a {what} whose channels torch-pruning cannot infer"
        return guarded_mapping

    def cached_update(graph: Any) -> None:
        """Updates every mapping, unless the graph's mapping is known to be current."""
        if not getattr(graph, "secateur_mapped", False):
            update(graph)

    def counted_search(graph: Any, module: nn.Module, pruning_fn: Any, idxs: Any) -> Any:
        """Searches one group, counting the indices and dependencies it adds."""
        _search.indices, _search.deps = 0, 0
        _search.max_deps = _DEPS_PER_NODE * len(graph.module2node)
        try:
            return search(graph, module, pruning_fn, idxs)
        finally:
            _search.indices = None

    def bounded_add_dep(group: Any, dep: Any, idxs: Any) -> None:
        """Adds a dependency to a group being searched, if the running analysis has budget left and the
        search has not added too many indices."""
        _check_deadline_sampled()
        added = getattr(_search, "indices", None)
        if added is not None:
            _search.indices, _search.deps = added + len(idxs), _search.deps + 1
            if _search.indices > _MAX_GROUP_INDICES:
                raise _TooManyIndices(f"a group search added over {_MAX_GROUP_INDICES} indices")
            if _search.deps > _search.max_deps:
                raise _TooManyIndices(f"a group search added over {_search.max_deps} dependencies")
            items = group.__dict__.setdefault("secateur_items", {})
            items.setdefault((dep.target, dep.handler), []).append(idxs)
        add_dep(group, dep, idxs)

    def indexed_has_pruning_op(group: Any, dep: Any, idxs: Any) -> bool:
        """Whether the group holds `dep` with these indices: through its index inside a search (where every
        item came through bounded_add_dep), by torch-pruning's scan elsewhere."""
        items = getattr(group, "secateur_items", None)
        if items is None or getattr(_search, "indices", None) is None:
            return bool(has_pruning_op(group, dep, idxs))
        return any(other == idxs for other in items.get((dep.target, dep.handler), ()))

    def bounded_flatten(mapping: Any, idxs: Any) -> Any:
        """Expands indices through a flatten, unless that makes too many or the budget is spent."""
        _check_deadline_sampled()
        limit = getattr(mapping, "secateur_limit", _MAX_INDICES)
        if not mapping.reverse and len(idxs) * mapping._stride > limit:
            raise _TooManyIndices(f"a flatten would map {len(idxs)} indices to {len(idxs) * mapping._stride}")
        return flatten(mapping, idxs)

    cached_update.secateur_guarded = True  # type: ignore[attr-defined]
    mappings = index_mapping.update_reshape_index_mapping, index_mapping.update_concat_index_mapping
    index_mapping.update_reshape_index_mapping = guarded(mappings[0], "reshape")
    index_mapping.update_concat_index_mapping = guarded(mappings[1], "concat")
    index_mapping.update_index_mapping = cached_update
    tp.dependency.Group.add_dep = bounded_add_dep
    tp.DependencyGraph.get_pruning_group = counted_search
    tp.dependency.Group.has_pruning_op = indexed_has_pruning_op
    index_mapping._FlattenIndexMapping.__call__ = bounded_flatten


_patch_torch_pruning()


class _ForwardRecorder(TorchFunctionMode):
    """Records views that split the channel dim of a feature map, (N, C, H, W) -> (N, g, C/g, H, W): the
    first half of a channel shuffle, a permutation torch-pruning takes for the identity. (A token
    sequence's (B, L, C) -> (B, H, W, C) splits tokens, not channels: 3-D inputs are left out.) Also
    records the largest tensor any op outputs, which bounds what an index mapping can map to."""

    def __init__(self) -> None:
        super().__init__()
        self.splits: set[Any] = set()  # grad_fns of those views (the graph nodes' grad_fn)
        self.largest = 1  # elements of the largest tensor an op returned

    def __torch_function__(self, func: Callable[..., Any], types_: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        """Runs `func`, notes its output's size, and remembers it when it splits dim 1 of its input in two
        real dims."""
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if isinstance(out, torch.Tensor):
            self.largest = max(self.largest, out.numel())
        if (isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor) and out.grad_fn is not None
                and src.dim() == 4 and out.dim() == 5 and out.shape[0] == src.shape[0]
                and out.shape[1] * out.shape[2] == src.shape[1] and min(out.shape[1], out.shape[2]) > 1
                and out.shape[3:] == src.shape[2:]):
            self.splits.add(out.grad_fn)
        return out


def trace(model: nn.Module, example: torch.Tensor, ignored: list[nn.Parameter]) -> tuple[Any, dict[Any, str]]:
    """Builds torch-pruning's dependency graph of `model` (it needs autograd; it leaves the model in eval),
    leaving the `ignored` parameters unpruned (attention's per-head tables: not channels); returns it and the
    nodes where groups end, with the reason (channel shuffles, nodes it cannot map)."""
    recorder = _ForwardRecorder()

    def forward(module: nn.Module, inputs: torch.Tensor) -> Any:
        """The traced forward, with the view recorder on."""
        with recorder:
            return module(inputs)

    was_training = model.training
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, forward_fn=forward, verbose=False,
                ignored_params=ignored)
    finally:
        model.train(was_training)
    cut: dict[Any, str] = {n: why for n, why in getattr(graph, "secateur_unmapped", {}).items()}
    cut |= {n: "channel shuffle (a view splitting the channel dim)" for n in graph.module2node.values()
            if n.grad_fn in recorder.splits}
    for node in cut:
        # Groups end here (and `_classify` refuses the ones that reach it): followed as the identity through
        # the concat/split around a shuffle, torch-pruning's group search grows without bound (ShuffleNet
        # V2: 15+ minutes, 2 GB); through an unmapped node, its indices would be wrong.
        node.dependencies = []
    graph.secateur_mapped = True  # nothing is pruned before every group is known: see _patch_torch_pruning
    limit = min(recorder.largest, _MAX_INDICES)
    for node in graph.module2node.values():
        for dep in node.dependencies:
            for mapping in dep.index_mapping:
                if isinstance(mapping, index_mapping._FlattenIndexMapping):
                    mapping.secateur_limit = limit  # a real channel's indices fit in a real tensor
    return graph, cut


# --- which groups ----------------------------------------------------------------------------------------
