"""The three-stage pipeline: configuration, interruption and exact resume, costs, and the input spec of its models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcourse.config import pipeline_config
from mmcourse.inference import InputSpec, predict
from mmcourse.pipeline import (STAGES, PipelineInterrupted, StageStats, _samples_between, pipeline_data, run_pipeline,
                               stage_checkpoint, stats_table)
from mmcourse.training import read_checkpoint
from mmcourse.utils import build_dir

# Four optimizer steps per stage, 16x16 images: the whole pipeline in seconds.
TINY = dict(image_size=16, dev_size=64, test_size=64, evals=2, checkpoint_every=3,
            pretrain=dict(train_size=128, epochs=1, batch_size=32, warmup_steps=1, eval_size=64),
            joint=dict(train_size=128, epochs=1, batch_size=32, eval_size=64),
            adapt=dict(train_size=160, dev_size=64, test_size=64, per_class=2, steps=4, batch_size=8, eval_size=64))


@pytest.fixture(scope="module")
def tiny():
    config = pipeline_config("smoke", seed=0, **TINY)
    return config, pipeline_data(config)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted run of the tiny pipeline."""
    config, data = tiny
    with pytest.MonkeyPatch.context() as mp:     # module scope: set up before conftest's per-test $MMCOURSE_BUILD
        mp.setenv("MMCOURSE_BUILD", str(tmp_path_factory.getbasetemp() / "build"))
        return run_pipeline(config, "cpu", data=data, root=tmp_path_factory.mktemp("reference"), progress=False)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- configuration

def test_every_profile_has_a_config_and_full_is_sized_for_a_gpu():
    configs = {p: pipeline_config(p) for p in ("smoke", "default", "full")}
    assert configs["full"].image_size == 64 and configs["default"].image_size == 32
    pairs = [configs[p].pretrain.train_size for p in ("smoke", "default", "full")]
    assert pairs == sorted(pairs) and len(set(pairs)) == 3
    assert pipeline_config("default", seed=3).name == "default_seed3"
    assert any(row[0] == "3 adapt" for row in configs["smoke"].rows())
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        pipeline_config("huge")


def test_samples_are_counted_with_the_short_last_batch():
    # 10 samples in batches of 4: steps of 4, 4, 2 per epoch
    assert _samples_between(0, 3, 3, 10, 4) == 10
    assert _samples_between(2, 5, 3, 10, 4) == 2 + 4 + 4
    assert _samples_between(0, 0, 3, 10, 4) == 0


# ----------------------------------------------------------------------------- the run, interrupted and resumed

def test_an_uninterrupted_run_trains_every_stage_and_measures_it(reference):
    assert list(reference.models) == list(STAGES) and list(reference.stats) == list(STAGES)
    for stage, stats in reference.stats.items():
        assert stats.status == "trained" and stats.sessions == 1 and stats.steps == 4, stats
        assert stats.samples > 0 and stats.samples_per_s > 0 and stats.wall_seconds >= stats.train_seconds
        assert stats.precision == "float32" and "not compiled on cpu" in stats.compile
        assert stats.memory_kind.startswith("process peak RSS") and stats.peak_memory_mib > 0
        assert stage_checkpoint(reference.root, stage).is_file()
    assert reference.stats["joint"].samples == 128 and reference.stats["adapt"].samples == 4 * 8
    assert 0 <= reference.metrics["adapt test accuracy"] <= 1 and len(reference.test_pred) == 64
    table = stats_table(reference.stats)
    assert table.count("\n| ") == 3 and "samples/s" in table and "process peak RSS" in table


def test_the_pipeline_resumes_mid_stage_to_the_same_weights_and_metrics(tiny, reference, tmp_path):
    config, data = tiny
    with pytest.raises(PipelineInterrupted, match=r"stage 2 \(joint\) stopped after step 2 of 4") as info:
        run_pipeline(config, "cpu", data=data, root=tmp_path, stop_after=("joint", 2), progress=False)
    assert info.value.stage == "joint" and info.value.step == 2
    saved = read_checkpoint(stage_checkpoint(tmp_path, "joint"))
    assert saved["run"]["step"] == 2 and not saved["run"]["finished"]
    assert not stage_checkpoint(tmp_path, "adapt").exists()

    resumed = run_pipeline(config, "cpu", data=data, root=tmp_path, progress=False)
    assert {s: st.status for s, st in resumed.stats.items()} == {"pretrain": "loaded", "joint": "resumed",
                                                                 "adapt": "trained"}
    assert resumed.stats["joint"].sessions == 2 and resumed.stats["joint"].samples == 128
    for stage in STAGES:
        assert _same_state(resumed.models[stage], reference.models[stage]), stage
        assert resumed.histories[stage].metrics == reference.histories[stage].metrics, stage
        assert resumed.histories[stage].train_loss == reference.histories[stage].train_loss, stage
    assert resumed.metrics == reference.metrics
    assert torch.equal(resumed.test_pred, reference.test_pred)

    again = run_pipeline(config, "cpu", data=data, root=tmp_path, progress=False)     # everything finished: loads
    assert all(st.status == "loaded" for st in again.stats.values()) and again.metrics == reference.metrics


def test_a_fresh_start_deletes_the_old_checkpoints_and_other_configs_are_refused(tiny, tmp_path):
    config, data = tiny
    with pytest.raises(PipelineInterrupted):
        run_pipeline(config, "cpu", data=data, root=tmp_path, stop_after=("pretrain", 1), progress=False)
    assert stage_checkpoint(tmp_path, "pretrain").is_file()
    other = pipeline_config("smoke", **{**TINY, "joint": {**TINY["joint"], "lr": 5e-4}})
    with pytest.raises(ValueError, match="holds a run of another configuration"):
        run_pipeline(other, "cpu", data=data, root=tmp_path, until="pretrain", progress=False)
    result = run_pipeline(config, "cpu", data=data, root=tmp_path, resume=False, until="pretrain", progress=False)
    assert result.stats["pretrain"].sessions == 1 and result.stats["pretrain"].status == "trained"
    assert list(result.models) == ["pretrain"]
    assert json.loads((tmp_path / "config.json").read_text())["joint"]["lr"] == config.joint.lr


def test_a_failing_compiler_falls_back_to_eager_and_says_so(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    config, data = tiny
    config = pipeline_config("smoke", **{**TINY, "compile": "on"})
    result = run_pipeline(config, "cpu", data=data, root=tmp_path, until="pretrain", progress=False)
    assert result.stats["pretrain"].compile == "eager, torch.compile failed (RuntimeError: no compiler here)"
    assert result.stats["pretrain"].steps == 4
    logs = build_dir("tensorboard") / f"pipeline_{tmp_path.name}"                  # build/ is $MMCOURSE_BUILD here
    assert [p.name for p in logs.iterdir()] == ["stage1_pretrain"]
    assert list((logs / "stage1_pretrain").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("stop_after, message", [
    (("finetune", 2), r"stage must be one of \('pretrain', 'joint', 'adapt'\), got 'finetune'"),
    (("joint", 4), r"stop_after step for 'joint' must be in \(0, 4\)"),
    (("joint", 0), r"stop_after step for 'joint' must be in \(0, 4\)"),
    ("joint", r"stop_after must be a \(stage, step\) tuple"),
    (("adapt", 2), r"stop_after names stage 'adapt', which comes after until='joint'"),
    (None, r"stage must be one of .*, got 'pretraining'"),
])
def test_bad_stops_are_rejected(tiny, tmp_path, stop_after, message):
    config, data = tiny
    until = "joint" if stop_after is not None else "pretraining"
    with pytest.raises(ValueError, match=message):
        run_pipeline(config, "cpu", data=data, root=tmp_path, stop_after=stop_after, until=until, progress=False)


# ----------------------------------------------------------------------------- what inference needs

def test_pipeline_models_carry_the_input_spec_that_predict_reads(reference, tiny):
    """predict() itself is tested in test_inference.py; here: the pipeline gives its models what it needs."""
    test = tiny[1]["downstream"]["test"]
    spec = reference.models["adapt"].input_spec
    assert spec == InputSpec(test.class_names, 16, test.audio.shape[1], 8000)
    assert reference.models["joint"].input_spec.class_names == tiny[1]["main"]["test"].class_names
    out = predict(reference.models["adapt"], audio=test.audio[:3].numpy(), images=test.images[:3])
    assert out.probs.shape == (3, len(test.class_names)) and out.class_names == test.class_names


def test_stage_stats_throughput_is_samples_per_training_second():
    assert StageStats("joint", samples=300, train_seconds=2.0).samples_per_s == 150
    assert np.isnan(StageStats("joint").samples_per_s)
