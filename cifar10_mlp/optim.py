"""Optimizer and learning-rate schedule from their config nodes."""

from __future__ import annotations

import math
from collections.abc import Callable

import keras


def build(optimizer_cfg) -> keras.optimizers.Optimizer:
    """The Keras optimizer named by an ``optimizer`` config node (its lr is set per step)."""
    cfg = optimizer_cfg
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                                     epsilon=cfg.epsilon)
    if cfg.name in ("adamw", "lion"):
        optimizer = (keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                                            beta_1=cfg.beta_1, beta_2=cfg.beta_2,
                                            epsilon=cfg.epsilon) if cfg.name == "adamw" else
                     keras.optimizers.Lion(learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                                           beta_1=cfg.beta_1, beta_2=cfg.beta_2))
        # decay kernels only: shrinking biases and normalisation scales only hurts
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer
    raise ValueError(f"optimizer.name={cfg.name!r} is not a known optimizer")


def learning_rate_schedule(schedule_cfg, base_lr: float, steps_per_epoch: int,
                           epochs: int) -> Callable[[int], float]:
    """The learning rate at each optimizer step (0-based) of a run of ``epochs`` epochs.

    Warm-up ramps linearly from ``base_lr / warmup_steps`` to ``base_lr``; the
    schedule proper then runs over the remaining steps.
    """
    cfg = schedule_cfg
    warmup = cfg.warmup_epochs * steps_per_epoch
    decay_steps = max(1, epochs * steps_per_epoch - warmup)

    def after_warmup(step: int) -> float:
        if cfg.name == "constant":
            return base_lr
        if cfg.name == "cosine":
            progress = min(1.0, step / decay_steps)
            floor = cfg.final_lr_fraction
            return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        if cfg.name == "step":
            return base_lr * cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        raise ValueError(f"schedule.name={cfg.name!r} is not a known schedule")

    def learning_rate(step: int) -> float:
        if step < warmup:
            return base_lr * (step + 1) / warmup
        return after_warmup(step - warmup)

    return learning_rate
