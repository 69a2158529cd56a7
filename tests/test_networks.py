"""Network shapes, dueling aggregation, width multiplier, checkpoints loaded with weights_only."""

from __future__ import annotations

import itertools

import pytest
import torch

from polydistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from polydistill.networks import ConvAutoencoder, DuelingQNetwork, count_parameters, scheduled_lr


def test_dueling_output_shapes_and_heads() -> None:
    net = DuelingQNetwork([6, 4])
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert net(x, head=0).shape == (3, 6)
    assert net(x, head=1).shape == (3, 4)
    _q, f = net.forward_with_features(x)
    assert f.shape == (3, net.feature_dim) and net.feature_dim == 64 * 7 * 7


def test_dueling_aggregation_is_value_plus_centred_advantage() -> None:
    torch.manual_seed(0)
    net = DuelingQNetwork(5)
    x = torch.rand(2, 4, 84, 84)
    f = net.torso(x)
    v = net.heads[0].value(f)
    a = net.heads[0].advantage(f)
    q = net(x)
    torch.testing.assert_close(q, v + a - a.mean(1, keepdim=True))
    # The mean advantage is removed: Q averages to V.
    torch.testing.assert_close(q.mean(1, keepdim=True), v)


def test_uint8_and_scaled_float_inputs_agree() -> None:
    net = DuelingQNetwork(4)
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(net(x), net(x.float() / 255))


def test_width_multiplier_shrinks_the_network() -> None:
    full, quarter = DuelingQNetwork(6), DuelingQNetwork(6, width=0.25)
    assert count_parameters(quarter) < 0.1 * count_parameters(full)
    assert quarter(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).shape == (1, 6)


def test_autoencoder_shapes() -> None:
    ae = ConvAutoencoder(latent_dim=64)
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    z = ae.encode(x)
    assert z.shape == (2, 64)
    y = ae.decode(z)
    assert y.shape == (2, 4, 84, 84) and y.min() >= 0 and y.max() <= 1


def test_checkpoint_round_trip_and_tamper_detection(tmp_path) -> None:
    net = DuelingQNetwork(6, width=0.5)
    meta = save_checkpoint(tmp_path / "ck", net, {"kind": "teacher", "game": "Pong"})
    model, got = load_checkpoint(tmp_path / "ck")
    assert got["architecture"] == net.architecture() and got["sha256"] == meta["sha256"]
    x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(model(x), net.eval()(x))
    (tmp_path / "ck" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(tmp_path / "ck", verify=False)
    with pytest.raises(CheckpointError, match="not a polydistill checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_subpixel_decoder_equals_the_transposed_convolution() -> None:
    from polydistill.networks import subpixel_decoder

    torch.manual_seed(0)
    ae = ConvAutoencoder(latent_dim=16).eval()
    z = torch.randn(5, 16)
    fast = subpixel_decoder(ae)
    assert fast is not None
    with torch.no_grad():
        torch.testing.assert_close(fast(z), ae.decode(z), atol=1e-5, rtol=1e-5)


def test_scheduled_lr_constant_and_cosine() -> None:
    assert [scheduled_lr(1e-3, "constant", t, 100) for t in (0, 50, 100)] == [1e-3] * 3
    cos = [scheduled_lr(1e-3, "cosine", t, 100) for t in range(101)]
    assert cos[0] == pytest.approx(1e-3) and cos[50] == pytest.approx(5e-4) and cos[100] == pytest.approx(0.0)
    assert all(a > b for a, b in itertools.pairwise(cos))  # strictly decreasing to the end
    assert scheduled_lr(1e-3, "cosine", 150, 100) == pytest.approx(0.0)  # past the end: stays at 0
    with pytest.raises(ValueError, match=r"'linear'.*constant.*cosine"):
        scheduled_lr(1e-3, "linear", 0, 10)
