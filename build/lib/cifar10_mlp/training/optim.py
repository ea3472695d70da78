"""Optimizer and learning-rate schedule from their config nodes."""

from __future__ import annotations

import math

import keras
from keras import ops


def build(optimizer_cfg, learning_rate) -> keras.optimizers.Optimizer:
    """The optimizer an ``optimizer`` config node names, stepping at ``learning_rate`` (a
    number or a schedule of the optimizer's step): fused (``fused_optimizers``) or, with
    ``optimizer.fused=false``, Keras' own."""
    cfg = optimizer_cfg
    if cfg.name not in ("sgd", "adam", "adamw", "lion"):
        raise ValueError(f"optimizer.name={cfg.name!r} is not a known optimizer")
    decay = cfg.get("weight_decay", 0.0)
    if cfg.fused:
        from cifar10_mlp.training import fused_optimizers as fused

        if cfg.name == "sgd":
            return fused.FusedSGD(learning_rate, cfg.momentum, cfg.nesterov)
        if cfg.name == "lion":
            return fused.FusedLion(learning_rate, cfg.beta_1, cfg.beta_2, decay)
        return fused.FusedAdamW(learning_rate, cfg.beta_1, cfg.beta_2, cfg.epsilon, decay)
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=cfg.beta_1,
                                     beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    optimizer = (keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=decay,
                                        beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                                        epsilon=cfg.epsilon) if cfg.name == "adamw" else
                 keras.optimizers.Lion(learning_rate=learning_rate, weight_decay=decay,
                                       beta_1=cfg.beta_1, beta_2=cfg.beta_2))
    # decay kernels only: shrinking biases and normalisation scales only hurts
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def learning_rate_schedule(schedule_cfg, base_lr: float, steps_per_epoch: int,
                           epochs: int) -> WarmupSchedule:
    """The learning rate at each optimizer step (0-based) of a run of ``epochs`` epochs."""
    cfg = schedule_cfg
    return WarmupSchedule(cfg.name, base_lr, cfg.warmup_epochs * steps_per_epoch,
                          epochs * steps_per_epoch,
                          final_fraction=cfg.get("final_lr_fraction", 0.0),
                          gamma=cfg.get("gamma", 1.0),
                          step_every=cfg.get("step_epochs", 1) * steps_per_epoch)


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from ``base_lr / warmup_steps`` to ``base_lr``, then ``kind``
    over the remaining steps: ``constant``; ``cosine`` decay to ``final_fraction *
    base_lr``; ``step``, times ``gamma`` every ``step_every`` steps.

    The optimizer evaluates it on its own step counter inside the training step, so no
    Python code runs between batches to set the rate.
    """

    def __init__(self, kind: str, base_lr: float, warmup_steps: int, total_steps: int,
                 final_fraction: float = 0.0, gamma: float = 1.0, step_every: int = 1):
        if kind not in ("constant", "cosine", "step"):
            raise ValueError(f"schedule.name={kind!r} is not a known schedule")
        self.kind, self.base_lr = kind, base_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.final_fraction, self.gamma, self.step_every = final_fraction, gamma, step_every

    def __call__(self, step):
        step = ops.cast(step, "float32")
        after = step - self.warmup_steps
        if self.kind == "constant":
            rate = ops.convert_to_tensor(self.base_lr, "float32")
        elif self.kind == "cosine":
            progress = ops.minimum(1.0, after / max(1, self.total_steps - self.warmup_steps))
            floor = self.final_fraction
            rate = self.base_lr * (floor + (1 - floor) * 0.5 * (1 + ops.cos(math.pi * progress)))
        else:
            rate = self.base_lr * ops.power(self.gamma, ops.floor(after / self.step_every))
        warming = self.base_lr * (step + 1) / max(1, self.warmup_steps)
        return ops.where(step < self.warmup_steps, warming, rate)

    def get_config(self):
        return {"kind": self.kind, "base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "final_fraction": self.final_fraction,
                "gamma": self.gamma, "step_every": self.step_every}
