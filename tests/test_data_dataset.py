"""mmcourse.data.dataset: tensors and shapes, batching, determinism, splits, moving batches (utils.to_device)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mmcourse.data.dataset import (BatchedDataset, MultimodalDataset, Split, collate, gather_batch, generate,
                                   make_loader, make_splits, split_dataset, split_indices, subset, take)
from mmcourse.utils import to_device  # the data's batches are moved by the device policy module
from mmcourse.data.text import PAD_ID
from mmcourse.data.world import ATTRIBUTES, World

S, T = 32, 1024  # default image side and audio samples


def _check_batch(inputs, label, b):
    assert list(inputs) == ["audio", "image", "text"]  # sorted keys
    assert inputs["audio"].shape == (b, T) and inputs["audio"].dtype == torch.float32
    assert inputs["image"].shape == (b, 3, S, S) and inputs["image"].dtype == torch.float32
    assert 0.0 <= inputs["image"].min() and inputs["image"].max() <= 1.0
    assert inputs["text"].dim() == 2 and inputs["text"].shape[0] == b and inputs["text"].dtype == torch.int64
    assert label.shape == (b,) and label.dtype == torch.int64


def test_dataset_arrays_match_the_scenes(small_dataset):
    n = len(small_dataset)
    assert n == 2000
    assert small_dataset.images.shape == (n, 3, S, S) and small_dataset.images.dtype == torch.uint8
    assert small_dataset.audio.shape == (n, T)
    assert small_dataset.text.shape == small_dataset.tags.shape
    np.testing.assert_array_equal(small_dataset.labels.numpy(), small_dataset.scenes.label)
    assert len(small_dataset.class_names) == 10


@pytest.mark.parametrize("indices", [[0], [5, 1, 1999], list(range(64))])
def test_getitems_shapes(small_dataset, indices):
    inputs, label = small_dataset.__getitems__(indices)
    _check_batch(inputs, label, len(indices))
    # Text is trimmed to the longest caption of the batch: the last column holds a real token.
    assert (inputs["text"][:, -1] != PAD_ID).any()
    np.testing.assert_array_equal(label.numpy(), small_dataset.scenes.label[indices])
    torch.testing.assert_close(inputs["image"], small_dataset.images[indices].float() / 255)


def test_getitem_is_one_sample_without_batch_dimension(small_dataset):
    inputs, label = small_dataset[3]
    assert inputs["image"].shape == (3, S, S) and inputs["audio"].shape == (T,)
    assert inputs["text"].dim() == 1 and (inputs["text"] != PAD_ID).all()
    assert label.shape == () and int(label) == small_dataset.scenes.label[3]
    torch.testing.assert_close(small_dataset[-1][0]["audio"], small_dataset.audio[-1])


@pytest.mark.parametrize("i", [2000, -2001])
def test_getitem_out_of_range_raises(small_dataset, i):
    with pytest.raises(IndexError, match=f"index {i} out of range for dataset of size 2000"):
        small_dataset[i]


def test_collate_of_single_samples_equals_the_batched_path(small_dataset):
    indices = [7, 0, 42, 99]
    stacked = collate([small_dataset[i] for i in indices])
    batched = small_dataset.__getitems__(indices)
    assert list(stacked[0]) == list(batched[0])
    for k in batched[0]:
        torch.testing.assert_close(stacked[0][k], batched[0][k])
    torch.testing.assert_close(stacked[1], batched[1])


@pytest.mark.parametrize("batch_size", [1, 64])
def test_make_loader_batches(small_dataset, batch_size):
    loader = make_loader(small_dataset, batch_size=batch_size)
    batches = iter(loader)
    inputs, label = next(batches)
    _check_batch(inputs, label, batch_size)
    if batch_size == 64:
        sizes = [len(lab) for _, lab in loader]
        assert sizes == [64] * 31 + [2000 - 31 * 64]  # the last batch holds the rest


def test_make_loader_over_a_subset(small_dataset):
    subset = torch.utils.data.Subset(small_dataset, range(10, 20))
    inputs, label = next(iter(make_loader(subset, batch_size=4)))
    _check_batch(inputs, label, 4)
    np.testing.assert_array_equal(label.numpy(), small_dataset.scenes.label[10:14])


def test_shuffled_loader_is_seeded_and_visits_every_sample_once(small_dataset):
    def order(seed):
        return torch.cat([lab for _, lab in make_loader(small_dataset, 256, shuffle=True, seed=seed)])

    a, b, c = order(0), order(0), order(1)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert sorted(a.tolist()) == sorted(small_dataset.labels.tolist())


def test_make_loader_rejects_bad_batch_size(small_dataset):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_loader(small_dataset, batch_size=0)


def _assert_same_data(a: MultimodalDataset, b: MultimodalDataset):
    for name in ("images", "text", "tags", "audio", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for k in ATTRIBUTES:
        np.testing.assert_array_equal(a.scenes.attrs[k], b.scenes.attrs[k])
    for k in a.scenes.events:
        np.testing.assert_array_equal(a.scenes.events[k], b.scenes.events[k])


def test_same_seed_same_data_other_seed_other_data(world):
    a, b, c = generate(world, 300, seed=5), generate(world, 300, seed=5), generate(world, 300, seed=6)
    _assert_same_data(a, b)
    for name in ("images", "audio", "labels"):
        assert not torch.equal(getattr(a, name), getattr(c, name)), name


def test_image_size_changes_images_only(world):
    """Child random streams: rendering bigger images leaves scenes, captions and audio untouched."""
    small = generate(world, 300, seed=5)
    big = generate(World(replace(world.config, image_size=48)), 300, seed=5)
    assert big.images.shape == (300, 3, 48, 48)
    for name in ("text", "tags", "audio", "labels"):
        assert torch.equal(getattr(small, name), getattr(big, name)), name


def test_generate_across_render_chunks_is_deterministic(world):
    """More scenes than one render chunk (1024): the chunk seams change nothing run to run."""
    a, b = generate(world, 1500, seed=9), generate(world, 1500, seed=9)
    _assert_same_data(a, b)


def test_generate_one_and_zero_scenes(world):
    one = generate(world, 1, seed=0)
    inputs, label = one.__getitems__([0])
    _check_batch(inputs, label, 1)
    empty = generate(world, 0, seed=0)
    assert len(empty) == 0 and empty.images.shape == (0, 3, S, S)


def test_dataset_rejects_mismatched_rows(small_dataset):
    scenes = small_dataset.scenes[:4]
    with pytest.raises(ValueError, match="images has 3 rows, expected 4 \\(one per scene\\)"):
        MultimodalDataset(scenes, small_dataset.images[:3].numpy(), small_dataset.text[:4].numpy(),
                          small_dataset.tags[:4].numpy(), small_dataset.audio[:4].numpy(),
                          small_dataset.class_names)


def test_make_splits_sizes_and_independence(world):
    splits = make_splits(world, Split(train=50, dev=20, test=30), seed=0)
    assert list(splits) == ["train", "dev", "test"]
    assert [len(d) for d in splits.values()] == [50, 20, 30]
    assert not torch.equal(splits["train"].audio[:20], splits["dev"].audio)
    again = make_splits(world, Split(train=50, dev=20, test=30), seed=0)
    for name in splits:
        _assert_same_data(splits[name], again[name])


def test_to_device_moves_nested_containers(small_dataset):
    batch = small_dataset.__getitems__([0, 1])
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, tuple) and list(moved[0]) == ["audio", "image", "text"]
    nested = to_device({"a": [torch.ones(2), (torch.zeros(1),)]}, "cpu")
    assert isinstance(nested["a"], list) and isinstance(nested["a"][1], tuple)
    assert torch.equal(nested["a"][0], torch.ones(2))


def test_to_device_applies_a_transform_to_every_moved_tensor():
    nested = to_device({"a": [torch.ones(2), (torch.zeros(1),)]}, "cpu", transform=lambda t: t + 1)
    assert torch.equal(nested["a"][0], torch.full((2,), 2.0)) and torch.equal(nested["a"][1][0], torch.ones(1))


@pytest.mark.parametrize("obj, name", [("text", "str"), (np.zeros(2), "ndarray"), ({"x": 3}, "int")])
def test_to_device_rejects_unsupported_types(obj, name):
    with pytest.raises(TypeError, match=f"cannot move an object of type {name} to a device"):
        to_device(obj, "cpu")


def test_subset_by_indices_mask_and_slice(small_dataset):
    rows = np.array([5, 0, 3])
    part = subset(small_dataset, rows)
    assert len(part) == 3
    assert torch.equal(part.images, small_dataset.images[rows])
    assert torch.equal(part.labels, small_dataset.labels[rows])
    assert np.array_equal(part.scenes.attrs["shape"], small_dataset.scenes.attrs["shape"][rows])
    mask = np.zeros(len(small_dataset), bool)
    mask[[1, 2]] = True
    assert torch.equal(subset(small_dataset, mask).audio, small_dataset.audio[1:3])
    assert torch.equal(subset(small_dataset, slice(2, 4)).text, small_dataset.text[2:4])
    with pytest.raises(IndexError, match="outside \\[0, "):
        subset(small_dataset, [len(small_dataset)])


def test_make_loader_can_pin_memory(small_dataset):
    assert make_loader(small_dataset, 4, pin_memory=True).pin_memory
    assert not make_loader(small_dataset, 4).pin_memory


def test_gather_batch_scales_uint8_trims_text_and_sorts_keys():
    tensors = {"text": torch.tensor([[4, 5, 0, 0], [6, 0, 0, 0], [7, 8, 9, 0]]),
               "image": torch.tensor([[0], [255], [51]], dtype=torch.uint8),
               "audio": torch.tensor([[0.5], [2.0], [-1.0]])}
    batch = gather_batch(tensors, [1, 0])
    assert list(batch) == ["audio", "image", "text"]
    assert batch["text"].tolist() == [[6, 0], [4, 5]]                     # trimmed to the longest row
    assert batch["image"].dtype == torch.float32 and batch["image"].tolist() == [[1.0], [0.0]]
    assert batch["audio"].tolist() == [[2.0], [0.5]]                       # floats untouched
    assert gather_batch({"text": torch.rand(3, 4)}, [0])["text"].shape == (1, 4)  # float "text" features: no trim


def test_subset_take_and_split_on_a_feature_dataset():
    from mmcourse.fusion import FeatureDataset
    feats = FeatureDataset({"text": torch.arange(20.0).view(10, 2), "image": torch.arange(10.0).view(10, 1)},
                           torch.arange(10))
    part = subset(feats, [7, 2])
    assert type(part) is FeatureDataset and part.labels.tolist() == [7, 2]
    assert part.features["image"].view(-1).tolist() == [7.0, 2.0] and part.features["text"].shape == (2, 2)
    assert take(feats, 3).labels.tolist() == [0, 1, 2] and len(feats) == 10            # the original is unchanged
    inputs, label = part[1]
    assert inputs["image"].tolist() == [2.0] and int(label) == 2


class _Rows(BatchedDataset):
    """A dataset whose class_names tuple happens to have one entry per row: it must not be indexed."""

    def __init__(self, n):
        self.tensors = {"image": torch.zeros(n, 1, dtype=torch.uint8)}
        self.labels = torch.arange(n)
        self.class_names = tuple(f"c{i}" for i in range(n))


def test_subset_indexes_per_sample_tensors_only():
    part = subset(_Rows(3), np.array([True, False, True]))
    assert part.labels.tolist() == [0, 2] and part.tensors["image"].shape == (2, 1)
    assert part.class_names == ("c0", "c1", "c2")
    with pytest.raises(IndexError, match=r"a boolean mask must have shape \(3,\), got \(2,\)"):
        subset(_Rows(3), np.array([True, False]))
    with pytest.raises(TypeError, match="dataset must be a BatchedDataset, got list"):
        subset([1, 2, 3], [0])


def test_split_dataset_is_seeded_disjoint_and_complete(small_dataset):
    parts = split_dataset(small_dataset, seed=1)
    assert [len(p) for p in parts.values()] == [1600, 200, 200] and list(parts) == ["train", "dev", "test"]
    rows = split_indices(len(small_dataset), seed=1)
    assert np.array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(2000))
    assert torch.equal(parts["dev"].labels, small_dataset.labels[torch.from_numpy(rows["dev"])])
    assert np.array_equal(parts["test"].scenes.label, small_dataset.scenes.label[rows["test"]])
    assert not np.array_equal(split_indices(2000, seed=2)["test"], rows["test"])


@pytest.mark.parametrize("fractions, message", [
    ((0.8, 0.2), "three numbers >= 0 summing to 1"),
    ((0.8, 0.3, -0.1), "three numbers >= 0 summing to 1"),
    ((0.5, 0.25, 0.2), "three numbers >= 0 summing to 1"),
])
def test_split_indices_rejects_bad_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        split_indices(10, fractions)


def test_split_indices_refuses_an_empty_split():
    with pytest.raises(ValueError, match=r"3 samples are too few for fractions \(0\.8, 0\.1, 0\.1\): .*\['dev'\]"):
        split_indices(3)


def test_subset_of_a_wrapping_dataset_keeps_its_parts_aligned(world, small_dataset):
    from mmcourse.joint import AnnotatedDataset
    annotated = AnnotatedDataset(take(small_dataset, 50), world)
    part = subset(annotated, [7, 3])
    assert type(part) is AnnotatedDataset and len(part) == 2 and len(part.dataset) == 2
    np.testing.assert_array_equal(part.scenes.label, small_dataset.scenes.label[[7, 3]])
    inputs, labels, annotations = part.__getitems__([1, 0])
    expected, _, expected_annotations = annotated.__getitems__([3, 7])
    assert list(inputs) == sorted(expected) and torch.equal(labels, small_dataset.labels[[3, 7]])
    assert all(torch.equal(inputs[k], expected[k]) for k in ("audio", "image", "text"))
    assert torch.equal(annotations, expected_annotations)
    one_inputs, one_label, one_annotation = part[1]           # a single item keeps the annotations too
    assert torch.equal(one_annotation, annotations[0]) and one_label == labels[0]
