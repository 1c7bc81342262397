import pytest
import torch

from openvaccine.config import load_config
from openvaccine.models.dropout import Dropout, dropout
from openvaccine.train import new_model


def test_drops_at_the_rate_asked_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(1_000_003)                                   # not a multiple of the four values a word gives
    y = dropout(x, 0.1)
    kept = y > 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.002)
    scale = 65536 / (65536 - round(0.1 * 65536))                 # 1 / (1 - p'), p' = p to 2^-16
    assert torch.allclose(y[kept], torch.full_like(y[kept], scale))
    assert y.mean().item() == pytest.approx(1.0, abs=0.003)
    # each of a random word's four 16-bit slices is a fair draw (a bias would show in one slot)
    slots = kept[:1_000_000].float().view(-1, 4).mean(0)
    assert torch.allclose(slots, torch.full((4,), 0.9), atol=0.003)


def test_mask_is_fixed_by_the_seed_and_its_gradient_is_the_scaled_mask():
    x = torch.randn(37, 11, requires_grad=True)
    torch.manual_seed(3)
    a = dropout(x, 0.25)
    torch.manual_seed(3)
    b = dropout(x, 0.25)
    torch.manual_seed(4)
    c = dropout(x, 0.25)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    mask = (a != 0).float()
    assert torch.allclose(x.grad, mask * 65536 / (65536 - round(0.25 * 65536)))


def test_evaluation_and_rate_zero_pass_through_and_bad_rates_are_refused():
    x = torch.randn(5, 3)
    m = Dropout(0.3).eval()
    assert m(x) is x and dropout(x, 0.0) is x
    y = Dropout(0.3).train()(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            Dropout(bad)
        with pytest.raises(ValueError, match="dropout probability"):
            dropout(x, bad)


def test_model_uses_it_and_its_state_dict_keys_are_torchs():
    model = new_model(load_config("default_gatv2_lstm"))
    ours = [m for m in model.modules() if isinstance(m, Dropout)]
    assert ours and not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert {m.p for m in ours} == {0.1}
    # the layers keep their places, so checkpoints saved with torch.nn.Dropout load unchanged
    assert "blocks.0.ffn.3.weight" in model.state_dict() and "head.1.weight" in model.state_dict()
