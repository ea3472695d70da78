import numpy as np
import pytest
from omegaconf import OmegaConf

from cifar10_mlp.optim import build, learning_rate_schedule

STEPS = 10  # per epoch


def schedule(name, epochs=5, **extra):
    cfg = OmegaConf.create({"name": name, "warmup_epochs": 0, **extra})
    return learning_rate_schedule(cfg, 0.1, STEPS, epochs)


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


@pytest.mark.parametrize("name, extra, cls", [
    ("sgd", {"momentum": 0.9, "nesterov": True}, "SGD"),
    ("adam", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}, "Adam"),
    ("adamw", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "weight_decay": 0.01},
     "AdamW"),
    ("lion", {"beta_1": 0.9, "beta_2": 0.99, "weight_decay": 0.01}, "Lion"),
])
def test_optimizer_matches_config(name, extra, cls):
    optimizer = build(OmegaConf.create({"name": name, "lr": 0.02, **extra}))
    assert type(optimizer).__name__ == cls
    assert float(optimizer.learning_rate) == pytest.approx(0.02)
    if name == "sgd":
        assert optimizer.nesterov and optimizer.momentum == 0.9
    if name in ("adamw", "lion"):
        assert optimizer.weight_decay == 0.01


def test_lion_moves_each_weight_by_the_learning_rate_whatever_the_gradient_scale():
    import keras

    optimizer = build(OmegaConf.create({"name": "lion", "lr": 0.01, "beta_1": 0.9,
                                        "beta_2": 0.99, "weight_decay": 0.0}))
    weights = keras.Variable([1.0, -2.0, 3.0])
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.5, -1000.0, 1e-6]), weights)])
    np.testing.assert_allclose(weights.numpy(), [0.99, -1.99, 2.99], rtol=1e-6)
