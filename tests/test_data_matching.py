"""mmcourse.data.matching: which caption fits which image, checked against loops over the scenes."""
from __future__ import annotations

import pytest
import torch

from mmcourse.data import ATTRIBUTES
from mmcourse.data.matching import annotate, caption_fits, caption_fits_image, match_evidence


def test_caption_fits_image_against_a_loop(world, small_dataset):
    scenes = small_dataset.scenes[:40]
    fits = caption_fits_image(world, scenes)
    named, shown = world.visible(scenes, "text"), world.visible(scenes, "image")
    for i in range(40):
        for j in range(40):
            ok = all(scenes.attrs[a][i] == scenes.attrs[a][j] for a in named if a in shown and named[a][j])
            assert fits[i, j] == ok, (i, j)
    assert fits.diagonal().all()


def test_match_evidence_is_the_likelihood_ratio_of_the_checked_attributes(world, small_dataset):
    scenes = small_dataset.scenes[:30]
    evidence = match_evidence(annotate(world, scenes))
    named, shown = world.visible(scenes, "text"), world.visible(scenes, "image")
    for i in range(30):
        for j in range(30):
            expected = 1
            for a in ATTRIBUTES:
                if a in shown and shown[a][i] and named[a][j]:
                    expected *= len(ATTRIBUTES[a]) if scenes.attrs[a][i] == scenes.attrs[a][j] else 0
            assert evidence[i, j] == expected, (i, j)
    assert (evidence.diagonal() >= 1).all()
    assert torch.equal(caption_fits(annotate(world, scenes)), evidence > 0)


def test_annotations_have_values_then_shown_then_named_bits(world, small_dataset):
    scenes = small_dataset.scenes[:5]
    notes = annotate(world, scenes)
    k = len(ATTRIBUTES)
    assert notes.shape == (5, 3 * k) and notes.dtype == torch.int64
    assert notes[:, list(ATTRIBUTES).index("material") + k].eq(0).all()      # the image never shows the material
    assert notes[:, :k].tolist() == [[int(scenes.attrs[a][i]) for a in ATTRIBUTES] for i in range(5)]


def test_bad_annotations_are_rejected_with_their_shape():
    with pytest.raises(ValueError, match=r"annotations must be \(B, 15\) from annotate\(\), got \(4, 14\)"):
        match_evidence(torch.zeros(4, 14, dtype=torch.long))
