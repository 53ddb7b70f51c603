"""mmcourse.diagrams: shapes come from a traced forward pass, every diagram is a Figure with a title."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from mmcourse.adapt import Adapter, add_adapters, add_lora
from mmcourse.diagrams import (_BESIDE, _MAP_LAYOUT, STAGES, draw_adapter, draw_contrastive, draw_encoder,
                               draw_encoder_families, draw_fusion, draw_fusion_families, draw_lora,
                               draw_training_stages, format_shape, format_shapes, plot_course_map, render, Box,
                               trace)
from mmcourse.encoders import make_encoder
from mmcourse.fusion import FUSIONS, FusionModel, make_fusion
from mmcourse.glossary import PIPELINE_EDGES
from mmcourse.pretrain import make_contrastive_model

DIMS = {"audio": 6, "image": 8, "text": 5}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig: Figure) -> list[str]:
    """Every text drawn on the figure: box and arrow labels, axes titles, the suptitle."""
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]
    return texts + ([fig._suptitle.get_text()] if fig._suptitle is not None else [])


def _title(fig: Figure) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title()


def _features(batch: int = 3) -> dict[str, torch.Tensor]:
    return {m: torch.randn(batch, d) for m, d in DIMS.items()}


# ----------------------------------------------------------------------------- trace


def test_trace_records_the_children_of_a_sequential_in_call_order():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    t = trace(net, torch.randn(5, 4))
    assert [c.name for c in t.calls] == ["0", "1", "2"]
    assert [c.kind for c in t.calls] == ["Linear", "ReLU", "Linear"]
    assert [c.inputs for c in t.calls] == [(("0", (5, 4)),), (("0", (5, 8)),), (("0", (5, 8)),)]  # argument 0
    assert t.calls[2].outputs == (("", (5, 2)),) and t.outputs == (("", (5, 2)),)
    assert t.batch == 5 and t.calls[0].parameters == 4 * 8 + 8
    assert set(t.calls[0].writes) == set(t.calls[1].reads)          # ReLU reads the Linear's output itself


def test_trace_handles_a_dict_input_and_dotted_names():
    model = FusionModel(make_fusion("sum", DIMS, 7, 3), 3)
    t = trace(model, _features(4))
    assert [p for p, _ in t.inputs] == ["0.audio", "0.image", "0.text"]  # sorted keys of the first argument
    assert format_shapes(t.inputs, t.batch) == "audio: B×6, image: B×8, text: B×5"
    names = [c.name for c in t.calls]
    assert names[:3] == ["encoders.audio", "encoders.image", "encoders.text"]   # a ModuleDict never runs itself
    assert "fusion" in names and names[-1] == "head"
    t = trace(model, _features(4), names=["fusion.project.image", "head"])
    assert [(c.name, c.inputs, c.outputs) for c in t.calls] == [
        ("fusion.project.image", (("0", (4, 8)),), (("", (4, 7)),)), ("head", (("0", (4, 7)),), (("", (4, 3)),))]


def test_trace_records_keyword_tensors_and_restores_the_mode():
    enc = make_encoder("text", "transformer", dim=16, heads=2, layers=1, max_len=12).train()
    enc.encoder.eval()                                          # a mixed state must come back as it was
    t = trace(enc, torch.randint(2, 20, (3, 9)))
    call = t.call("encoder")
    assert format_shapes(call.inputs, t.batch) == "B×9×16, src_key_padding_mask: B×9"
    assert enc.training and not enc.encoder.training and enc.embedding.training


def test_trace_rejects_unknown_and_idle_names():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.raises(ValueError, match=r"names: Sequential has no submodule 'fc'"):
        trace(net, torch.randn(2, 4), names=["fc"])
    model = FusionModel(make_fusion("sum", DIMS, 7, 3), 3)
    with pytest.raises(ValueError, match=r"names: \['encoders'\] did not run"):
        trace(model, _features(), names=["encoders"])
    with pytest.raises(ValueError, match="names must be a non-empty list"):
        trace(net, torch.randn(2, 4), names="0")
    with pytest.raises(ValueError, match=r"no call of 'head'"):
        trace(net, torch.randn(2, 4)).call("head")


def test_format_shape_writes_the_batch_as_b():
    assert format_shape((4, 16, 32), 4) == "B×16×32"
    assert format_shape((4, 4), 4) == "B×4" and format_shape((4, 4), 4, (0, 1)) == "B×B"
    assert format_shape((3, 16), 4) == "3×16" and format_shape(()) == "scalar"
    assert format_shapes((("0", (2, 5)), ("1", (2,))), 2) == "B×5, B"           # tuple positions are not written


def test_render_rejects_arrows_between_unknown_boxes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"arrows name boxes \['c'\]"):
        render(ax, {"a": Box("a", (0, 0))}, [("a", "c", "")], "t")


# ----------------------------------------------------------------------------- encoders


def test_draw_encoder_labels_change_with_the_input_size():
    enc = make_encoder("image", "cnn", dim=16, widths=(4, 8, 8))
    small = _texts(draw_encoder(enc, torch.rand(2, 3, 32, 32)))
    large = _texts(draw_encoder(enc, torch.rand(2, 3, 64, 64)))
    assert "B×3×32×32" in small and "B×8×4×4" in small and "B×3×32×32" not in large
    assert "B×3×64×64" in large and "B×8×8×8" in large                        # S/8 positions, traced


def test_draw_encoder_names_every_part_and_opens_a_lone_sequential():
    fig = draw_encoder(make_encoder("image", "mlp", image_size=8, dim=16), torch.rand(2, 3, 8, 8))
    labels = [t.split("\n")[0] for t in _texts(fig)]
    assert [f"mlp.{i}" for i in range(5)] == [t for t in labels if t.startswith("mlp.")]
    assert "B×192" in _texts(fig) and _title(fig).startswith("MLPImageEncoder")


def test_draw_encoder_families_one_row_per_family():
    examples = {
        "image cnn": (make_encoder("image", "cnn", dim=16, widths=(4, 8, 8)), torch.rand(2, 3, 16, 16)),
        "image mlp": (make_encoder("image", "mlp", image_size=16, dim=16), torch.rand(2, 3, 16, 16)),
        "image vit": (make_encoder("image", "vit", image_size=16, patch_size=8, dim=16, heads=2, layers=1),
                      torch.rand(2, 3, 16, 16)),
        "text mean_pool": (make_encoder("text", "mean_pool", dim=16), torch.randint(2, 20, (2, 7))),
        "text conv": (make_encoder("text", "cnn", dim=16), torch.randint(2, 20, (2, 7))),
        "text transformer": (make_encoder("text", "transformer", dim=16, heads=2, layers=1),
                             torch.randint(2, 20, (2, 7))),
        "audio cnn": (make_encoder("audio", "cnn", dim=16, widths=(4, 4, 4)), torch.randn(2, 512)),
    }
    fig = draw_encoder_families(examples)
    assert isinstance(fig, Figure) and _title(fig)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == list(examples)
    texts = _texts(fig)
    assert "B×5×16 → B×16" in texts                          # the ViT: 1 + (16/8)^2 tokens, then the class token
    assert "B×7×16 → B×16" in texts                          # text: tokens pooled to one vector
    with pytest.raises(ValueError, match=r"examples\['x'\] must be \(encoder, example input\)"):
        draw_encoder_families({"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="examples is empty"):
        draw_encoder_families({})


# ----------------------------------------------------------------------------- fusion


def test_draw_fusion_puts_branches_on_modality_rows_and_traces_widths():
    fusion = make_fusion("tensor", DIMS, 7, 3, proj_dim=2)
    fig = draw_fusion(fusion, _features())
    texts = _texts(fig)
    assert "B×27" in texts                                      # (2 + 1)^3 products, read from the trace
    assert {"project.audio\nLinear, 14 params", "project.text\nLinear, 12 params"} <= set(texts)
    assert _title(fig).startswith("TensorFusion")
    wider = _texts(draw_fusion(make_fusion("tensor", DIMS, 7, 3, proj_dim=3), _features()))
    assert "B×64" in wider and "B×27" not in wider


def test_draw_fusion_families_one_panel_per_method():
    fusions = {name: make_fusion(name, DIMS, 8, 3) for name in FUSIONS}
    fig = draw_fusion_families(fusions, _features())
    titled = [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_title()]
    assert titled == list(FUSIONS) and _title(fig)
    late = next(ax for ax in fig.axes if ax.get_title().startswith("late"))
    assert "B×3" in [t.get_text() for t in late.texts]                       # late fusion outputs C logits
    with pytest.raises(ValueError, match="fusions is empty"):
        draw_fusion_families({}, _features())
    with pytest.raises(ValueError, match="features must be a non-empty dict"):
        draw_fusion(fusions["sum"], {})


# ----------------------------------------------------------------------------- contrastive, stages, map


def test_draw_contrastive_traces_both_towers_and_draws_the_b_by_b_matrix():
    model = make_contrastive_model(embed_dim=8, audio=None, dim=16)
    inputs = {"image": torch.rand(5, 3, 16, 16), "text": torch.randint(2, 20, (5, 6))}
    model.train()
    fig = draw_contrastive(model, inputs)
    assert model.training                                                     # the mode is restored
    texts = _texts(fig)
    assert "B×3×16×16" in texts and "B×6" in texts and "B×8" in texts and "B×B" in texts
    heatmap = fig.axes[1]
    assert heatmap.images[0].get_array().shape == (5, 5)
    assert len(heatmap.collections[0].get_offsets()) == 5                     # the five positives marked
    assert "B = 5" in _title(fig)
    with pytest.raises(ValueError, match=r"pair \('text', 'image'\) is not one of the model's pairs"):
        draw_contrastive(model, inputs, pair=("text", "image"))


def test_draw_contrastive_marks_same_class_pairs_off_the_diagonal():
    model = make_contrastive_model(embed_dim=8, audio=None, dim=16)
    inputs = {"image": torch.rand(4, 3, 16, 16), "text": torch.randint(2, 20, (4, 6))}
    fig = draw_contrastive(model, inputs, labels=torch.tensor([0, 1, 0, 0]))
    same = fig.axes[1].collections[1].get_offsets()
    assert sorted(map(tuple, same.tolist())) == [(0, 2), (0, 3), (2, 0), (2, 3), (3, 0), (3, 2)]
    with pytest.raises(ValueError, match=r"labels must be \(B,\) = \(4,\)"):
        draw_contrastive(model, inputs, labels=torch.zeros(3))


def test_draw_training_stages_in_order_with_chapters():
    fig = draw_training_stages()
    heads = [t.split("\n")[0] for t in _texts(fig) if t.startswith("stage")]
    assert heads == ["stage 1: pretraining (ch. 06)", "stage 2: joint training (ch. 07)",
                     "stage 3: task adaptation (ch. 08)"]
    assert _title(fig) and [s[1] for s in STAGES] == ["06", "07", "08"]


def test_plot_course_map_draws_the_pipeline_and_the_three_stages():
    fig = plot_course_map()
    ax = fig.axes[0]
    assert ax.get_title()
    names = [t.get_text().split("\n")[0] for t in ax.texts if t.get_text()]
    beside = {b[0] for b in _BESIDE}
    assert {"token tagging, MiniLM", "applications (§6)", "efficiency, scale-out (§8)", "third-party data: easy-vqa",
            "frontiers (§6.4, §8)", "hyper-parameter search"} == beside
    assert set(_MAP_LAYOUT) | {s[0] for s in STAGES} | beside == set(names)
    assert all(b[3] in _MAP_LAYOUT for b in _BESIDE)                          # each grows from a pipeline step
    arrows = [t for t in ax.texts if not t.get_text()]
    assert len(arrows) == len(PIPELINE_EDGES) + len(_BESIDE) + len(STAGES) - 1   # + one per box beside + stages 1 -> 2 -> 3
    stage_x = [t.get_position()[0] for t in ax.texts if t.get_text().startswith("stage")]
    assert stage_x == sorted(stage_x)                                          # left to right, stage 1 first


# ----------------------------------------------------------------------------- adaptation


def test_draw_lora_shapes_follow_rank_and_width():
    net = nn.Sequential(nn.Linear(12, 6))
    add_lora(net, rank=3, alpha=6)
    texts = _texts(draw_lora(net[0], torch.randn(4, 12)))
    assert {"B×12", "B×3", "B×6"} <= set(texts)
    assert any("r×d_in = 3×12" in t for t in texts) and any("d_out×r = 6×3, scale 2" in t for t in texts)
    net = nn.Sequential(nn.Linear(12, 6))
    add_lora(net, rank=2)
    fig = draw_lora(net[0], torch.randn(4, 12))
    assert "B×2" in _texts(fig) and "rank r = 2" in _title(fig)
    with pytest.raises(ValueError, match="layer must be an nn.Linear with a LoRA update"):
        draw_lora(nn.Linear(3, 2), torch.randn(1, 3))


def test_draw_adapter_traces_the_bottleneck_and_the_wrapped_module():
    texts = _texts(draw_adapter(Adapter(10, 4), torch.randn(2, 7, 10)))
    assert {"B×7×10", "B×7×4", "residual B×7×10"} <= set(texts)
    net = nn.Sequential(nn.Linear(5, 10))
    net.requires_grad_(False)
    add_adapters(net, ["0"], bottleneck=3)
    fig = draw_adapter(net[0], torch.randn(2, 5))
    texts = _texts(fig)
    assert "inner\nLinear, 60 params" in texts and "B×3" in texts
    assert "10 → 3 → 10" in _title(fig)
    inner = next(t for t in fig.axes[0].texts if t.get_text().startswith("inner"))
    assert inner.get_bbox_patch().get_facecolor() != next(
        t for t in fig.axes[0].texts if t.get_text().startswith("adapter.down")).get_bbox_patch().get_facecolor()
    with pytest.raises(ValueError, match="Linear has no submodule with 'down' and 'up' children"):
        draw_adapter(nn.Linear(3, 3), torch.randn(1, 3))
