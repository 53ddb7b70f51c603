"""mmcourse: the helper package of the multimodal deep learning course.

One module per concept; the notebooks import from here what earlier chapters
built. ``utils`` (seeding, device, precision), ``modality`` (modality names,
the checks of a modality dict, presence masks, modality dropout: one convention
for missing modalities), ``config`` (profiles), ``data`` (the synthetic world,
Bayes limits, loaders), ``losses``, ``encoders``, ``fusion``, ``robustness``
(measuring missing and noisy modalities), ``models``,
``training`` (the loop every stage uses: schedules, checkpoints, resume),
``evaluation`` (the one loop every evaluation pass uses),
``pretrain`` (stage 1: contrastive and masked pretraining, zero-shot,
retrieval), ``joint`` (stage 2: multi-task joint training, hard negatives,
modality imbalance), ``adapt`` (stage 3: linear probe, top layers, full
fine-tuning, LoRA, adapters, prompt tuning; the downstream task), ``tagging``
(grounded token tagging and its token- and entity-level reports), ``minilm``
(the pretrained all-MiniLM-L6-v2 text tower, loaded offline), ``pipeline``
(the three stages as one run), ``inference`` (``predict`` on raw inputs), ``metrics``
(accuracy, calibration, retrieval, and the detection scores AUROC and average precision),
``applications`` (the worlds of the article's applications: surveillance, medical imaging and
driving, each with the exact Bayes value of its field's metric), ``plots``, ``report`` and
``course`` (running every notebook).
"""
__version__ = "0.1.0"
