"""Stage 1, pretraining: self-supervised objectives on unlabeled multimodal data.

Nothing here reads a label to train. Two objectives:

- **contrastive alignment** (:class:`ContrastiveModel`): one encoder per modality,
  a linear projection of each into a joint space of width E, and the symmetric
  InfoNCE of chapter 03 (:class:`mmcourse.losses.ContrastiveLoss`, one learnable
  temperature per pair of modalities) pulling the embeddings of the same scene
  together. The default pairs have the caption as the hub: image-text and
  audio-text (as CLIP for images, Radford et al. 2021; ImageBind binds every
  modality to one hub, Girdhar et al. 2023);
- **masked modelling** (:class:`MaskedCaptionModel`): caption tokens are hidden
  and predicted from the rest of the caption *and the image*, through a small
  Transformer over the image's and the caption's tokens (the masked-language
  modelling of ViLT, Kim et al. 2021, and ALBEF, Li et al. 2021). To fill in
  "a ___ thing" the model must look at the image, so the image encoder learns too.

Labels enter only to *evaluate*: zero-shot classification from prompts
(:func:`prompts`, :func:`zero_shot_classifier`, :func:`zero_shot_accuracies`; for the
masked model by filling in a blank, :func:`masked_zero_shot_predict`), retrieval
(:func:`retrieval_recalls`, with the exact ceiling of this world,
:func:`retrieval_ceiling`) and linear probes with few labels
(:func:`mmcourse.metrics.linear_probe_accuracy`).

:func:`pretrain_stage1` trains the course's stage-1 model with
:func:`mmcourse.training.train` and writes its checkpoint to
:func:`stage1_checkpoint`; :func:`load_stage1` loads it (or trains it when missing).
Chapter 07 starts from ``load_stage1(...).encoders``.

Shape letters: B batch, N samples, L tokens, D encoder width, E joint embedding
width, V values of an attribute (or vocabulary size for token logits), P prompts.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_int
from .config import Profile, get_profile, stage1_config
from .data.dataset import MultimodalDataset, Split, make_loader, make_splits, take
from .data.matching import annotate, match_evidence
from .data.text import PAD_ID, SHAPE_FILLERS, SYNONYMS, TEMPLATES, UNK_ID, WORLD_VOCAB, Tokenizer
from .data.world import ATTRIBUTES, Scenes, World
from .encoders import Encoder, make_encoder, pre_norm_transformer
from .evaluation import EVAL_BATCH_SIZE, run_batches
from .losses import MAX_LOGIT_SCALE, ContrastiveLoss
from .metrics import recall_at_k
from .training import History, TrainConfig, load_or_train, train
from .utils import build_dir

# ----------------------------------------------------------------------------- contrastive alignment


def _pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


class ContrastiveModel(nn.Module):
    """Encoders, a linear projection per modality into one joint space, and InfoNCE per pair.

    ``embed`` maps modality m's batch x_m to ``z_m = normalise(P_m encoder_m(x_m))``
    (B, E); ``loss`` is the mean over the chosen pairs (a, b) of the symmetric
    InfoNCE of ``z_a`` and ``z_b``, each pair with its own learnable temperature
    (initialised at ``temperature``, never below 0.01: CLIP's cap on the scale).

    Args:
        encoders: {modality: Encoder}, e.g. {"audio": CNNAudioEncoder(), "image": ..., "text": ...};
            modality m reads ``inputs[m]``. Kept as ``self.encoders`` (an ``nn.ModuleDict`` in sorted
            order), the attribute later stages start from.
        embed_dim: E, the width of the joint space.
        pairs: the (a, b) modality pairs to align; default: every modality with ``"text"``
            (the caption is the hub), or every pair when there is no text encoder.
        temperature: the initial temperature of every pair (0.07 as CLIP).
        learn_temperature: False keeps the temperatures fixed (for temperature sweeps).
    """

    def __init__(self, encoders: Mapping[str, Encoder], embed_dim: int = 64,
                 pairs: Sequence[tuple[str, str]] | None = None, temperature: float = 0.07,
                 learn_temperature: bool = True):
        super().__init__()
        if not isinstance(encoders, Mapping) or len(encoders) < 2:
            raise ValueError(f"encoders must map at least two modalities to Encoders, got {encoders!r}")
        for m, enc in encoders.items():
            if not isinstance(enc, Encoder):
                raise TypeError(f"encoders[{m!r}] must be an mmcourse.encoders.Encoder, got {type(enc).__name__}")
        check_int(embed_dim, "embed_dim")
        if not 1 / math.exp(MAX_LOGIT_SCALE) <= temperature:
            raise ValueError(f"temperature must be >= {1 / math.exp(MAX_LOGIT_SCALE):g}, got {temperature}")
        names = sorted(encoders)
        if pairs is None:
            pairs = ([(m, "text") for m in names if m != "text"] if "text" in encoders
                     else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]])
        pairs = [tuple(p) for p in pairs]
        for p in pairs:
            if len(p) != 2 or p[0] == p[1] or any(m not in encoders for m in p):
                raise ValueError(f"each pair must name two different modalities of {names}, got {p}")
        if not pairs:
            raise ValueError("pairs is empty: give at least one (a, b) pair of modalities")
        self.embed_dim = embed_dim
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in names})
        self.projections = nn.ModuleDict({m: nn.Linear(encoders[m].out_dim, embed_dim) for m in names})
        self.losses = nn.ModuleDict({_pair_name(a, b): ContrastiveLoss(math.log(1 / temperature))
                                     for a, b in self.pairs})
        for loss in self.losses.values():
            loss.logit_scale.requires_grad_(learn_temperature)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    @property
    def temperatures(self) -> dict[str, float]:
        """The temperature in use per pair, e.g. {"image-text": 0.05}."""
        return {name: loss.temperature for name, loss in self.losses.items()}

    def embed(self, inputs: Mapping[str, torch.Tensor], modalities: Sequence[str] | None = None
              ) -> dict[str, torch.Tensor]:
        """Joint-space embeddings: {modality: (B, E)}, L2-normalised, float32.

        Args:
            inputs: a batch dict (e.g. from ``make_loader``); extra keys are ignored.
            modalities: which to embed (default: every modality of the model).
        """
        modalities = self.modalities if modalities is None else tuple(modalities)
        out = {}
        for m in modalities:
            if m not in self.encoders:
                raise ValueError(f"the model has no {m!r} encoder (modalities: {self.modalities})")
            if m not in inputs:
                raise ValueError(f"inputs have no {m!r} entry (keys: {sorted(inputs)})")
            z = self.projections[m](self.encoders[m](inputs[m]))
            out[m] = F.normalize(z.float(), dim=1)
        return out

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Same as :meth:`embed` of every modality."""
        return self.embed(inputs)

    def loss(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss": mean over pairs, "<a>-<b>": each pair's InfoNCE}``: scalars.

        Raises:
            ValueError: if the modalities' batch sizes differ.
        """
        needed = sorted({m for p in self.pairs for m in p})
        z = self.embed(inputs, needed)
        sizes = {m: len(v) for m, v in z.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every modality needs the same batch size B, got {sizes}")
        per_pair = {_pair_name(a, b): self.losses[_pair_name(a, b)](z[a], z[b]) for a, b in self.pairs}
        return {"loss": torch.stack(list(per_pair.values())).mean(), **per_pair}


def make_contrastive_model(embed_dim: int = 64, image: str = "cnn", text: str = "mean_pool", audio: str | None = "cnn",
                           dim: int = 64, **options) -> ContrastiveModel:
    """The course's stage-1 model: encoders from :func:`mmcourse.encoders.make_encoder` of width ``dim``.

    ``audio=None`` leaves the audio out (image-text only). ``options`` go to :class:`ContrastiveModel`.
    """
    encoders = {"image": make_encoder("image", image, dim=dim), "text": make_encoder("text", text, dim=dim)}
    if audio is not None:
        encoders["audio"] = make_encoder("audio", audio, dim=dim)
    return ContrastiveModel(encoders, embed_dim, **options)


def contrastive_step(model: ContrastiveModel, batch) -> dict[str, torch.Tensor]:
    """The ``loss_fn`` of :func:`mmcourse.training.train` for stage 1: the labels are never read."""
    inputs, _labels = batch
    return model.loss(inputs)


# ----------------------------------------------------------------------------- masked modelling

MASK_ID = UNK_ID   # generated captions never contain <unk>, so it serves as the [MASK] token


def mask_tokens(ids: torch.Tensor, mask_prob: float, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide random caption tokens for masked modelling.

    Each real (non-padding) token is hidden with probability ``mask_prob``; a caption
    where none was drawn gets one hidden token anyway, so every caption teaches something.

    Args:
        ids: (B, L) int64 token ids, padded with ``PAD_ID``.
        mask_prob: in (0, 1].
        generator: a torch Generator on ``ids``' device (None: the global one).

    Returns:
        ``(masked_ids, targets)``: (B, L) each; hidden tokens are ``MASK_ID`` in ``masked_ids``;
        ``targets`` holds the original id where hidden and -100 (ignored by cross-entropy) elsewhere.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be token ids (B, L), got {getattr(ids, 'dtype', type(ids).__name__)} "
                         f"of shape {tuple(getattr(ids, 'shape', ()))}")
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    real = ids != PAD_ID
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    hidden = (draw < mask_prob) & real
    lowest = draw.masked_fill(~real, 2.0).argmin(1, keepdim=True)                  # (B, 1) a real token
    forced = torch.zeros_like(hidden).scatter_(1, lowest, True) & real
    hidden |= forced & ~hidden.any(1, keepdim=True)
    return ids.masked_fill(hidden, MASK_ID), ids.masked_fill(~hidden, -100)


class MaskedCaptionModel(nn.Module):
    """Masked-language modelling of captions conditioned on the image (ViLT / ALBEF style).

    The image encoder's token features (its S/8 x S/8 positions for the CNN) and the
    caption encoder's token features are projected to width H, tagged with a type
    embedding (and learned positions for the caption, whose mean-pool encoder gives
    order-free word embeddings), and read together by a small pre-norm Transformer
    (:func:`mmcourse.encoders.pre_norm_transformer`);
    a linear head predicts the vocabulary at every caption position. The loss is the
    cross-entropy on the hidden tokens only.

    Args:
        encoders: {"image": Encoder, "text": Encoder}, both with token features (``has_tokens``).
        dim: H, the width of the fusion Transformer.
        heads, layers: of the fusion Transformer.
        mask_prob: share of caption tokens hidden per step (:func:`mask_tokens`).
        vocab_size: V, the size of the token vocabulary.
        max_len: the longest caption.
    """

    def __init__(self, encoders: Mapping[str, Encoder], dim: int = 64, heads: int = 4, layers: int = 2,
                 mask_prob: float = 0.3, vocab_size: int = len(WORLD_VOCAB), max_len: int = 64):
        super().__init__()
        if set(encoders) != {"image", "text"}:
            raise ValueError(f"encoders must be exactly {{'image', 'text'}}, got {sorted(encoders)}")
        for m, enc in encoders.items():
            if not getattr(enc, "has_tokens", False):
                raise ValueError(f"encoders[{m!r}] ({type(enc).__name__}) has no token features")
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        self.mask_prob, self.max_len = mask_prob, max_len
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.projections = nn.ModuleDict({m: nn.Linear(enc.out_dim, dim) for m, enc in self.encoders.items()})
        self.type_embedding = nn.Parameter(torch.zeros(2, dim))          # 0: image token, 1: caption token
        self.position = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.type_embedding, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.fusion = pre_norm_transformer(dim, heads, layers)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Token logits at every caption position: image (B, 3, S, S), ids (B, L) -> (B, L, V)."""
        if ids.dim() != 2 or ids.shape[1] > self.max_len:
            raise ValueError(f"ids must be (B, L) with L <= {self.max_len}, got shape {tuple(ids.shape)}")
        if len(image) != len(ids):
            raise ValueError(f"image and ids must have the same batch size, got {tuple(image.shape)} and "
                             f"{tuple(ids.shape)}")
        img, img_mask = self.encoders["image"].tokens(image)                         # (B, Li, D), (B, Li)
        txt, _ = self.encoders["text"].tokens(ids)                                   # (B, L, D)
        img = self.projections["image"](img) + self.type_embedding[0]
        txt = self.projections["text"](txt) + self.type_embedding[1] + self.position[:, : ids.shape[1]]
        keep = torch.cat([img_mask, ids != PAD_ID], 1)                              # (B, Li + L)
        h = self.fusion(torch.cat([img, txt], 1), src_key_padding_mask=~keep)
        return self.head(h[:, img.shape[1]:])                                        # (B, L, V)

    def loss(self, inputs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        """``{"loss": cross-entropy on the hidden tokens, "masked_accuracy": share of them predicted}``."""
        masked, targets = mask_tokens(inputs["text"], self.mask_prob, generator)
        logits = self(inputs["image"], masked).float()                               # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        hidden = targets != -100
        accuracy = (logits.argmax(-1) == targets)[hidden].float().mean()
        return {"loss": loss, "masked_accuracy": accuracy.detach()}


def masked_step(model: MaskedCaptionModel, batch) -> dict[str, torch.Tensor]:
    """The ``loss_fn`` of :func:`mmcourse.training.train` for masked modelling: the labels are never read."""
    inputs, _labels = batch
    return model.loss(inputs)


# Fill-in prompts of the masked model: "{}" is the hidden word (attributes named by one-word synonyms).
MASKED_PROMPTS = {"shape": "a {}", "colour": "a {} thing", "size": "a {} thing"}


@torch.no_grad()
def masked_zero_shot_predict(model: MaskedCaptionModel, images: torch.Tensor, attribute: str,
                             batch_size: int = 512) -> torch.Tensor:
    """Zero-shot classification by filling in a blank: which value's word does the model put in the prompt?

    The prompt ``MASKED_PROMPTS[attribute]`` (e.g. "a ___ thing") is read with each image;
    value v scores ``log sum_{w in words(v)} p(w | prompt, image)`` over its one-word synonyms
    (e.g. "red", "crimson"); the prediction is the best-scoring value.

    Args:
        model: a trained :class:`MaskedCaptionModel` (set to eval mode here).
        images: (N, 3, S, S) floats in [0, 1], on the model's device or the CPU.
        attribute: one of ``MASKED_PROMPTS`` (position has no one-word synonym).

    Returns:
        (N,) int64 value indices, on the CPU.
    """
    if attribute not in MASKED_PROMPTS:
        raise ValueError(f"attribute must be one of {list(MASKED_PROMPTS)}, got {attribute!r}")
    words = MASKED_PROMPTS[attribute].split()
    blank = words.index("{}")
    ids = torch.tensor([[MASK_ID if w == "{}" else WORLD_VOCAB.stoi[w] for w in words]])   # (1, L)
    options = [[WORLD_VOCAB.stoi[p] for p in SYNONYMS[attribute][v] if " " not in p] for v in ATTRIBUTES[attribute]]
    model.eval()
    device = _model_device(model)
    out = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        log_p = F.log_softmax(model(chunk, ids.to(device).expand(len(chunk), -1))[:, blank].float(), -1)  # (n, V)
        scores = torch.stack([log_p[:, o].logsumexp(1) for o in options], 1)                         # (n, values)
        out.append(scores.argmax(1).cpu())
    return torch.cat(out)


def make_masked_model(dim: int = 64, image: str = "cnn", text: str = "mean_pool", **options) -> MaskedCaptionModel:
    """A :class:`MaskedCaptionModel` with encoders from :func:`mmcourse.encoders.make_encoder` of width ``dim``."""
    encoders = {"image": make_encoder("image", image, dim=dim), "text": make_encoder("text", text, dim=dim)}
    return MaskedCaptionModel(encoders, dim=dim, **options)


# ----------------------------------------------------------------------------- zero-shot classification

PROMPT_TEMPLATES: tuple[str, ...] = TEMPLATES   # the caption grammar's own phrasings
ZERO_SHOT_MODALITY = {"shape": "image", "colour": "image", "size": "image", "position": "image", "material": "audio"}


def prompts(attribute: str, value: str, templates: Sequence[str] = PROMPT_TEMPLATES,
            synonyms: int | None = None) -> list[str]:
    """Prompts naming one attribute value: every template filled with every synonym.

    A template holds ``{attribute}`` slots as in :data:`mmcourse.data.text.TEMPLATES`; the
    slot of ``attribute`` receives the synonym, the other slots stay empty, and an empty
    ``{shape}`` becomes the filler noun "thing". For example ``prompts("colour", "red",
    ["a {colour} {shape}"])`` gives ``["a red thing", "a crimson thing", "a bright red thing"]``.

    Args:
        attribute, value: e.g. ``"colour"``, ``"red"`` (``ATTRIBUTES`` lists them).
        templates: phrasings with a ``{attribute}`` slot.
        synonyms: use only the first this many synonyms of the value (None: all).

    Returns:
        ``len(templates) * synonyms`` strings, template-major.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {list(ATTRIBUTES)}")
    if value not in SYNONYMS[attribute]:
        raise ValueError(f"unknown {attribute} {value!r}; valid: {list(SYNONYMS[attribute])}")
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates must be a non-empty list of strings, got {templates!r}")
    phrases = SYNONYMS[attribute][value]
    if synonyms is not None:
        check_int(synonyms, "synonyms", allow_none=True)
        phrases = phrases[:synonyms]
    out = []
    for template in templates:
        if "{" + attribute + "}" not in template:
            raise ValueError(f"template {template!r} has no {{{attribute}}} slot")
        for phrase in phrases:
            fill = {a: "" for a in ATTRIBUTES}
            fill["shape"] = SHAPE_FILLERS[0]
            fill[attribute] = phrase.replace("|", " ")
            out.append(" ".join(template.format(**fill).split()))
    return out


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_texts(model: ContrastiveModel, texts: Sequence[str]) -> torch.Tensor:
    """Joint-space embeddings of caption strings, tokenised with the world's vocabulary: (P, E), in eval mode."""
    ids, _ = Tokenizer().encode(list(texts))
    was_training = model.training
    model.eval()
    z = model.embed({"text": torch.from_numpy(ids).to(_model_device(model))}, ["text"])["text"]
    model.train(was_training)
    return z


def zero_shot_classifier(model: ContrastiveModel, attribute: str, templates: Sequence[str] = PROMPT_TEMPLATES,
                         synonyms: int | None = None) -> torch.Tensor:
    """One joint-space vector per value of ``attribute``: (V, E), rows L2-normalised.

    Row v is the *prompt ensemble* of value v: the mean of the normalised embeddings of
    its :func:`prompts` (every template x synonym), normalised again (as CLIP does).
    Predict with :func:`zero_shot_predict`; no label is used.
    """
    rows = [F.normalize(embed_texts(model, prompts(attribute, v, templates, synonyms)).mean(0), dim=0)
            for v in ATTRIBUTES[attribute]]
    return torch.stack(rows)


def zero_shot_predict(embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """The value whose prompt embedding is most similar: embeddings (N, E), classifier (V, E) -> (N,) int64.

    Raises:
        ValueError: if the shapes are not (N, E) and (V, E) with the same E.
    """
    if embeddings.dim() != 2 or classifier.dim() != 2 or embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(f"embeddings must be (N, E) and classifier (V, E) with the same E, got "
                         f"{tuple(embeddings.shape)} and {tuple(classifier.shape)}")
    return (embeddings @ classifier.to(embeddings).T).argmax(1)


def embed_dataset(model: ContrastiveModel, dataset, device, modalities: Sequence[str] | None = None,
                  batch_size: int = EVAL_BATCH_SIZE) -> dict[str, torch.Tensor]:
    """Joint-space embeddings of every sample of ``dataset`` in order: {modality: (N, E)} float32 on the CPU.

    Runs in eval mode; the model's train/eval mode is restored afterwards.
    """
    return run_batches(model, lambda m, batch: m.embed(batch[0], modalities), dataset, device, batch_size)


def zero_shot_accuracies(model: ContrastiveModel, dataset: MultimodalDataset, device,
                         templates: Sequence[str] = PROMPT_TEMPLATES, synonyms: int | None = None,
                         embeddings: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Zero-shot accuracy of every attribute, each from the modality that shows it (``ZERO_SHOT_MODALITY``).

    Attributes whose modality the model lacks are skipped. Material is heard only when the
    clip holds a strike: ``"material"`` is the accuracy on those clips (ceiling 1.0) and
    ``"material, all clips"`` on every clip (ceiling ``strike_prob + (1 - strike_prob) / 4``).
    The labels (``dataset.scenes``) are read only here, to score.

    Args:
        embeddings: precomputed :func:`embed_dataset` output for ``dataset`` (saves a pass).
    """
    z = dict(embeddings) if embeddings is not None else embed_dataset(model, dataset, device)
    scenes, out = dataset.scenes, {}
    for attribute, modality in ZERO_SHOT_MODALITY.items():
        if modality not in model.encoders or modality not in z:
            continue
        pred = zero_shot_predict(z[modality], zero_shot_classifier(model, attribute, templates, synonyms).cpu())
        right = pred.numpy() == scenes.attrs[attribute]
        if attribute == "material":
            struck = scenes.events["audio.strike"]
            out["material"] = float(right[struck].mean()) if struck.any() else float("nan")
            out["material, all clips"] = float(right.mean())
        else:
            out[attribute] = float(right.mean())
    return out


# ----------------------------------------------------------------------------- retrieval and its ceiling

def retrieval_ceiling(world: World, scenes: Scenes, ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[int, float]]:
    """Expected Recall@K of the best possible ranker, image->text and text->image, on these paired scenes.

    Captions name each attribute only sometimes, so many captions fit an image equally
    well. With caption j naming attributes A_j and image i showing attributes I_i, the
    posterior odds that caption j is image i's caption are proportional to
    ``s_ij = prod_{a in A_j & I_i} |values(a)| * [scene i and j agree on a]``
    (:func:`mmcourse.data.matching.match_evidence`; a named attribute the image cannot
    check, such as material, is uninformative):
    matching a more specific caption is stronger evidence. The best ranker sorts by
    ``s``; items tied with the match are in random order, so query i is a hit at K with
    probability ``clip((K - above) / (tied + 1), 0, 1)`` (``above``: items scoring higher than
    the match, ``tied``: other items scoring the same). Text->image sorts the images of each
    caption by the same ``s``.

    Args:
        world: the world whose observation model says what images show and captions name.
        scenes: the N paired scenes (query i's match is gallery item i).
        ks: the cut-offs.

    Returns:
        ``{"image->text": {K: recall}, "text->image": {K: recall}}``.
    """
    score = match_evidence(annotate(world, scenes)).numpy()                  # (image i, caption j)

    def expected(s: np.ndarray) -> dict[int, float]:                         # rows are queries
        match = np.diag(s)[:, None]
        above = (s > match).sum(1)
        tied = (s == match).sum(1) - 1
        return {k: float(np.clip((k - above) / (tied + 1), 0, 1).mean()) for k in ks}

    return {"image->text": expected(score), "text->image": expected(score.T)}


def retrieval_recalls(embeddings: Mapping[str, torch.Tensor], query: str = "image", gallery: str = "text",
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[int, float]]:
    """Recall@K both ways between two modalities' paired embeddings (N, E) each (:func:`recall_at_k`).

    Returns:
        ``{"<query>-><gallery>": {K: recall}, "<gallery>-><query>": {K: recall}}``.
    """
    sim = embeddings[query] @ embeddings[gallery].T                           # (N, N) cosine similarities
    return {f"{query}->{gallery}": recall_at_k(sim, ks), f"{gallery}->{query}": recall_at_k(sim.T, ks)}


# ----------------------------------------------------------------------------- the stage-1 run

def stage1_checkpoint(profile: Profile | str, seed: int) -> Path:
    """The stage-1 checkpoint of ``profile`` and ``seed``: ``build/checkpoints/stage1_<profile>_seed<seed>.pt``.

    ``build/`` is ``$MMCOURSE_BUILD`` when set (:func:`mmcourse.utils.build_dir`).
    """
    return build_dir("checkpoints") / f"stage1_{get_profile(profile).name}_seed{seed}.pt"


def stage1_data(profile: Profile | str, seed: int) -> dict[str, MultimodalDataset]:
    """The splits stage 1 uses: ``make_splits`` of the profile's world with ``train_size`` training scenes.

    Dev and test have the profile's sizes and are never trained on.
    """
    profile = get_profile(profile)
    split = Split(train=stage1_config(profile).train_size, dev=profile.split.dev, test=profile.split.test)
    return make_splits(World(profile.world), split, seed)


def make_stage1_model(profile: Profile | str) -> ContrastiveModel:
    """An untrained stage-1 model: image CNN, text mean-pool, audio CNN, each of width 64, E from the profile."""
    return make_contrastive_model(embed_dim=stage1_config(profile).embed_dim)


def stage1_evaluator(dataset: MultimodalDataset, device, size: int | None = None):
    """``evaluate(model)`` for :func:`mmcourse.training.train`: on the first ``size`` scenes of ``dataset``,
    ``dev_zero_shot`` (mean zero-shot accuracy over the attributes, material on struck clips) and
    ``dev_recall1`` (mean image<->text Recall@1)."""
    subset = dataset if size is None or size >= len(dataset) else take(dataset, size)

    def evaluate(model: ContrastiveModel) -> dict[str, float]:
        z = embed_dataset(model, subset, device)
        zs = zero_shot_accuracies(model, subset, device, embeddings=z)
        recalls = retrieval_recalls(z, ks=(1,))
        return {"dev_zero_shot": float(np.mean([v for k, v in zs.items() if k != "material, all clips"])),
                "dev_recall1": float(np.mean([r[1] for r in recalls.values()]))}

    return evaluate


def pretrain_stage1(profile: Profile | str, seed: int, device, *, data: Mapping[str, MultimodalDataset] | None = None,
                    resume: bool = False, progress: bool | None = None) -> tuple[ContrastiveModel, History]:
    """Train the stage-1 contrastive model of a profile on unlabeled pairs and write its checkpoint.

    The loss (:func:`contrastive_step`) never reads a label; the dev split is used only to
    report zero-shot accuracy and Recall@1 after every epoch (:func:`stage1_evaluator`).
    The checkpoint goes to :func:`stage1_checkpoint` ``(profile, seed)``.

    Args:
        profile: a Profile or its name; sizes and epochs come from :func:`mmcourse.config.stage1_config`.
        seed: seeds the model's initialisation, the shuffling and (without ``data``) the data.
        device: where to train.
        data: the splits of :func:`stage1_data` if already generated (its "train" and "dev" are used).
        resume: continue (or return at once) from an existing checkpoint instead of training afresh.
        progress: progress bars (None: on unless ``$MMCOURSE_PROGRESS=0``).

    Returns:
        ``(model, history)``: the trained model on ``device`` in eval mode, and the run's History.
    """
    profile, device = get_profile(profile), torch.device(device)
    cfg = stage1_config(profile)
    data = data if data is not None else stage1_data(profile, seed)
    torch.manual_seed(seed)
    model = make_stage1_model(profile).to(device)
    config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine",
                         grad_clip=1.0, monitor="dev_zero_shot", progress=progress)
    loader = make_loader(data["train"], cfg.batch_size, shuffle=True, seed=seed)
    history = train(model, contrastive_step, loader, config, device,
                    evaluate=stage1_evaluator(data["dev"], device, cfg.eval_size),
                    checkpoint=stage1_checkpoint(profile, seed), resume=resume)
    return model.eval(), history


def load_stage1(profile: Profile | str, seed: int, device) -> ContrastiveModel:
    """The stage-1 model of ``profile`` and ``seed``: loaded from its checkpoint, or trained first if there is none.

    A finished checkpoint at :func:`stage1_checkpoint` is loaded; an unfinished one is resumed;
    without one (or with one from a different model, e.g. after a code change, with a warning)
    stage 1 is trained by :func:`pretrain_stage1`, which writes the checkpoint
    (:func:`mmcourse.training.load_or_train`).

    Returns:
        A :class:`ContrastiveModel` on ``device`` in eval mode; ``model.encoders`` holds the
        "audio", "image" and "text" encoders.
    """
    profile, device = get_profile(profile), torch.device(device)
    return load_or_train(stage1_checkpoint(profile, seed), lambda: make_stage1_model(profile),
                         lambda resume: pretrain_stage1(profile, seed, device, resume=resume, progress=False)[0],
                         device)
