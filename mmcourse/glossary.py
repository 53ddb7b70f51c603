"""The source article's key terms (Chinese) with the English the course uses,
and the article's pipeline (its §2 diagram) as a list of edges."""
from __future__ import annotations

# (Chinese term, English term, where the course teaches it)
GLOSSARY: tuple[tuple[str, str, str], ...] = (
    ("多模态数据", "multimodal data", "01"),
    ("模态", "modality", "01"),
    ("跨模态融合", "cross-modal fusion", "05"),
    ("融合函数", "fusion function", "03"),
    ("融合权重矩阵", "fusion weight matrix", "03"),
    ("联合表示", "joint representation", "03"),
    ("预训练", "pretraining (stage 1)", "06"),
    ("无标签数据", "unlabeled data", "06"),
    ("联合训练", "joint training (stage 2)", "07"),
    ("任务适配", "task adaptation (stage 3)", "08"),
    ("微调", "fine-tuning", "08"),
    ("跨模态模型", "cross-modal model", "02"),
    ("推理", "inference", "10"),
    ("损失函数", "loss function", "03"),
    ("任务损失", "task loss", "03"),
    ("正则化", "regularisation", "03"),
    ("正则化系数", "regularisation coefficient (λ)", "03"),
    ("泛化能力", "generalisation", "02"),
    ("鲁棒性", "robustness", "05"),
    ("跨模态语义对齐", "cross-modal semantic alignment", "06"),
    ("领域自适应", "domain adaptation", "17"),
    ("动态融合", "dynamic fusion", "05"),
    ("知识图谱融合", "knowledge-graph fusion", "17"),
    ("跨模态推理", "cross-modal reasoning", "16"),
    ("超参数的自动搜索", "automatic hyper-parameter search", "18"),
    ("计算资源需求高", "high compute demand", "14"),
    ("模型剪枝", "model pruning", "14"),
    ("量化加速", "quantisation", "14"),
    ("模型的保存和部署", "saving and deploying a model", "14"),
    ("智能安防", "intelligent surveillance", "11"),
    ("医疗影像分析", "medical image analysis", "12"),
    ("智能驾驶", "intelligent driving", "13"),
)

# The article's pipeline diagram: multimodal data -> fusion -> joint training ->
# task adaptation -> cross-modal model -> inference, with a pretraining branch.
PIPELINE_EDGES: tuple[tuple[str, str], ...] = (
    ("multimodal data", "cross-modal fusion"),
    ("cross-modal fusion", "joint training"),
    ("joint training", "task adaptation"),
    ("task adaptation", "cross-modal model"),
    ("multimodal data", "pretraining"),
    ("pretraining", "cross-modal model"),
    ("cross-modal model", "inference"),
)
