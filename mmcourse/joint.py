"""Stage 2, joint training: labelled multimodal training, with the encoders initialised from stage 1.

:class:`JointModel` is a :class:`mmcourse.fusion.FusionModel` (encoders, a fusion, a
classification head) with two more heads that look at an image and a caption
together, as ALBEF does (Li et al. 2021, "Align before Fuse: Vision and Language
Representation Learning with Momentum Distillation"):

- **image-text contrastive (ITC)**: a linear projection of the image features and
  one of the text features into a joint space of width E, aligned by the symmetric
  InfoNCE of chapter 06 (:class:`mmcourse.losses.ContrastiveLoss`, learnable
  temperature). Their similarities rank the captions of a batch for each image;
- **image-text matching (ITM)**: a binary classifier on a joint representation of an
  (image, caption) pair (:class:`ITMHead`): does the caption belong to the image? Its
  negatives are *hard*: for each image, a caption of another scene that the ITC
  similarities find close (:func:`mine_hard_negatives`), and for each caption such
  an image. Captions name only some attributes, so the closest non-paired caption
  often fits the image just as well (a false negative); :func:`caption_fits` finds
  those from the world's annotations (:mod:`mmcourse.data.matching`, :class:`AnnotatedDataset`).

:class:`MultitaskLoss` is ``cls + itm_weight * itm + itc_weight * itc`` as a dict
for :func:`mmcourse.training.train`. It also reports how confident each
modality's branch is (:func:`modality_scores`), the measurement behind OGM-GE
(Peng et al. 2022, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation"): :func:`ogm_coefficients` and :class:`GradientModulation` slow down the
encoder of a dominating modality. :func:`modality_probes` measures what each
encoder's features tell about the label (a linear probe).

Chapter 07's runs: :func:`train_joint` trains a joint model with the multi-task loss (and
optionally OGM-GE) and :func:`branch_evaluator` measures each late-fusion branch on its own;
:class:`FrozenMatcher` and :func:`train_matcher` train an ITM head alone on cached embeddings.

Shape letters: B batch, N samples, M modalities, C classes, K attributes, D_m width
of modality m's features, E joint embedding width, H hidden width.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .data.dataset import BatchedDataset, batch_index, make_loader
from .data.matching import annotate, caption_fits
from .data.world import World
from .encoders import encode
from .evaluation import EVAL_BATCH_SIZE, run_batches
from .fusion import FusionModel, make_fusion
from .losses import ContrastiveLoss
from .metrics import linear_probe_accuracy
from .modality import check_keys, presence_without
from .robustness import missing_modality_table
from .training import History, TrainConfig, train
from .utils import uniform

PAIR = ("image", "text")             # the modalities that ITC and ITM look at together
MINING_MODES = ("sample", "hardest", "random")
ITM_HIDDEN = 64
GUMBEL_EPS = 1e-12                   # keeps log(-log(u)) finite for u = 0
SIMILARITY_CAP = 1e30                # similarities are clamped to +-this, so that every allowed column beats -inf


# ----------------------------------------------------------------------------- hard negatives

def _check_square(similarity, name: str = "similarity") -> int:
    if not isinstance(similarity, torch.Tensor) or not similarity.is_floating_point():
        kind = similarity.dtype if isinstance(similarity, torch.Tensor) else type(similarity).__name__
        raise TypeError(f"{name} must be a floating-point tensor (B, B), got {kind}")
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"{name} must be square (B, B), got {tuple(similarity.shape)}")
    return similarity.shape[0]


def mine_hard_negatives(similarity: torch.Tensor, mode: str = "sample", generator: torch.Generator | None = None,
                        exclude: torch.Tensor | None = None) -> torch.Tensor:
    """For each query (row i), a non-matching candidate (column j != i) that the similarities find close.

    Row i scores the B candidates for query i (e.g. image i against every caption of
    the batch); its positive is column i, which is never returned. Modes:

    - ``"sample"`` (the default, as ALBEF): j is drawn with probability
      ``softmax_j(similarity[i, j])`` over the allowed columns (pass similarity
      *logits*, i.e. cosines times the inverse temperature). Close candidates are
      likely, not certain: a caption of another scene that fits the image just as
      well (a *false* negative: captions name only some attributes) is not
      chosen every time, which hardest-negative mining would do;
    - ``"hardest"``: the allowed column of highest similarity (ties: the lowest index);
    - ``"random"``: uniform over the allowed columns (no mining, the baseline).

    Allowed are the columns j != i with ``exclude[i, j]`` False; in a row where
    ``exclude`` leaves nothing, every j != i is allowed again (``exclude`` is a
    preference, the positive is a rule). Sampling uses the Gumbel-max trick: the
    argmax of ``similarity + Gumbel noise`` is a draw from the softmax.

    Args:
        similarity: (B, B) floating point, B >= 2.
        mode: one of ``MINING_MODES``.
        generator: optional CPU generator for ``"sample"`` and ``"random"``: B * B numbers are drawn
            per call, so a seed fixes the draws on any device.
        exclude: optional (B, B) bool, pairs not to use as negatives (e.g. identical captions).

    Returns:
        (B,) int64 on the device of ``similarity``, with ``out[i] != i``.

    Raises:
        TypeError: if ``similarity`` is not a floating-point tensor or ``exclude`` not a bool tensor.
        ValueError: for a non-square ``similarity``, B < 2 (no negative exists), an unknown
            ``mode`` or an ``exclude`` of another shape.
    """
    b = _check_square(similarity)
    if b < 2:
        raise ValueError(f"mining a negative needs a batch of at least 2, got similarity of shape "
                         f"{tuple(similarity.shape)}: with B = 1 the only candidate is the positive")
    if mode not in MINING_MODES:
        raise ValueError(f"mode must be one of {MINING_MODES}, got {mode!r}")
    allowed = ~torch.eye(b, dtype=torch.bool, device=similarity.device)                 # (B, B)
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.bool:
            kind = exclude.dtype if isinstance(exclude, torch.Tensor) else type(exclude).__name__
            raise TypeError(f"exclude must be a bool tensor (B, B), got {kind}")
        if exclude.shape != similarity.shape:
            raise ValueError(f"exclude must have the shape of similarity {tuple(similarity.shape)}, "
                             f"got {tuple(exclude.shape)}")
        keep = allowed & ~exclude.to(similarity.device)
        allowed = torch.where(keep.any(1, keepdim=True), keep, allowed)
    if mode == "random":
        scores = torch.zeros(b, b, device=similarity.device)
    else:
        scores = similarity.detach().float().nan_to_num(0.0).clamp(-SIMILARITY_CAP, SIMILARITY_CAP)
    if mode != "hardest":
        u = uniform((b, b), generator, similarity.device).clamp_min(GUMBEL_EPS)
        scores = scores - torch.log(-torch.log(u))                                      # + Gumbel(0, 1) noise
    return scores.masked_fill(~allowed, float("-inf")).argmax(1)


def identical_rows(x: torch.Tensor) -> torch.Tensor:
    """Which rows of a batch are equal: (B, ...) -> (B, B) bool (the diagonal is True).

    For captions (B, L) of token ids this finds duplicates: a caption equal to the
    positive's is a certain false negative, which :class:`MultitaskLoss` excludes.
    """
    flat = x.reshape(len(x), -1)
    return (flat.unsqueeze(1) == flat.unsqueeze(0)).all(-1)


class AnnotatedDataset(BatchedDataset):
    """A :class:`~mmcourse.data.MultimodalDataset` whose batches carry annotations beside the modalities.

    Batches are ``(inputs, labels, annotations)``: the modality dict, the labels (B,) and
    the annotations (B, 3K) of :func:`mmcourse.data.annotate` (what each modality shows).
    Annotations are no modality, so they never enter ``inputs`` (:mod:`mmcourse.modality`).
    With them, :class:`MultitaskLoss` never mines a caption that fits the image as a
    negative (:func:`caption_fits`).

    Args:
        dataset: the scenes (its ``scenes`` and ``labels`` are kept as attributes).
        world: the world that rendered them (it says which modality shows what).
    """

    def __init__(self, dataset, world: World):
        self.dataset, self.scenes, self.labels = dataset, dataset.scenes, dataset.labels
        self.annotations = annotate(world, dataset.scenes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        inputs, labels = self.dataset.__getitems__(indices)
        return inputs, labels, self.annotations[batch_index(indices)]


# ----------------------------------------------------------------------------- the model

class ITMHead(nn.Module):
    """Does caption j belong to image i? A binary classifier on a joint representation of the pair.

    It reads the L2-normalised ITC embeddings u (image) and v (caption), rescaled by
    sqrt(E) so that their entries are of order 1, and forms the joint representation
    ``[u * v, |u - v|]`` (agreement and disagreement, coordinate by coordinate:
    the sum of ``u * v`` alone is the cosine similarity); an MLP ``Linear(2E, H), ReLU,
    Linear(H, 1)`` turns it into one logit. Sharing the ITC space means that aligned
    embeddings (from stage 1, or from the ITC loss) give the matcher a head start.

    Args:
        embed_dim: E.
        hidden: H.
    """

    def __init__(self, embed_dim: int, hidden: int = ITM_HIDDEN):
        super().__init__()
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Match logits (B,) of the pairs (image[k], text[k]): (B, E), (B, E) normalised embeddings -> (B,)."""
        if image.dim() != 2 or image.shape != text.shape or image.shape[1] != self.embed_dim:
            raise ValueError(f"image and text must both be (B, E) with E = {self.embed_dim}, "
                             f"got {tuple(image.shape)} and {tuple(text.shape)}")
        u, v = image * self.embed_dim ** 0.5, text * self.embed_dim ** 0.5
        return self.mlp(torch.cat([u * v, (u - v).abs()], dim=1)).squeeze(1)


class JointModel(FusionModel):
    """Three encoders, a fusion and a classifier head, plus image-text contrastive and matching heads.

    ``model(inputs, present=None)`` returns class logits (B, C) exactly as a
    :class:`~mmcourse.fusion.FusionModel` does (so ``accuracy_on`` and the robustness
    helpers work unchanged); the extra heads serve :class:`MultitaskLoss`.

    Args:
        encoders: modality -> encoder mapping its batch tensor to (B, D_m); each needs an
            ``out_dim`` (every :mod:`mmcourse.encoders` encoder has one). Must include
            ``"image"`` and ``"text"``. Pass copies (``copy.deepcopy``) to keep the originals.
        num_classes: C.
        fusion: a name of ``mmcourse.fusion.FUSIONS`` (default ``"late"``: per-modality logits
            averaged, so each modality's share of the decision is explicit).
        hidden: H of the fusion.
        embed_dim: E, the width of the ITC space.
        modality_dropout: drop rate of whole modalities while training (see ``FusionModel``).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int, fusion: str = "late", hidden: int = 128,
                 embed_dim: int = 64, modality_dropout: float = 0.0):
        if not isinstance(encoders, Mapping) or not set(PAIR) <= set(encoders):
            got = sorted(encoders) if isinstance(encoders, Mapping) else type(encoders).__name__
            raise ValueError(f"encoders must be a dict with at least the keys {list(PAIR)}, got {got}")
        in_dims = {}
        for m, enc in encoders.items():
            if not isinstance(enc, nn.Module) or not isinstance(getattr(enc, "out_dim", None), int):
                raise TypeError(f"encoders[{m!r}] must be an nn.Module with an int out_dim, got {type(enc).__name__}")
            in_dims[m] = enc.out_dim
        super().__init__(make_fusion(fusion, in_dims, hidden, num_classes), num_classes, encoders, modality_dropout)
        self.project = nn.ModuleDict({m: nn.Linear(in_dims[m], embed_dim) for m in PAIR})
        self.itc = ContrastiveLoss()
        self.itm = ITMHead(embed_dim)

    def modality_logits(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The logits each given modality gives on its own: {name: (B, C)}, every other modality masked.

        With ``late`` fusion these are exactly the per-modality branches whose mean is
        the model's output; with other fusions they are meaningful only if the model
        was trained with modality dropout (it has then seen single modalities).
        """
        given = check_keys(features, self.modalities, what="features")
        b, device = len(features[given[0]]), features[given[0]].device
        return {m: self.head(self.fusion(features, presence_without(
                    b, self.modalities, [x for x in self.modalities if x != m], device)))
                for m in given}

    def embed(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised ITC embeddings of the images and of the captions: (B, E), (B, E)."""
        image, text = (F.normalize(self.project[m](features[m]).float(), dim=1) for m in PAIR)
        return image, text

    def similarity(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ITC logits (B, B) of normalised embeddings (B, E), (B, E): cosine times the inverse temperature.

        Row i scores image i against every caption; the diagonal holds the true pairs.
        """
        scale = self.itc.logit_scale.clamp(max=self.itc.max_logit_scale).exp()
        return scale * image @ text.T

    @classmethod
    def from_stage1(cls, stage1: nn.Module, num_classes: int, **options) -> JointModel:
        """A joint model whose encoders are copies of ``stage1.encoders`` (the stage-1 model is left untouched).

        When ``stage1`` also has ``projections`` (image and text, of matching shapes) and a
        learned ``losses["image-text"]`` temperature, as :class:`mmcourse.pretrain.ContrastiveModel`
        does, the ITC projections and temperature start from them too, so the joint space
        (and with it the mining of hard negatives and the matcher) is aligned from step 0.

        Args:
            stage1: a model with an ``encoders`` ModuleDict.
            num_classes, options: as :class:`JointModel`.
        """
        encoders = getattr(stage1, "encoders", None)
        if not isinstance(encoders, nn.ModuleDict):
            raise TypeError(f"stage1 must have an nn.ModuleDict .encoders, got {type(stage1).__name__}")
        model = cls(copy.deepcopy(dict(encoders)), num_classes, **options)
        projections = getattr(stage1, "projections", {})
        with torch.no_grad():
            for m in PAIR:
                if m in projections and projections[m].weight.shape == model.project[m].weight.shape:
                    model.project[m].load_state_dict(projections[m].state_dict())
            losses = getattr(stage1, "losses", {})
            if "image-text" in losses:
                model.itc.logit_scale.copy_(losses["image-text"].logit_scale)
        return model


# ----------------------------------------------------------------------------- modality imbalance

@torch.no_grad()
def modality_scores(model: JointModel, features: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """How confident each modality's branch is of the true class: (M,), in ``model.modalities`` order.

    ``s_m = mean_i softmax(z_m(x_i))[y_i]`` with ``z_m`` the logits of modality m alone
    (:meth:`JointModel.modality_logits`): OGM-GE's per-modality score (Peng et al.
    2022 sum it over the batch; the mean gives the same ratios). No gradient flows.
    Every modality must be given (a score per modality).
    """
    check_keys(features, model.modalities, required=model.modalities, what="features")
    logits = model.modality_logits({m: f.detach() for m, f in features.items()})
    return torch.stack([F.softmax(logits[m].float(), dim=1).gather(1, labels[:, None]).mean()
                        for m in model.modalities])


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM's gradient coefficients from per-modality scores: (M,) -> (M,) in (0, 1].

    ``rho_m = s_m / mean_{m' != m} s_m'`` (for two modalities, Peng et al.'s ratio of
    the two scores), and, as their Eq. 10, ``k_m = 1 - tanh(alpha * rho_m)`` where
    ``rho_m > 1`` (a modality more confident than the others), else ``k_m = 1``. As in
    the paper, k jumps at ``rho_m = 1`` from 1 to ``1 - tanh(alpha)``; with three or
    more modalities, several can be above the mean of the others at once.

    Raises:
        ValueError: if ``scores`` is not (M,) with M >= 2, or ``alpha`` is negative.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or len(scores) < 2:
        raise ValueError(f"scores must be a tensor (M,) with M >= 2 modalities, got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    others = (scores.sum() - scores) / (len(scores) - 1)                                  # (M,)
    rho = scores / others.clamp_min(torch.finfo(scores.dtype).tiny)
    return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))


class GradientModulation:
    """OGM-GE: scale each encoder's gradients by its coefficient, then add Gaussian noise (Peng et al. 2022).

    Hooks on every parameter of ``model.encoders[m]`` multiply its gradient by
    ``k_m`` (:func:`ogm_coefficients` of the latest :meth:`update`); with ``noise``
    (the "GE", generalisation enhancement), each weight tensor (2 or more dims, as
    the paper's conv kernels) then gets noise ``N(0, std(g)^2)``, where g is its
    modulated gradient. Call :meth:`update` once per step, before ``backward``
    (:class:`MultitaskLoss` does); :meth:`remove` (or leaving a ``with`` block)
    takes the hooks off.

    The paper trains with SGD, whose step is proportional to the gradient. Adam
    divides each gradient by a running estimate of its own size, so a coefficient
    that stays constant cancels out: only changes of ``k_m`` over time (and the
    noise) reach the weights.

    Args:
        model: the :class:`JointModel` whose encoders are modulated.
        alpha: the strength of the modulation (> 0).
        noise: add the GE noise.
    """

    def __init__(self, model: JointModel, alpha: float = 0.5, noise: bool = True):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
        self.alpha, self.noise = float(alpha), bool(noise)
        self.modalities = tuple(model.modalities)
        self.coefficients = torch.ones(len(self.modalities))
        self._handles = [p.register_hook(self._hook(j, p.dim() >= 2))
                         for j, m in enumerate(self.modalities) for p in model.encoders[m].parameters()
                         if p.requires_grad]

    def _hook(self, j: int, add_noise: bool):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            grad = grad * self.coefficients[j].to(grad.device, grad.dtype)
            if self.noise and add_noise:
                grad = grad + torch.randn_like(grad) * grad.std()
            return grad
        return hook

    def update(self, scores: torch.Tensor) -> torch.Tensor:
        """Set the coefficients of the next backward pass from per-modality scores (M,); returns them (M,)."""
        if scores.shape != (len(self.modalities),):
            raise ValueError(f"scores must be (M,) = ({len(self.modalities)},) for {self.modalities}, "
                             f"got {tuple(scores.shape)}")
        self.coefficients = ogm_coefficients(scores.detach().float(), self.alpha)
        return self.coefficients

    def remove(self) -> None:
        """Take the hooks off the encoders (the model trains normally again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GradientModulation:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# ----------------------------------------------------------------------------- the loss

class MultitaskLoss:
    """Classification + ITM with hard negatives + ITC, as a ``loss_fn(model, batch) -> dict`` for ``train``.

    For a batch ``(inputs, labels)`` or ``(inputs, labels, annotations)`` (:class:`AnnotatedDataset`)
    of B scenes:

    - ``cls``: cross-entropy of the class logits (modality dropout applies);
    - ``itc``: symmetric InfoNCE of the image and caption embeddings (``model.itc``);
    - ``itm``: binary cross-entropy of the match logits of 3B pairs: the B true pairs
      (label 1), each image with a mined caption and each caption with a mined image
      (label 0). Negatives come from :func:`mine_hard_negatives` on the batch's ITC
      similarities (detached). A caption that fits the image is never a negative
      when the batch carries annotations (:func:`caption_fits`); without them, only
      captions identical to the true one are excluded.

    ``loss = cls + itm_weight * itm + itc_weight * itc``. The dict also holds
    ``itm_accuracy`` (fraction of the 3B pairs the ITM head gets right) and, per
    modality, ``score_<m>`` (:func:`modality_scores`) and, with a ``modulation``,
    ``coeff_<m>``. A batch of one scene has no negative: ITC and ITM are then skipped.
    Every modality must be in ``inputs`` (the per-modality scores need them all).

    Args:
        itm_weight, itc_weight: weights of the two image-text losses (0 switches one off).
        mining: negative selection, one of ``MINING_MODES``.
        modulation: an optional :class:`GradientModulation` updated at every step.
        generator: optional CPU generator for the mining draws.
    """

    def __init__(self, itm_weight: float = 1.0, itc_weight: float = 1.0, mining: str = "sample",
                 modulation: GradientModulation | None = None, generator: torch.Generator | None = None):
        for name, w in (("itm_weight", itm_weight), ("itc_weight", itc_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if mining not in MINING_MODES:
            raise ValueError(f"mining must be one of {MINING_MODES}, got {mining!r}")
        self.itm_weight, self.itc_weight, self.mining = float(itm_weight), float(itc_weight), mining
        self.modulation, self.generator = modulation, generator

    def __call__(self, model: JointModel, batch) -> dict[str, torch.Tensor]:
        inputs, labels, *annotations = batch
        features = model.features(inputs)
        scores = modality_scores(model, features, labels)
        out = {f"score_{m}": s for m, s in zip(model.modalities, scores)}
        if self.modulation is not None:
            out.update({f"coeff_{m}": k for m, k in zip(model.modalities, self.modulation.update(scores))})
        out["cls"] = F.cross_entropy(model.classify(features), labels)
        loss = out["cls"]
        if len(labels) >= 2 and (self.itc_weight > 0 or self.itm_weight > 0):
            image, text = model.embed(features)                                           # (B, E) each
            out["itc"] = model.itc(image, text)
            exclude = caption_fits(annotations[0]) if annotations else identical_rows(inputs["text"])
            out["itm"], out["itm_accuracy"] = self.matching(model, image, text, exclude)
            loss = loss + self.itc_weight * out["itc"] + self.itm_weight * out["itm"]
        out["loss"] = loss
        return out

    def matching(self, model: JointModel, image: torch.Tensor, text: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM loss and accuracy over the B true pairs and 2B mined negatives of embeddings (B, E), (B, E); B >= 2.

        ``exclude`` (B, B) bool, row i = image i, column j = caption j, marks pairs never used as
        negatives (e.g. identical captions, or captions that fit the image).
        """
        with torch.no_grad():
            similarity = model.similarity(image, text).float()                             # (B, B), row = image
            neg_text = mine_hard_negatives(similarity, self.mining, self.generator, exclude)      # (B,)
            neg_image = mine_hard_negatives(similarity.T, self.mining, self.generator,
                                            None if exclude is None else exclude.T)               # (B,)
        logits = model.itm(torch.cat([image, image, image[neg_image]]),
                           torch.cat([text, text[neg_text], text]))                               # (3B,)
        b = len(image)
        target = torch.cat([torch.ones(b, device=logits.device), torch.zeros(2 * b, device=logits.device)])
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        accuracy = ((logits.detach() > 0).float() == target).float().mean()
        return loss, accuracy


# ----------------------------------------------------------------------------- matching and probes

def embed_pairs(model: JointModel, dataset, device, batch_size: int = EVAL_BATCH_SIZE
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITC embeddings of every scene's image and caption, with the scenes' annotations, in order.

    Args:
        model: a :class:`JointModel` (run in eval mode; its train/eval mode is restored afterwards).
        dataset: an :class:`AnnotatedDataset`, or a ``Subset`` of one.

    Returns:
        image (N, E), text (N, E) (unit length, float32) and annotations (N, 3K), on ``device``.
    """
    def embed(model: JointModel, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(batch) != 3:
            raise ValueError("the dataset's batches carry no annotations: wrap it in AnnotatedDataset")
        inputs, _, annotations = batch
        return *model.embed(model.features(inputs)), annotations

    return tuple(t.to(device) for t in run_batches(model, embed, dataset, device, batch_size))


@torch.no_grad()
def itm_scores(model: nn.Module, image: torch.Tensor, text: torch.Tensor, annotations: torch.Tensor,
               batch_size: int = 128, generator: torch.Generator | None = None) -> dict[str, float]:
    """How well a matcher tells true pairs from *real* negatives, in batches of ``batch_size`` scenes.

    - ``"true pairs accepted"``: fraction of (image i, caption i) with a positive ITM logit;
    - ``"hard negatives rejected"``: for each image, the caption of highest ``model.similarity``
      among those of its batch that do not fit it (:func:`caption_fits`); fraction with a logit <= 0;
    - ``"random negatives rejected"``: the same for a caption drawn at random among those.

    Images whose every batch-mate's caption fits them count only for the first number;
    a last batch smaller than ``batch_size`` is dropped.

    Args:
        model: anything with ``itm(image, text) -> (B,)`` and ``similarity(image, text) -> (B, B)``
            (a :class:`JointModel`).
        image, text: (N, E) embeddings (:func:`embed_pairs`); annotations: (N, 3K).
        generator: optional CPU generator for the random negatives.
    """
    n = len(image)
    if not image.shape == text.shape or len(annotations) != n or n < batch_size or batch_size < 2:
        raise ValueError(f"image and text must be (N, E) with N >= batch_size >= 2 and annotations (N, 3K), got "
                         f"{tuple(image.shape)}, {tuple(text.shape)}, {tuple(annotations.shape)} and "
                         f"batch_size {batch_size}")
    out = {"true pairs accepted": [], "hard negatives rejected": [], "random negatives rejected": []}
    others = ~torch.eye(batch_size, dtype=torch.bool, device=image.device)
    for s in range(0, n - batch_size + 1, batch_size):
        u, v = image[s:s + batch_size], text[s:s + batch_size]
        fits = caption_fits(annotations[s:s + batch_size])
        real = (~fits & others).any(1)                          # images with at least one caption that does not fit
        out["true pairs accepted"].append((model.itm(u, v) > 0).float().mean())
        for key, mode in (("hard negatives rejected", "hardest"), ("random negatives rejected", "random")):
            negative = mine_hard_negatives(model.similarity(u, v), mode, generator, fits)
            out[key].append((model.itm(u, v[negative]) <= 0)[real].float().mean())
    return {k: torch.stack(v).nanmean().item() for k, v in out.items()}


class FrozenMatcher(nn.Module):
    """A fresh ITM head over a frozen similarity: what :meth:`MultitaskLoss.matching` needs, and nothing else.

    Args:
        similarity: ``similarity(image, text) -> (B, B)`` logits, e.g. a trained :meth:`JointModel.similarity`
            (not trained here: only the head's parameters are this module's).
        embed_dim: E of the embeddings the head reads.
    """

    def __init__(self, similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embed_dim: int):
        super().__init__()
        self.similarity, self.itm = similarity, ITMHead(embed_dim)


def train_matcher(matcher: FrozenMatcher, image: torch.Tensor, text: torch.Tensor, annotations: torch.Tensor,
                  mining: str, exclude_fitting: bool, steps: int = 600, batch_size: int = 128, lr: float = 1e-3,
                  generator: torch.Generator | None = None) -> FrozenMatcher:
    """Train ``matcher.itm`` alone with Adam on random batches of cached embeddings; returns ``matcher``.

    Each step draws ``batch_size`` scenes (with replacement) and takes the ITM loss of
    :meth:`MultitaskLoss.matching` with negatives mined by ``mining``; ``exclude_fitting``
    never mines a caption that fits the image (:func:`caption_fits` of ``annotations``).

    Args:
        image, text: (N, E) embeddings (:func:`embed_pairs`) on the matcher's device; annotations: (N, 3K).
        generator: CPU generator for the batches and the mining draws (None: the global one).
    """
    if image.dim() != 2 or image.shape != text.shape or len(annotations) != len(image):
        raise ValueError(f"image and text must be (N, E) and annotations (N, 3K), got {tuple(image.shape)}, "
                         f"{tuple(text.shape)} and {tuple(annotations.shape)}")
    loss_fn = MultitaskLoss(mining=mining, generator=generator)
    optimizer = torch.optim.Adam(matcher.itm.parameters(), lr)
    for _ in range(steps):
        idx = torch.randint(0, len(image), (batch_size,), generator=generator).to(image.device)   # (B,)
        exclude = caption_fits(annotations[idx]) if exclude_fitting else None                    # (B, B)
        loss, _ = loss_fn.matching(matcher, image[idx], text[idx], exclude)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return matcher


# ----------------------------------------------------------------------------- chapter 07's runs

def branch_evaluator(loader, device, modalities: Sequence[str]) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(model)`` for :func:`mmcourse.training.train`: accuracy with every modality and with each alone.

    Returns ``{"dev_accuracy": ..., "dev_<m>_alone": ...}`` from one pass through the encoders
    (:func:`mmcourse.robustness.missing_modality_table` with the subsets it needs).
    """
    everything = tuple(sorted(modalities))
    subsets = [everything, *[(m,) for m in everything]]

    def evaluate(model: nn.Module) -> dict[str, float]:
        acc = missing_modality_table(model, loader, None, device, subsets)
        return {"dev_accuracy": acc[everything], **{f"dev_{m}_alone": acc[(m,)] for m in everything}}

    return evaluate


def train_joint(model: JointModel, loader, config: TrainConfig, device, *, aux_weight: float,
                ogm_alpha: float | None = None, ogm_noise: bool = True, evaluate=None,
                optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None) -> History:
    """Train a joint model with :class:`MultitaskLoss` (ITM and ITC both weighted ``aux_weight``, ALBEF sampling).

    With ``ogm_alpha``, OGM-GE (:class:`GradientModulation`, with its noise unless ``ogm_noise`` is False)
    modulates the encoders during the run and its hooks are removed afterwards. ``optimizer`` defaults to the training loop's
    (:func:`mmcourse.training.make_optimizer`, Adam); pass e.g. SGD with momentum to train as Peng et al. did.

    Args:
        model: on ``device``, trained in place.
        loader: batches ``(inputs, labels, annotations)`` (:class:`AnnotatedDataset`) or ``(inputs, labels)``.
        generator: CPU generator of the mining draws.
    """
    with GradientModulation(model, ogm_alpha, ogm_noise) if ogm_alpha else contextlib.nullcontext() as ogm:
        loss_fn = MultitaskLoss(aux_weight, aux_weight, "sample", ogm, generator)
        return train(model, loss_fn, loader, config, device, evaluate=evaluate, optimizer=optimizer)


def modality_probes(model: JointModel, train_set, test_set, device, batch_size: int = EVAL_BATCH_SIZE
                    ) -> dict[str, float]:
    """Linear-probe accuracy of the label from each encoder's frozen features: {name: accuracy}.

    Each encoder of ``model`` encodes ``train_set`` and ``test_set`` (datasets whose
    batches are ``(inputs, labels)``, e.g. a few thousand training scenes and the dev
    split); a logistic-regression probe per modality is fitted on the first and scored
    on the second (:func:`mmcourse.metrics.linear_probe_accuracy`). The probe says
    what the encoder's features make linearly available, whatever the fusion does
    with them. Each encoder's train/eval mode is restored afterwards.
    """
    labels = [torch.cat([y for _, y in make_loader(ds, batch_size)]) for ds in (train_set, test_set)]
    out = {}
    for m in model.modalities:
        x, xt = (encode(model.encoders[m], ds, device, batch_size, key=m) for ds in (train_set, test_set))
        out[m] = linear_probe_accuracy(x, labels[0], xt, labels[1])
    return out
