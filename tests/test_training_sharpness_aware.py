"""--sam-rho: sharpness-aware minimisation takes each step's gradient at the worst nearby
weights, and leaves the weights and the batch-norm statistics as the first pass had them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.synthetic_xray import write_dataset
from training.fitting.config import ConfigError, parse_config
from training.fitting.loop import fit
from training.fitting.sharpness_aware import frozen_batch_norm_statistics, sharpness_aware_backward
from xray_app.model import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Quadratic(nn.Module):
    """L(w) = 0.5 * sum(a * w**2), whose gradient a * w is known everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.register_buffer("a", torch.tensor([3.0, 1.0, 2.0]))

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.a * self.w**2).sum()


def test_the_gradient_is_taken_at_the_weights_moved_rho_along_the_normalised_gradient():
    model, rho = Quadratic(), 0.05
    w = model.w.detach().clone()
    g = model.a * w
    moved = w + rho * g / g.norm()
    loss = sharpness_aware_backward(model, model.loss, rho)
    torch.testing.assert_close(model.w.grad, model.a * moved, msg="expected grad L(w + rho g/|g|)")
    torch.testing.assert_close(model.w.detach(), w, rtol=0, atol=0, msg="expected the weights restored exactly")
    torch.testing.assert_close(loss.detach(), 0.5 * (model.a * w**2).sum(), msg="expected the loss at w")


def test_the_second_pass_leaves_the_batch_norm_statistics_alone():
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(4).train()
    batch = torch.randn(8, 4) * 3 + 1
    with frozen_batch_norm_statistics(layer):
        layer(batch)
    torch.testing.assert_close(layer.running_mean, torch.zeros(4), msg="expected no update inside")
    assert layer.momentum == 0.1, "expected the momentum restored on leaving"

    network = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    reference = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    reference.load_state_dict(network.state_dict())
    reference(batch)  # one ordinary forward pass
    sharpness_aware_backward(network, lambda: network(batch).pow(2).mean(), 0.05)
    torch.testing.assert_close(network[1].running_mean, reference[1].running_mean,
                               msg="expected the batch counted once, by the first pass")


@pytest.mark.parametrize("flags, message", [(["--sam-rho", "-0.1"], "sam_rho"),
                                            (["--sam-rho", "0.05", "--amp", "fp16"], "fp16")])
def test_a_negative_radius_and_fp16_loss_scaling_are_refused(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(["--metadata", "m.csv", "--images", "i", "--out", str(tmp_path), *flags])


def test_a_run_with_sam_trains_exports_and_records_its_radius(tmp_path):
    metadata, images = write_dataset(tmp_path / "data", count=24, size=64, seed=4)
    flags = ["--metadata", str(metadata), "--images", str(images), "--input-size", "32",
             "--batch-size", "8", "--pretrained", "none", "--architecture", "tiny-resnet",
             "--num-workers", "0", "--no-progress", "--val-fraction", "0.25", "--test-fraction",
             "0.25", "--seed", "3", "--epochs", "1", "--amp", "none"]
    plain = load_checkpoint(fit(parse_config([*flags, "--out", str(tmp_path / "plain")])))
    sam = load_checkpoint(fit(parse_config([*flags, "--sam-rho", "0.05", "--out", str(tmp_path / "sam")])))
    assert sam.config.provenance["train_config"]["sam_rho"] == 0.05, "expected the radius recorded"
    assert not torch.equal(sam.model.fc.weight, plain.model.fc.weight), (
        "expected the sharpness-aware steps to move the weights elsewhere than plain steps")
