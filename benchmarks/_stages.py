"""Per-stage wall time, FLOPs and peak memory, measured the same way in both pipelines.

Imported by ``vs_reference.py`` (grounded_seg's environment) and by ``reference_worker.py`` (the
official packages' environment), so it needs nothing but torch and the standard library.

A stage is a set of modules: forward pre/post hooks add the time spent inside them (and, while a
``FlopCounterMode`` is active, the FLOPs it counted inside them) to the current run's totals.
What no stage covers (image decoding, preprocessing, query selection, box and mask
post-processing) is the run's total minus the stages.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

STAGES = (
    "gdino image backbone",
    "gdino text backbone",
    "gdino enhancer",
    "gdino decoder",
    "sam image encoder",
    "sam prompt + mask decoder",
)


class StageMeter:
    """Accumulates time (and FLOPs when counting) per stage while attached.

    ``modules`` maps a stage name to the modules it covers; ``sync`` runs before each reading of
    the clock (``torch.cuda.synchronize`` on CUDA, so the time is the kernels', not the launch's).
    """

    def __init__(
        self, modules: dict[str, list[torch.nn.Module]], sync: Callable[[], None] = lambda: None
    ) -> None:
        self.modules = modules
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.counter: torch.utils.flop_counter.FlopCounterMode | None = None
        self._open: dict[int, tuple[float, int]] = {}

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.modules, 0.0)
        self.flops = dict.fromkeys(self.modules, 0)

    @contextlib.contextmanager
    def attached(self) -> Iterator[StageMeter]:
        handles = []
        for stage, modules in self.modules.items():
            for module in modules:
                handles.append(module.register_forward_pre_hook(self._enter))
                handles.append(module.register_forward_hook(self._leave(stage)))
        self.reset()
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _total_flops(self) -> int:
        return 0 if self.counter is None else int(self.counter.get_total_flops())

    def _enter(self, module: torch.nn.Module, _args: object) -> None:
        self.sync()
        self._open[id(module)] = (time.perf_counter(), self._total_flops())

    def _leave(self, stage: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, _args: object, _out: object) -> None:
            self.sync()
            start, flops = self._open.pop(id(module))
            self.seconds[stage] += time.perf_counter() - start
            self.flops[stage] += self._total_flops() - flops

        return hook

    @contextlib.contextmanager
    def counting_flops(self) -> Iterator[None]:
        """Count FLOPs (matmul, conv, attention: what ``FlopCounterMode`` knows) inside."""
        from torch.utils.flop_counter import FlopCounterMode

        # FlopCounterMode has no formula for the CPU flash-attention kernel that
        # scaled_dot_product_attention runs on the CPU: without this, that attention counts 0
        cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        mapping = {cpu_sdpa: _sdpa_flops} if cpu_sdpa is not None else {}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            self.counter = counter
            try:
                yield
            finally:
                self.counter = None


def _sdpa_flops(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    """Attention's two matmuls, as FlopCounterMode counts them for the GPU kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def reset_peak_memory(device: torch.device) -> int:
    """Start a new high-water mark (CUDA's allocator statistics, or the process's peak RSS) and
    return the memory in use now, the base the run's rise is measured from."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_bytes("VmRSS:")


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def peak_memory_bytes(device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` on CUDA; the process's peak RSS (VmHWM) otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if Path("/proc/self/status").is_file():
        return _proc_status_bytes("VmHWM:")
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
