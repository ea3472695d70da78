import numpy as np
import pytest
from omegaconf import OmegaConf

from cifar10_mlp.training.optim import build, learning_rate_schedule

STEPS = 10  # per epoch


def schedule(name, epochs=5, **extra):
    cfg = OmegaConf.create({"name": name, "warmup_epochs": 0, **extra})
    rates = learning_rate_schedule(cfg, 0.1, STEPS, epochs)
    return lambda step: float(rates(step))


def test_constant_with_warmup_ramps_linearly_then_holds():
    lr = schedule("constant", warmup_epochs=1)
    assert [lr(s) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert lr(10) == lr(49) == pytest.approx(0.1)


def test_cosine_decays_from_base_to_the_final_fraction():
    lr = schedule("cosine", final_lr_fraction=0.1)
    assert lr(0) == pytest.approx(0.1)
    assert lr(25) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # half way
    assert lr(50) == pytest.approx(0.01)
    assert all(lr(s) >= lr(s + 1) for s in range(50))


def test_cosine_starts_after_warmup():
    lr = schedule("cosine", warmup_epochs=1, final_lr_fraction=0.0)
    assert lr(9) == pytest.approx(0.1) and lr(10) == pytest.approx(0.1)
    assert lr(49) < 0.001


def test_step_multiplies_by_gamma_every_step_epochs():
    lr = schedule("step", step_epochs=2, gamma=0.5)
    assert [lr(s) for s in (0, 19, 20, 39, 40)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


OPTIMIZERS = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "adam": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "adamw": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.01},
    "lion": {"beta_1": 0.9, "beta_2": 0.99, "weight_decay": 0.01},
}


def optimizer_cfg(name, fused, lr=0.02):
    return OmegaConf.create({"name": name, "lr": lr, "fused": fused, **OPTIMIZERS[name]})


@pytest.mark.parametrize("name, cls", [("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW"),
                                       ("lion", "Lion")])
def test_keras_optimizer_matches_config(name, cls):
    optimizer = build(optimizer_cfg(name, fused=False), 0.02)
    assert type(optimizer).__name__ == cls
    assert float(optimizer.learning_rate) == pytest.approx(0.02)
    if name == "sgd":
        assert optimizer.nesterov and optimizer.momentum == 0.9
    if name in ("adamw", "lion"):
        assert optimizer.weight_decay == 0.01


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_optimizer_steps_as_keras_own_does(name):
    """Three steps of the fused optimizer move a kernel, a bias and their moments as Keras'
    optimizer of that name does, weight decay (on the kernel only) included."""
    import keras

    rng = np.random.default_rng(0)
    start = [rng.standard_normal((6, 4)).astype("float32"),
             rng.standard_normal(4).astype("float32")]
    grads = [[rng.standard_normal(w.shape).astype("float32") for w in start] for _ in range(3)]
    moved = []
    for fused in (False, True):
        layer = keras.layers.Dense(4)
        layer.build((None, 6))
        layer.set_weights(start)
        optimizer = build(optimizer_cfg(name, fused), 0.05)
        for step in grads:
            optimizer.apply_gradients(zip(step, layer.trainable_variables, strict=True))
        moved.append([w.numpy() for w in layer.trainable_variables])
    for keras_own, fused in zip(*moved, strict=True):
        np.testing.assert_allclose(fused, keras_own, rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved[1][0], start[0])  # the step moved the weights at all


def test_fused_weight_decay_shrinks_kernels_not_biases():
    import keras

    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    layer.set_weights([np.ones((2, 2), "float32"), np.ones(2, "float32")])
    cfg = optimizer_cfg("adamw", fused=True)
    cfg.weight_decay = 0.5
    optimizer = build(cfg, 0.1)
    zeros = [np.zeros((2, 2), "float32"), np.zeros(2, "float32")]
    # a zero gradient: decay only
    optimizer.apply_gradients(zip(zeros, layer.trainable_variables, strict=True))
    kernel, bias = (w.numpy() for w in layer.trainable_variables)
    np.testing.assert_allclose(kernel, 1 - 0.1 * 0.5)
    np.testing.assert_allclose(bias, 1.0)


def test_lion_moves_each_weight_by_the_learning_rate_whatever_the_gradient_scale():
    import keras

    cfg = optimizer_cfg("lion", fused=True)
    cfg.weight_decay = 0.0
    optimizer = build(cfg, 0.01)
    weights = keras.Variable([1.0, -2.0, 3.0])
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.5, -1000.0, 1e-6]), weights)])
    np.testing.assert_allclose(weights.numpy(), [0.99, -1.99, 2.99], rtol=1e-6)
