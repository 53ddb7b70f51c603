"""The course's reading list: every paper a docstring or a notebook cites, with an identifier one can check.

Each :class:`Reference` gives the authors' surnames, the year, the title, and an arXiv identifier and/or a
DOI; two conference papers that have neither (Bergstra et al. 2011, NeurIPS; Hutter et al. 2014, ICML/PMLR)
carry the stable address of their proceedings or open archive instead (``url``). Every entry was looked up
(arXiv abstract pages, the publishers' pages) before it was listed. The article's own list (its §7.3)
cannot be verified: it gives five paper titles, each with a one-line summary and no author, year, venue or
identifier to look them up by.

:func:`find_citations` reads citations in the text forms the course uses, and :func:`unlisted` names those
missing from :data:`REFERENCES` (the test ``tests/test_references.py`` runs it over the package and notebooks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")                      # the post-2007 form, e.g. 1706.03762
DOI = re.compile(r"^10\.\d{4,9}/\S+$")                          # Crossref's recommended pattern


@dataclass(frozen=True)
class Reference:
    """One paper.

    Attributes:
        key: a short unique name (``vaswani2017``).
        authors: surnames of the authors, in order (the first ones at least; "et al." citations name the first).
        year: the year the course cites (the venue's, which can differ from the preprint's).
        title: the title.
        arxiv: the arXiv identifier (``YYMM.NNNNN``), or None.
        doi: the DOI, or None.
        url: the proceedings or archive address of a paper with neither identifier, else None.
        chapters: the chapters (two-digit numbers) that use it.
    """

    key: str
    authors: tuple[str, ...]
    year: int
    title: str
    arxiv: str | None = None
    doi: str | None = None
    url: str | None = None
    chapters: tuple[str, ...] = ()

    def __post_init__(self):
        if self.arxiv is not None and not ARXIV_ID.match(self.arxiv):
            raise ValueError(f"{self.key}: arxiv {self.arxiv!r} is not of the form YYMM.NNNNN")
        if self.doi is not None and not DOI.match(self.doi):
            raise ValueError(f"{self.key}: doi {self.doi!r} is not of the form 10.NNNN/suffix")
        if self.arxiv is None and self.doi is None and self.url is None:
            raise ValueError(f"{self.key}: give an arXiv id, a DOI or (for neither) a proceedings url")

    @property
    def identifier(self) -> str:
        """``arXiv:...``, else ``doi:...``, else the url."""
        return f"arXiv:{self.arxiv}" if self.arxiv else f"doi:{self.doi}" if self.doi else str(self.url)


R = Reference
REFERENCES: tuple[Reference, ...] = (
    R("akiba2019", ("Akiba", "Sano", "Yanase", "Ohta", "Koyama"), 2019,
      "Optuna: A Next-generation Hyperparameter Optimization Framework", "1907.10902",
      "10.1145/3292500.3330701", chapters=("18",)),
    R("antol2015", ("Antol", "Agrawal", "Lu", "Mitchell", "Batra", "Zitnick", "Parikh"), 2015,
      "VQA: Visual Question Answering", "1505.00468", chapters=("16",)),
    R("arevalo2017", ("Arevalo", "Solorio", "Montes-y-Gómez", "González"), 2017,
      "Gated Multimodal Units for Information Fusion", "1702.01992", chapters=("05", "13")),
    R("bergstra2011", ("Bergstra", "Bardenet", "Bengio", "Kégl"), 2011,
      "Algorithms for Hyper-Parameter Optimization (NeurIPS 2011, pp. 2546-2554)",
      url="https://hal.science/hal-00642998", chapters=("18",)),
    R("dosovitskiy2021", ("Dosovitskiy", "Beyer", "Kolesnikov"), 2021,
      "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", "2010.11929",
      chapters=("04",)),
    R("ganin2016", ("Ganin", "Ustinova", "Ajakan", "Germain", "Larochelle", "Laviolette", "Marchand", "Lempitsky"),
      2016, "Domain-Adversarial Training of Neural Networks", "1505.07818", chapters=("17",)),
    R("girdhar2023", ("Girdhar", "El-Nouby", "Liu", "Singh", "Alwala", "Joulin", "Misra"), 2023,
      "ImageBind: One Embedding Space To Bind Them All", "2305.05665", chapters=("06",)),
    R("guo2017", ("Guo", "Pleiss", "Sun", "Weinberger"), 2017, "On Calibration of Modern Neural Networks",
      "1706.04599", chapters=("12",)),
    R("harutyunyan2019", ("Harutyunyan", "Khachatrian", "Kale", "Ver Steeg", "Galstyan"), 2019,
      "Multitask learning and benchmarking with clinical time series data", "1703.07771",
      "10.1038/s41597-019-0103-9", chapters=("12",)),
    R("hinton2015", ("Hinton", "Vinyals", "Dean"), 2015, "Distilling the Knowledge in a Neural Network",
      "1503.02531", chapters=("14",)),
    R("houlsby2019", ("Houlsby", "Giurgiu", "Jastrzebski"), 2019, "Parameter-Efficient Transfer Learning for NLP",
      "1902.00751", chapters=("08",)),
    R("hu2021", ("Hu", "Shen", "Wallis", "Allen-Zhu", "Li", "Wang", "Wang", "Chen"), 2021,
      "LoRA: Low-Rank Adaptation of Large Language Models", "2106.09685", chapters=("08",)),
    R("hutter2014", ("Hutter", "Hoos", "Leyton-Brown"), 2014,
      "An Efficient Approach for Assessing Hyperparameter Importance (ICML 2014, PMLR 32)",
      url="https://proceedings.mlr.press/v32/hutter14.html", chapters=("18",)),
    R("kim2017", ("Kim", "On", "Lim", "Kim", "Ha", "Zhang"), 2017, "Hadamard Product for Low-rank Bilinear Pooling",
      "1610.04325", chapters=("05",)),
    R("kim2021", ("Kim", "Son", "Kim"), 2021, "ViLT: Vision-and-Language Transformer Without Convolution or "
      "Region Supervision", "2102.03334", chapters=("06",)),
    R("lester2021", ("Lester", "Al-Rfou", "Constant"), 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
      "2104.08691", chapters=("08",)),
    R("li2017", ("Li", "Kadav", "Durdanovic", "Samet", "Graf"), 2017, "Pruning Filters for Efficient ConvNets",
      "1608.08710", chapters=("14",)),
    R("li2021", ("Li", "Selvaraju", "Gotmare", "Joty", "Xiong", "Hoi"), 2021,
      "Align before Fuse: Vision and Language Representation Learning with Momentum Distillation", "2107.07651",
      chapters=("06", "07")),
    R("lin2017", ("Lin", "Goyal", "Girshick", "He", "Dollár"), 2017, "Focal Loss for Dense Object Detection",
      "1708.02002", chapters=("03",)),
    R("liu2018", ("Liu", "Shen", "Lakshminarasimhan", "Liang", "Zadeh", "Morency"), 2018,
      "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", "1806.00064", chapters=("05",)),
    R("loshchilov2019", ("Loshchilov", "Hutter"), 2019, "Decoupled Weight Decay Regularization", "1711.05101",
      chapters=("03",)),
    R("neverova2016", ("Neverova", "Wolf", "Taylor", "Nebout"), 2016,
      "ModDrop: adaptive multi-modal gesture recognition", "1501.00102", "10.1109/TPAMI.2015.2461544",
      chapters=("05", "07", "13")),
    R("peng2022", ("Peng", "Wei", "Deng", "Wang", "Hu"), 2022,
      "Balanced Multimodal Learning via On-the-fly Gradient Modulation", "2203.15332", chapters=("07",)),
    R("perez2018", ("Perez", "Strub", "de Vries", "Dumoulin", "Courville"), 2018,
      "FiLM: Visual Reasoning with a General Conditioning Layer", "1709.07871", chapters=("05", "16")),
    R("radford2021", ("Radford", "Kim", "Hallacy"), 2021,
      "Learning Transferable Visual Models From Natural Language Supervision", "2103.00020", chapters=("06", "15")),
    R("rajbhandari2020", ("Rajbhandari", "Rasley", "Ruwase", "He"), 2020,
      "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", "1910.02054", chapters=("15",)),
    R("sultani2018", ("Sultani", "Chen", "Shah"), 2018, "Real-world Anomaly Detection in Surveillance Videos",
      "1801.04264", chapters=("11",)),
    R("sun2016", ("Sun", "Saenko"), 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
      "1607.01719", chapters=("17",)),
    R("szegedy2016", ("Szegedy", "Vanhoucke", "Ioffe", "Shlens", "Wojna"), 2016,
      "Rethinking the Inception Architecture for Computer Vision", "1512.00567", chapters=("03",)),
    R("vaswani2017", ("Vaswani", "Shazeer", "Parmar", "Uszkoreit", "Jones", "Gomez", "Kaiser", "Polosukhin"), 2017,
      "Attention Is All You Need", "1706.03762", chapters=("04",)),
    R("wang2020", ("Wang", "Wei", "Dong", "Bao", "Yang", "Zhou"), 2020,
      "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
      "2002.10957", chapters=("09",)),
    R("wu2020", ("Wu", "Liu", "Shi", "Sun", "Shao", "Wu", "Yang"), 2020,
      "Not only Look, but also Listen: Learning Multimodal Violence Detection under Weak Supervision", "2007.04687",
      "10.1007/978-3-030-58577-8_20", chapters=("11",)),
    R("zadeh2017", ("Zadeh", "Chen", "Poria", "Cambria", "Morency"), 2017,
      "Tensor Fusion Network for Multimodal Sentiment Analysis", "1707.07250", chapters=("05",)),
)
del R

_NAME = r"[A-Z][A-Za-z'\-]+"
# "Vaswani et al. 2017", "Szegedy et al., 2016", "Lin et al. (2017", "Sun & Saenko 2016", "Loshchilov & Hutter,
# 2019" and "Hinton, Vinyals and Dean 2015" (the last two surnames are read: "Vinyals", matched to any author); the year may follow a comma or an opening parenthesis.
CITATION = re.compile(rf"\b({_NAME})(?: et al\.| (?:&|and) ({_NAME})),? \(?((?:19|20)\d\d)\b")


def find_citations(text: str) -> set[tuple[str, int]]:
    """Every (surname, year) cited in ``text`` in the forms of :data:`CITATION` (the first surname given)."""
    return {(m.group(1), int(m.group(3))) for m in CITATION.finditer(text)}


def lookup(surname: str, year: int) -> list[Reference]:
    """The references with an author ``surname`` and ``year`` (a citation may name any listed author)."""
    return [r for r in REFERENCES if r.year == year and surname in r.authors]


def unlisted(citations) -> list[tuple[str, int]]:
    """The (surname, year) citations that no reference matches, sorted."""
    return sorted(c for c in set(citations) if not lookup(*c))


def by_chapter() -> dict[str, list[Reference]]:
    """{chapter: its references, by key}, chapters sorted."""
    out: dict[str, list[Reference]] = {}
    for r in REFERENCES:
        for ch in r.chapters:
            out.setdefault(ch, []).append(r)
    return {ch: sorted(out[ch], key=lambda r: r.key) for ch in sorted(out)}
