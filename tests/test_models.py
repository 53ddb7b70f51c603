"""mmcourse.models: masked_mean against a loop, ReferenceModel shapes, gradients,
parameter count and the errors it raises."""
from __future__ import annotations

import re

import pytest
import torch

from mmcourse.data.text import PAD_ID, WORLD_VOCAB
from mmcourse.models import ReferenceConfig, ReferenceModel, count_parameters, masked_mean


def test_masked_mean_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    expected = torch.zeros(3, 4)
    for b in range(3):
        real = [x[b, t] for t in range(5) if mask[b, t]]
        if real:  # a row without real tokens stays zero
            expected[b] = sum(real) / len(real)
    torch.testing.assert_close(masked_mean(x, mask), expected)


def test_masked_mean_ignores_what_sits_under_the_padding():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    noisy = x.clone()
    noisy[~mask] = 1e6
    torch.testing.assert_close(masked_mean(noisy, mask), masked_mean(x, mask))


def test_masked_mean_gradcheck_float64():
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda t: masked_mean(t, mask), (x,))


@pytest.mark.parametrize("x_shape, mask_shape", [((2, 3, 4), (2, 4)), ((2, 3), (2, 3)), ((2, 3, 4), (3, 3))])
def test_masked_mean_rejects_mismatched_shapes(x_shape, mask_shape):
    message = f"expected x (B, L, E) and mask (B, L), got {x_shape} and {mask_shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        masked_mean(torch.zeros(x_shape), torch.ones(mask_shape, dtype=torch.bool))


def _model(**kwargs) -> ReferenceModel:
    torch.manual_seed(0)
    return ReferenceModel(ReferenceConfig(vocab_size=len(WORLD_VOCAB), **kwargs))


def _inputs(b: int, s: int = 32, length: int = 7):
    g = torch.Generator().manual_seed(1)
    text = torch.randint(2, len(WORLD_VOCAB), (b, length), generator=g)
    text[:, length - 2:] = PAD_ID
    return {"image": torch.rand(b, 3, s, s, generator=g), "text": text}


@pytest.mark.parametrize("b", [1, 4])
def test_forward_shape(b):
    logits = _model()(_inputs(b))
    assert logits.shape == (b, 10) and logits.dtype == torch.float32


def test_forward_on_a_generated_batch(small_dataset):
    inputs, _ = small_dataset.__getitems__([0])  # batch of one, with the audio key the model ignores
    assert _model()(inputs).shape == (1, 10)


def test_other_sizes_and_class_counts():
    model = _model(image_size=16, num_classes=3, embed_dim=8, hidden_dim=12)
    assert model(_inputs(2, s=16)).shape == (2, 3)


def test_padding_does_not_change_the_output():
    model = _model().eval()
    inputs = _inputs(2)
    longer = dict(inputs, text=torch.cat([inputs["text"], torch.zeros(2, 5, dtype=torch.long)], 1))
    torch.testing.assert_close(model(longer), model(inputs))


def test_gradients_reach_every_parameter():
    model = _model()
    loss = torch.nn.functional.cross_entropy(model(_inputs(4)), torch.tensor([0, 3, 5, 9]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.embedding.weight.grad[PAD_ID].abs().sum() == 0  # padding_idx: the pad row never learns


def test_parameter_count_follows_the_architecture():
    v, e, h, s, c = len(WORLD_VOCAB), 128, 128, 32, 10
    expected = (v * e                                      # embedding
                + (e * h + h) + (h * h + h)                # text MLP
                + (3 * s * s * h + h) + (h * h + h)        # image MLP on the flattened image
                + (2 * h * h + h)                          # fusion of the concatenation
                + (h * c + c))                             # classifier
    model = _model()
    assert sum(p.numel() for p in model.parameters()) == expected
    assert count_parameters(model) == expected


def test_count_parameters_of_trainable_only():
    model = _model(embed_dim=8, hidden_dim=12)
    model.embedding.weight.requires_grad_(False)  # a frozen embedding (as when fine-tuning)
    frozen = len(WORLD_VOCAB) * 8
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 32, 32), (2, 1, 32, 32)])
def test_wrong_image_shape_says_expected_and_got(shape):
    inputs = _inputs(1)
    inputs["image"] = torch.zeros(shape)
    with pytest.raises(ValueError, match=re.escape(f"image must be (B, 3, 32, 32), got {shape}")):
        _model()(inputs)
