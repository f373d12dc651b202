"""reuse_freed_memory: large freed tensors come back without page faults; nothing at import."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from grounded_seg import reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 200 MB tensor five times; print the minor page faults of each round.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from grounded_seg import reuse_freed_memory
    assert reuse_freed_memory()
rounds = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(50_000_000).sum()
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*rounds)
"""
PAGES = 200_000_000 // 4096  # ~48,800 pages of 4 KiB


def faults(mode: str, prefix: str = "") -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", prefix + PROBE, mode], capture_output=True, text=True, check=True
    )
    return [int(n) for n in out.stdout.strip().splitlines()[-1].split()]


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_freed_memory_is_reused_without_page_faults():
    # glibc maps a fresh region each time: every page faults again, every round
    assert min(faults("plain")[2:]) > PAGES // 2
    # the heap keeps it (after a round or two while the heap settles): reused as it is
    assert max(faults("tuned")[2:]) < PAGES // 20


def test_importing_grounded_seg_changes_no_malloc_setting():
    rounds = faults("plain", prefix="import grounded_seg\n")
    if GLIBC:
        assert min(rounds[2:]) > PAGES // 2


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"threshold_bytes: expected an int"):
        reuse_freed_memory(0)
    with pytest.raises(ValueError, match=r"threshold_bytes"):
        reuse_freed_memory(2**40)
