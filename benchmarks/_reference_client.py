"""Driving ``reference_worker.py``, the official pipeline, in the oracle environment's Python."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from _vs_runs import Run

HERE = Path(__file__).resolve().parent


class ReferenceProcess:
    """``reference_worker.py`` under the oracle's Python: one JSON request / answer per line."""

    def __init__(self, python: str, log: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("PYTHONPATH", None)  # the oracle must not see this environment's packages
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [python, str(HERE / "reference_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )

    def call(self, op: str, **request: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the reference process died during {op!r}: see {self._log.name}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise SystemExit(f"the reference failed in {op!r}:\n{answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.call_quit()
        self._log.close()

    def call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def run_reference(
    ref: ReferenceProcess, items: list, sam: str, out: Path, *, flops: bool = False
) -> Run:
    """One timed run of the reference on ``items`` with SAM ``sam``; its outputs through ``out``."""
    import numpy as np

    answer = ref.call("run", items=items, sam=sam, out=str(out), flops=flops)
    arrays = np.load(out)
    outputs = [(arrays[f"xyxy{i}"], arrays[f"masks{i}"]) for i in range(len(items))]
    return Run(
        answer["seconds"],
        answer["stages"],
        answer["flops"],
        answer["peak_memory"],
        answer["base_memory"],
        answer["boxes"],
        outputs,
    )
