"""The training core (grounded_seg.training) on a toy recipe: exact resumption, atomic and
checked checkpoints, the curve, the hooks, and the report writers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grounded_seg.checkpoints import load_checkpoint
from grounded_seg.training import (
    CHECKPOINT_FORMAT,
    markdown_table,
    run_training,
    thin_rows,
    write_json,
    write_run,
)

STEPS = 6


class Toy(torch.nn.Module):
    """Dropout, so that the torch RNG matters too."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pure_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([7, step])
    x = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    return x, x.sum(1, keepdim=True)


def toy_run(tmp_path, kind="stream", stop_at=None, settings=None, fail_at=None, **kw):
    """A fresh recipe (as a new process builds it) run through ``run_training``."""
    torch.manual_seed(0)
    model = Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    rng = np.random.default_rng(3)
    torch.manual_seed(11)  # the dropout stream

    def stream_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if fail_at is not None and step == fail_at:
            raise KeyboardInterrupt  # the run is killed while making this step's batch
        x = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
        return x, x.sum(1, keepdim=True)

    def loss_of(batch, step):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"half": float(loss.detach()) / 2}

    result = run_training(
        model,
        loss_of,
        optimizer,
        batches=stream_batch if kind == "stream" else pure_batch,
        rng=rng if kind == "stream" else None,
        steps=STEPS,
        scheduler=scheduler,
        grad_clip=1.0,
        log_every=2,
        checkpoint=tmp_path / "ck" / "checkpoint.pt",
        settings=settings if settings is not None else {"lr": 0.05},
        stop_at=stop_at,
        **kw,
    )
    return model, result


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def _without_seconds(curve):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in curve]


@pytest.mark.parametrize("kind", ["stream", "pure"])
def test_stopped_and_resumed_equals_a_straight_run_bit_for_bit(tmp_path, kind):
    straight, whole = toy_run(tmp_path / "straight", kind)
    assert whole.finished and whole.resumed_at == []
    assert [row["step"] for row in whole.curve] == [2, 4, 6]

    _, part = toy_run(tmp_path / "split", kind, stop_at=3)
    assert not part.finished and part.step == 3
    assert int(load_checkpoint(tmp_path / "split" / "ck" / "checkpoint.pt")["step"]) == 3
    resumed, rest = toy_run(tmp_path / "split", kind)
    assert rest.resumed_at == [3] and rest.finished
    assert _same_weights(straight, resumed)
    # the window of step 3 was carried over: the row at step 4 is the mean of steps 3 and 4
    assert _without_seconds(rest.curve) == _without_seconds(whole.curve)


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    straight, _ = toy_run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "killed", fail_at=5, checkpoint_every=2)  # checkpoint of step 4
    resumed, rest = toy_run(tmp_path / "killed", checkpoint_every=2)
    assert rest.resumed_at == [4]
    assert _same_weights(straight, resumed)


def test_without_the_rng_state_a_resumed_run_would_differ(tmp_path, monkeypatch):
    """The check above can fail: drop the numpy RNG state from the checkpoint and it does."""
    from grounded_seg.training import loop

    straight, _ = toy_run(tmp_path / "straight")
    toy_run(tmp_path / "split", stop_at=3)
    monkeypatch.setattr(loop, "_restore_rng", lambda rng, state: None)
    resumed, _ = toy_run(tmp_path / "split")
    assert not _same_weights(straight, resumed)


def test_batches_built_in_a_worker_give_the_same_weights(tmp_path):
    inline, _ = toy_run(tmp_path / "inline", "pure")
    worker, _ = toy_run(tmp_path / "worker", "pure", workers=1)
    assert _same_weights(inline, worker)
    with pytest.raises(ValueError, match="workers"):
        toy_run(tmp_path / "bad", "stream", workers=1)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "checkpoint.pt"
    toy_run(tmp_path, stop_at=2)
    before = path.read_bytes()
    real_save = torch.save

    def killed_mid_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_save)
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path, stop_at=4)  # resumes at 2, dies saving step 4
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporaries
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and int(state["step"]) == 2
    straight, _ = toy_run(tmp_path / "straight")
    resumed, rest = toy_run(tmp_path)
    assert rest.resumed_at == [2] and _same_weights(straight, resumed)


def test_a_checkpoint_of_other_settings_or_other_code_is_refused(tmp_path):
    path = tmp_path / "ck" / "checkpoint.pt"
    toy_run(tmp_path, stop_at=2, settings={"lr": 0.05, "seed": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"other settings .*'lr': \(0\.05, 0\.1\)"):
        toy_run(tmp_path, settings={"lr": 0.1, "seed": 1})
    assert path.read_bytes() == before  # refused before anything was trained or written
    _, fresh = toy_run(tmp_path, settings={"lr": 0.1, "seed": 1}, resume=False)
    assert fresh.resumed_at == [] and fresh.finished

    torch.save({"step": 3, "model": {}}, path)  # an older trainer's checkpoint
    with pytest.raises(ValueError, match=r"not written by this version.*resume=False"):
        toy_run(tmp_path)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        toy_run(tmp_path)


def test_curve_rows_evaluation_and_hooks(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    modes, rates, seen = [], [], []

    def loss_of(batch, step):
        rates.append(optimizer.param_groups[0]["lr"])
        return torch.tensor(float(step), requires_grad=True), {"double": 2.0 * step}

    def evaluate(done):
        modes.append(model.training)
        return {"score": done / 10}

    result = run_training(
        model,
        loss_of,
        optimizer,
        batches=lambda step: None,
        steps=7,
        learning_rate=lambda step: 0.5 * step,
        after_step=lambda step, parts: seen.append((step, parts["loss"])),
        log_every=2,
        evaluate=evaluate,
        evaluate_every=3,
    )
    rows = _without_seconds(result.curve)
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 7]  # every 2, at evaluations and the end
    assert rows[0] == {"step": 2, "loss": 0.5, "double": 1.0}  # means of steps 0 and 1
    assert rows[1] == {"step": 3, "loss": 2.0, "double": 4.0, "score": 0.3}
    assert rows[-1] == {"step": 7, "loss": 6.0, "double": 12.0, "score": 0.7}
    assert modes == [False, False, False] and not model.training  # eval mode, and after
    assert rates == [0.5 * s for s in range(7)]
    assert seen == [(s, float(s)) for s in range(7)]

    modes.clear()
    result = run_training(model, loss_of, optimizer, batches=lambda step: None, steps=6,
                          log_every=2, evaluate=evaluate, evaluate_every=3,
                          evaluate_at_end=False)  # fmt: skip
    assert [r.get("score") for r in result.curve] == [None, 0.3, None, None]  # not at step 6


def test_a_loss_that_is_not_finite_stops_the_run():
    model = Toy()
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        run_training(
            model,
            lambda batch, step: (torch.tensor(math.nan, requires_grad=True), {}),
            torch.optim.SGD(model.parameters(), lr=0.1),
            batches=lambda step: None,
            steps=2,
        )


def test_reports_are_written_whole(tmp_path, monkeypatch):
    write_run(tmp_path, {"curve": [1, 2]}, "# card\n")
    assert json.loads((tmp_path / "train_log.json").read_text()) == {"curve": [1, 2]}
    assert (tmp_path / "MODEL_CARD.md").read_text() == "# card\n"
    write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}\n'
    assert markdown_table(["a", "b"], [(1, "x")]) == "| a | b |\n|---:|---:|\n| 1 | x |"
    assert [r["step"] for r in thin_rows([{"step": i} for i in range(25)], 10)] == list(
        range(0, 25, 2)
    )
