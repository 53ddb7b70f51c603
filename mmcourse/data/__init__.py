"""The synthetic multimodal world and real-data loaders.

Submodules: ``world`` (attributes, observation model, labels), ``render``
(images, audio, spectrograms), ``text`` (captions, vocabulary, tokenizer,
tags), ``bayes`` (exact Bayes limits), ``dataset`` (tensors, batching),
``matching`` (which caption fits which image), ``manifest`` and ``conll``
(loading real files).
"""
from .bayes import BayesClassifier, all_subsets, bayes_accuracy, bayes_classifier, bayes_table
from .conll import read_conll, write_conll
from .dataset import (BatchedDataset, MultimodalDataset, Split, collate, gather_batch, generate, make_loader,
                      make_splits, split_dataset, split_indices, subset, take)
from .matching import annotate, caption_fits, caption_fits_image, match_evidence
from .manifest import (LazyManifestDataset, ManifestDataset, UnknownWordsWarning, class_order, load_manifest,
                       load_manifest_splits, read_manifest, write_manifest)
from .render import log_mel_spectrogram, render_audio, render_images
from .text import (ENTITY_TYPES, PAD_ID, TAGS, TEMPLATES, UNK_ID, WORLD_VOCAB, Captions, Tokenizer, Vocab, bag_of_words,
                   build_vocab, generate_captions, unknown_fraction)
from .world import (ATTRIBUTES, LABEL_RULES, MODALITIES, RINGING_MATERIALS, LabelRule, Scenes, World, WorldConfig,
                    observation_model, register_label_rule)
from ..utils import to_device  # batches are moved to a device by the one policy module

__all__ = [
    "ATTRIBUTES", "ENTITY_TYPES", "LABEL_RULES", "MODALITIES", "PAD_ID", "RINGING_MATERIALS", "TAGS", "TEMPLATES",
    "UNK_ID", "WORLD_VOCAB", "BatchedDataset", "BayesClassifier", "Captions", "LabelRule", "LazyManifestDataset",
    "ManifestDataset", "UnknownWordsWarning", "build_vocab", "class_order", "gather_batch", "load_manifest_splits",
    "split_dataset", "split_indices", "unknown_fraction",
    "MultimodalDataset", "Scenes", "Split", "Tokenizer", "Vocab", "World", "WorldConfig", "all_subsets", "bag_of_words",
    "annotate", "bayes_accuracy", "bayes_classifier", "bayes_table", "caption_fits", "caption_fits_image", "collate", "generate", "generate_captions",
    "load_manifest", "log_mel_spectrogram", "make_loader", "make_splits", "match_evidence", "observation_model",
    "read_conll", "read_manifest", "register_label_rule", "render_audio", "render_images", "subset", "take", "to_device", "write_conll",
    "write_manifest",
]
