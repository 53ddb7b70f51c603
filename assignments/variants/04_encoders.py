"""Graded variants of assignment 04: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["patchify", "shuffle_words"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "patches flattened channel-last (no longer the conv's filter order)": {
        "cell": "patchify",
        "source": '''def patchify(images, p):
    """(B, 3, S, S) images -> (B, P, 3 * p * p) patches, P = (S // p) ** 2, row-major, channel-first inside."""
    B, ch, S, _ = images.shape
    x = images.unfold(2, p, p).unfold(3, p, p)                           # (B, 3, S/p, S/p, p, p)
    x = x.permute(0, 2, 3, 4, 5, 1)                                       # (B, S/p, S/p, p, p, 3): channel last
    return x.reshape(B, (S // p) ** 2, ch * p * p)
''',
        "loses": ["test_patch_embed_conv"],
    },
    "patches numbered column by column": {
        "cell": "patchify",
        "source": '''def patchify(images, p):
    """(B, 3, S, S) images -> (B, P, 3 * p * p) patches, P = (S // p) ** 2, row-major, channel-first inside."""
    B, ch, S, _ = images.shape
    x = images.unfold(2, p, p).unfold(3, p, p)                           # (B, 3, S/p, S/p, p, p)
    x = x.permute(0, 3, 2, 1, 4, 5)                                       # grid columns first
    return x.reshape(B, (S // p) ** 2, ch * p * p)
''',
        "loses": ["test_patchify", "test_patch_embed_conv"],
    },
    "forgets the final LayerNorm": {
        "cell": "vit_param_count",
        "source": '''def vit_param_count(image_size, patch_size, dim, layers):
    """The number of parameters of ViTImageEncoder(image_size, patch_size, dim, heads, layers), by formula."""
    patches = (image_size // patch_size) ** 2
    embedding = 3 * patch_size ** 2 * dim + dim + dim + (patches + 1) * dim
    block = 4 * dim * dim + 4 * dim + 4 * dim + 4 * dim * dim + 3 * dim
    return embedding + layers * block
''',
        "loses": ["test_vit_param_count"],
    },
    "shuffles whole rows, moving the padding": {
        "cell": "shuffle_words",
        "source": '''def shuffle_words(ids, generator):
    """(B, L) int64 token ids padded at the end -> (B, L), the real words of each row permuted at random."""
    return torch.stack([row[torch.randperm(len(row), generator=generator)] for row in ids])
''',
        "loses": ["test_shuffle_keeps"],
    },
    "averages over the padding too": {
        "cell": "mean_pool",
        "source": '''def mean_pool(x, mask):
    """Mean of token features over real tokens: (B, L, D) float, (B, L) bool -> (B, D)."""
    return x.mean(dim=1)
''',
        "loses": ["test_mean_pool", "test_mean_pool_order"],
    },
    "forgets the clips without a strike": {
        "cell": "audio_ceiling",
        "source": "my_audio_ceiling = 0.3 * (1 / 5)\n",
        "loses": ["test_audio_ceiling"],
    },
}
