"""Graded variants of assignment 15: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["shard", "bytes_per_rank"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "contiguous blocks per rank instead of every W-th index": {
        "cell": "shard",
        "source": '''def shard(n, world_size, rank, seed, epoch):
    """The indices rank `rank` of `world_size` reads in epoch `epoch` (DistributedSampler, drop_last=False)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = math.ceil(n / world_size)
    order = (order * math.ceil(per_rank * world_size / n))[:per_rank * world_size]
    return order[rank * per_rank:(rank + 1) * per_rank]
''',
        "loses": ["test_shard_values"],
    },
    "the ranks' gradients summed instead of averaged": {
        "cell": "averaged_gradients",
        "source": '''def averaged_gradients(model, loss_fn, shards):
    """The mean over ranks of each shard's gradient: [tensor like p for p in model.parameters()]."""
    params = list(model.parameters())
    per_rank = [torch.autograd.grad(loss_fn(model(x), y), params) for x, y in shards]
    return [torch.stack(g).sum(0) for g in zip(*per_rank)]
''',
        "loses": ["test_average_linear", "test_average_mlp"],
    },
    "each rank's local loss over its own pairs only": {
        "cell": "gathered_loss",
        "source": '''def gathered_loss(local_a, local_b, all_a, all_b, rank, logit_scale):
    """The global batch's InfoNCE on rank `rank`, with this rank's own embeddings in their slot."""
    return info_nce(local_a, local_b, logit_scale)
''',
        "loses": ["test_gathered_value", "test_gathered_own_gradient", "test_gathered_sum"],
    },
    "the gathered loss multiplied by the world size because DDP averages": {
        "cell": "gathered_loss",
        "source": '''def gathered_loss(local_a, local_b, all_a, all_b, rank, logit_scale):
    """The global batch's InfoNCE on rank `rank`, with this rank's own embeddings in their slot."""
    b = len(local_a)
    world_size = len(all_a) // b
    a = torch.cat([all_a[:rank * b], local_a, all_a[(rank + 1) * b:]])
    t = torch.cat([all_b[:rank * b], local_b, all_b[(rank + 1) * b:]])
    return world_size * info_nce(a, t, logit_scale)
''',
        "loses": ["test_gathered_value", "test_gathered_own_gradient", "test_gathered_sum"],
    },
}
