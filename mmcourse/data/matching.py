"""Which caption could belong to which image: the world's ground truth for matching and retrieval.

A caption names some attributes; an image shows others. Caption j is
*consistent* with image i when every attribute that both check (caption j
names it, image i shows it) has the same value in the two scenes. Another
scene's consistent caption is a false negative for image-text matching, and it
ties with the true caption for any retrieval model.

The evidence that caption j is image i's own caption is the likelihood ratio
``prod_a |values(a)|`` over the attributes both check (each agreeing attribute
is ``|values(a)|`` times likelier under "same scene" than under "another
scene"), and 0 when one of them disagrees.

Shape letters: N scenes (or B in a batch), K attributes.
"""
from __future__ import annotations

import numpy as np
import torch

from .world import ATTRIBUTES, Scenes, World

_SIZES = torch.tensor([len(v) for v in ATTRIBUTES.values()])


def annotate(world: World, scenes: Scenes) -> torch.Tensor:
    """What each scene's image shows and its caption names, as integers: (N, 3K) int64, K = len(ATTRIBUTES).

    Columns: the K attribute values, then K bits "the image shows it", then K bits
    "the caption names it" (attributes in ``ATTRIBUTES`` order): the annotation a
    curated dataset would carry.
    """
    shown, named = world.visible(scenes, "image"), world.visible(scenes, "text")
    none = np.zeros(len(scenes), dtype=bool)
    columns = ([scenes.attrs[a] for a in ATTRIBUTES] + [shown.get(a, none) for a in ATTRIBUTES]
               + [named.get(a, none) for a in ATTRIBUTES])
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.int64))


def match_evidence(annotations: torch.Tensor) -> torch.Tensor:
    """Likelihood ratio that caption j is image i's own: (B, 3K) annotations -> (B, B) int64, row = image.

    The product of ``|values(a)|`` over the attributes image i shows and caption j
    names when the two scenes agree on all of them, else 0 (the diagonal is >= 1).

    Raises:
        ValueError: if ``annotations`` is not (B, 3K) as :func:`annotate` makes it.
    """
    k = len(ATTRIBUTES)
    if not isinstance(annotations, torch.Tensor) or annotations.dim() != 2 or annotations.shape[1] != 3 * k:
        raise ValueError(f"annotations must be (B, {3 * k}) from annotate(), got "
                         f"{tuple(getattr(annotations, 'shape', ())) or type(annotations).__name__}")
    value, shown, named = annotations.chunk(3, dim=1)                                  # (B, K) each
    same = value.unsqueeze(1) == value.unsqueeze(0)                                    # (B, B, K): [i, j, a]
    checked = shown.bool().unsqueeze(1) & named.bool().unsqueeze(0)                    # image i shows, caption j names
    sizes = _SIZES.to(annotations.device)
    factor = torch.where(checked, torch.where(same, sizes, torch.zeros_like(sizes)), torch.ones_like(sizes))
    return factor.prod(-1)


def caption_fits(annotations: torch.Tensor) -> torch.Tensor:
    """Is caption j consistent with image i? (B, 3K) annotations -> (B, B) bool (the diagonal is True)."""
    return match_evidence(annotations) > 0


def caption_fits_image(world: World, scenes: Scenes) -> torch.Tensor:
    """:func:`caption_fits` of the scenes' :func:`annotate`: (N, N) bool, row i = image i, column j = caption j."""
    return caption_fits(annotate(world, scenes))
