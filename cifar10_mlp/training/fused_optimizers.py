"""Optimizers whose update of each variable is one XLA-compiled kernel.

Keras' own optimizers update a variable with a dozen element-wise TensorFlow ops, each
a full pass over the weights and their moments: on a 2-core CPU that was the largest part
of ``best_mlp``'s training step (docs/performance.md; ``scripts/profile_step.py``). Each class does
the same arithmetic as its Keras namesake, weight decay included, in one fused pass per
variable. XLA is slow here for matrix products, not for element-wise work like this.

``optimizer.fused=false`` chooses Keras' own optimizer instead.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class FusedOptimizer(keras.optimizers.Optimizer):
    """The slots and bookkeeping the fused optimizers share: ``slots`` zero-initialised
    variables per trained variable, and decoupled weight decay (scaled by the learning
    rate) on kernels only: shrinking biases and normalisation scales only hurts."""

    slot_names: tuple[str, ...] = ()

    @staticmethod
    def rule(variable, *slots_and_values) -> None:
        """The update of one variable, compiled by XLA into one kernel."""
        raise NotImplementedError

    def __init__(self, learning_rate, decoupled_decay: float = 0.0, name: str | None = None,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.decoupled_decay = decoupled_decay
        self.slots: dict = {}  # a trained tf.Variable's ref() -> its slot variables
        # one compiled function per optimizer: a traced function keeps the variables it
        # was traced with, so a module-level one would hold on to another model's
        self.fused_update = tf.function(self.rule, jit_compile=True)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        for variable in variables:
            self.slots[variable.value.ref()] = tuple(
                self.add_variable_from_reference(variable, slot) for slot in self.slot_names)
        self.decayed = {v.value.ref() for v in variables if v.name == "kernel"}

    def decay_for(self, variable) -> float:
        return self.decoupled_decay if variable.ref() in self.decayed else 0.0

    def slot_values(self, variable) -> tuple:
        return tuple(slot.value for slot in self.slots[variable.ref()])

    def step_count(self, dtype):
        return tf.cast(self.iterations + 1, dtype)

    def get_config(self):
        return {**super().get_config(), "decoupled_decay": self.decoupled_decay}


class FusedAdamW(FusedOptimizer):
    """Keras' ``AdamW`` (``Adam`` with ``decoupled_decay=0``), one kernel per variable."""

    slot_names = ("momentum", "velocity")

    @staticmethod
    def rule(variable, momentum, velocity, gradient, alpha, decay, beta_1, beta_2, epsilon):
        m = momentum.assign(momentum + (gradient - momentum) * (1 - beta_1))
        v = velocity.assign(velocity + (tf.square(gradient) - velocity) * (1 - beta_2))
        variable.assign(variable - variable * decay - alpha * m / (tf.sqrt(v) + epsilon))

    def __init__(self, learning_rate, beta_1: float, beta_2: float, epsilon: float,
                 decoupled_decay: float = 0.0, name: str = "fused_adamw", **kwargs):
        super().__init__(learning_rate, decoupled_decay, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        step = self.step_count(dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # Keras' Adam: the bias corrections folded into the step size
        alpha = (tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
                 / (1 - tf.pow(beta_1, step)))
        momentum, velocity = self.slot_values(variable)
        self.fused_update(variable, momentum, velocity, tf.cast(gradient, dtype), alpha,
                          tf.cast(learning_rate, dtype) * self.decay_for(variable), beta_1,
                          beta_2, tf.cast(self.epsilon, dtype))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class FusedLion(FusedOptimizer):
    """Keras' ``Lion``, one kernel per variable."""

    slot_names = ("momentum",)

    @staticmethod
    def rule(variable, momentum, gradient, lr, decay, beta_1, beta_2):
        direction = tf.sign(momentum * beta_1 + gradient * (1 - beta_1))
        variable.assign(variable - variable * decay - lr * direction)
        momentum.assign(momentum * beta_2 + gradient * (1 - beta_2))

    def __init__(self, learning_rate, beta_1: float, beta_2: float,
                 decoupled_decay: float = 0.0, name: str = "fused_lion", **kwargs):
        super().__init__(learning_rate, decoupled_decay, name=name, **kwargs)
        self.beta_1, self.beta_2 = beta_1, beta_2

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        (momentum,) = self.slot_values(variable)
        lr = tf.cast(learning_rate, dtype)
        self.fused_update(variable, momentum, tf.cast(gradient, dtype), lr,
                          lr * self.decay_for(variable), tf.cast(self.beta_1, dtype),
                          tf.cast(self.beta_2, dtype))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


class FusedSGD(FusedOptimizer):
    """Keras' ``SGD`` with momentum (Nesterov's or not), one kernel per variable."""

    slot_names = ("momentum",)

    @staticmethod
    def rule(variable, velocity, gradient, lr, momentum, nesterov: bool):
        v = velocity.assign(momentum * velocity - gradient * lr)
        variable.assign_add(momentum * v - gradient * lr if nesterov else v)

    def __init__(self, learning_rate, momentum: float, nesterov: bool,
                 name: str = "fused_sgd", **kwargs):
        super().__init__(learning_rate, 0.0, name=name, **kwargs)
        self.momentum, self.nesterov = momentum, nesterov

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        (velocity,) = self.slot_values(variable)
        self.fused_update(variable, velocity, tf.cast(gradient, dtype),
                          tf.cast(learning_rate, dtype), tf.cast(self.momentum, dtype),
                          self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}
