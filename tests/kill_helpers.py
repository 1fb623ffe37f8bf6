"""Callbacks that stop a run the hard way, for the reliability tests (loaded by Hydra through PYTHONPATH)."""

import os
import signal

import lightning as L


class SignalAtEpoch(L.Callback):
    """Send ``sig`` (SIGKILL: no cleanup at all) to this process when epoch ``epoch`` starts, i.e. right after
    the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int, sig: str = "SIGKILL"):
        self.epoch, self.sig = epoch, getattr(signal, sig)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.sig)


class SignalAtStep(L.Callback):
    def __init__(self, step: int, sig: str = "SIGTERM"):
        self.step, self.sig = step, getattr(signal, sig)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)
