"""A diverging run stops at once with one line, and leaves only good checkpoints behind."""

import lightning as L
import pytest
import torch

from colorizer.errors import TrainingDiverged
from colorizer.run import train
from tests.helpers import QUICK, SMALL_MODELS, assert_one_line_error


class LearningRateJump(L.Callback):
    """Sets every learning rate to ``lr`` from optimizer step ``step`` on: a real divergence
    at a known step (as a bad warm-up or a resumed run with a wrong rate would cause)."""

    def __init__(self, step: int, lr: float = 1e20):
        self.step, self.lr = step, lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr


def test_cli_stops_at_the_first_nonfinite_loss(main_of, tmp_path):
    args = ["model=alpha", *QUICK, "trainer.max_steps=40", "model.optimizer=sgd"]
    result = main_of("colorizer.run", *args, "model.lr=1e20", "hydra.run.dir=run")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: training diverged: train/loss was NaN or infinite at step 1; stopped, no "
        "checkpoint was saved. Lower model.lr and train again"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing diverged was saved
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("name", ["alpha", "gan"])
def test_divergence_keeps_the_last_good_checkpoint(make_cfg, tmp_path, name):
    cfg = make_cfg(
        *SMALL_MODELS[name], *QUICK, "trainer.max_steps=40", "trainer.val_check_interval=2",
        "callbacks.nonfinite.check_every_n_steps=1000",  # only the checks before saves
        "+callbacks.jump._target_=tests.test_nonfinite.LearningRateJump", "+callbacks.jump.step=4",
    )  # fmt: skip
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is") as caught:
        train(cfg)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints and str(checkpoints[0].parent) in str(caught.value)
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["global_step"] <= 4, path.name  # saved before the jump took effect
        weights = [t for t in state["state_dict"].values() if t.is_floating_point()]
        assert all(torch.isfinite(t).all() for t in weights), path.name


def test_check_interval_is_validated(make_cfg):
    with pytest.raises(Exception, match="check_every_n_steps=0 must be an integer >= 1"):
        train(make_cfg("model=alpha", *QUICK, "callbacks.nonfinite.check_every_n_steps=0"))


def test_cli_one_line_for_a_bad_check_interval(main_of):
    result = main_of(
        "colorizer.run", "model=alpha", *QUICK, "callbacks.nonfinite.check_every_n_steps=0"
    )
    assert_one_line_error(result, "check_every_n_steps=0 must be an integer >= 1")
