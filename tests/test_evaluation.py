"""mmcourse.evaluation: run_batches equals a loop written here, in order, for tensor, tuple and dict outputs;
eval mode during the pass and every module's mode restored after it; no gradients; batch 1; clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcourse.data import make_loader
from mmcourse.evaluation import run_batches
from mmcourse.fusion import FeatureDataset

N, D, C = 23, 4, 3      # 23 rows: batches of 5 leave a last batch of 3


def _data(n: int = N) -> FeatureDataset:
    g = torch.Generator().manual_seed(0)
    return FeatureDataset({"x": torch.randn(n, D, generator=g)}, torch.arange(n) % C)


def _model() -> nn.Sequential:
    """BatchNorm and dropout, so that a pass in training mode gives other numbers than one in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, C))
    model[1].running_mean.uniform_(-1, 1)                      # non-trivial statistics for eval mode
    return model


def _logits(model, batch):
    return model(batch[0]["x"])


def _loop(model, data, batch_size):
    """The reference: eval mode, no gradients, the same batches one after another."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(data.features["x"][i:i + batch_size]) for i in range(0, len(data), batch_size)])


@pytest.mark.parametrize("batch_size", [1, 5, 512])
def test_tensor_outputs_equal_a_loop_in_order(batch_size):
    model, data = _model(), _data()
    out = run_batches(model, _logits, data, "cpu", batch_size)
    assert out.shape == (N, C) and out.dtype == torch.float32 and out.device == torch.device("cpu")
    torch.testing.assert_close(out, _loop(_model(), data, batch_size), rtol=0, atol=0)


def test_tuple_and_dict_outputs_are_concatenated_field_by_field():
    model, data = _model(), _data()
    reference = _loop(_model(), data, 5)
    pred, labels = run_batches(model, lambda m, b: (_logits(m, b).argmax(1), b[1]), data, "cpu", 5)
    assert torch.equal(pred, reference.argmax(1)) and torch.equal(labels, data.labels)
    out = run_batches(model, lambda m, b: {"logits": _logits(m, b), "x": b[0]["x"]}, data, "cpu", 5)
    assert list(out) == ["logits", "x"]
    assert torch.equal(out["logits"], reference) and torch.equal(out["x"], data.features["x"])


def test_a_loader_or_any_iterable_of_batches_is_used_as_it_is():
    model, data = _model(), _data()
    from_loader = run_batches(model, _logits, make_loader(data, 7), "cpu", batch_size=2)     # batch_size unused
    batches = [data.__getitems__(list(range(i, min(i + 7, N)))) for i in range(0, N, 7)]
    assert torch.equal(from_loader, run_batches(model, _logits, batches, "cpu"))
    assert torch.equal(from_loader, _loop(_model(), data, 7))


def test_the_pass_runs_in_eval_mode_and_every_module_mode_is_restored():
    model, modes = _model(), []
    model[1].eval()                                   # a mixed state, e.g. frozen norm statistics while training
    run_batches(model, lambda m, b: modes.append([x.training for x in m]) or _logits(m, b), _data(), "cpu", 10)
    assert modes == [[False] * 4] * 3
    assert [x.training for x in model] == [True, False, True, True] and model.training
    model.eval()
    run_batches(model, _logits, _data(), "cpu")
    assert not any(x.training for x in model.modules())


def test_the_mode_is_restored_when_fn_fails():
    model = _model()

    def fails(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_batches(model, fails, _data(), "cpu")
    assert all(x.training for x in model.modules())


def test_no_gradient_is_recorded():
    model, grad_enabled = _model(), []
    out = run_batches(model, lambda m, b: grad_enabled.append(torch.is_grad_enabled()) or _logits(m, b), _data(),
                      "cpu", 10)
    assert grad_enabled == [False] * 3 and not out.requires_grad and out.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()                    # switched back on after the pass


def test_half_precision_floats_come_back_as_float32_and_other_dtypes_as_they_are():
    out = run_batches(_model(), lambda m, b: (b[0]["x"].bfloat16(), b[0]["x"].double(), b[1], b[1] > 0), _data(),
                      "cpu", 5)
    assert [t.dtype for t in out] == [torch.float32, torch.float64, torch.int64, torch.bool]
    torch.testing.assert_close(out[0], _data().features["x"].bfloat16().float(), rtol=0, atol=0)


def test_an_empty_dataset_raises():
    with pytest.raises(ValueError, match=r"data yielded no batches \(an empty FeatureDataset\): nothing to evaluate"):
        run_batches(_model(), _logits, FeatureDataset({"x": torch.zeros(0, D)}, torch.zeros(0, dtype=torch.long)),
                    "cpu")


def test_outputs_without_a_batch_dimension_or_of_another_type_raise():
    with pytest.raises(ValueError, match=r"fn must return tensors with a batch dimension \(B, ...\), got a 0-d"):
        run_batches(_model(), lambda m, b: _logits(m, b).sum(), _data(), "cpu")
    with pytest.raises(TypeError, match="fn must return a tensor, or a tuple or dict of tensors, got list"):
        run_batches(_model(), lambda m, b: [_logits(m, b)], _data(), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_outputs_come_back_to_the_cpu_as_float32_close_to_the_cpu_numbers():
    data = _data(2000)
    on_cpu = run_batches(_model(), _logits, data, "cpu", 256)
    on_gpu = run_batches(_model().cuda(), _logits, data, "cuda", 256)           # bf16 autocast, as in training
    assert on_gpu.device == torch.device("cpu") and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0.05, atol=0.05)            # bf16 keeps 8 bits of mantissa
    assert not torch.equal(on_gpu, on_cpu)                                       # autocast did run in bf16
