"""mmcourse.distributed in one process (the torchrun launches are in tests/distributed/, ``make torchrun``)."""
import pytest
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from mmcourse import distributed as D
from mmcourse.losses import info_nce
from mmcourse.pretrain import contrastive_step

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in D.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def group_of_one():
    """A gloo process group of world size 1 inside the test process, always destroyed afterwards."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_init_is_a_no_op_without_torchrun(no_torchrun):
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and info.device == torch.device("cpu") and not dist.is_initialized()
    assert D.world() == (0, 1)
    D.cleanup()
    D.barrier()                                   # both do nothing without a group


def test_backend_follows_the_device():
    assert D.backend_for("cpu") == "gloo"
    assert D.backend_for("cuda") == "nccl" and D.backend_for(torch.device("cuda", 1)) == "nccl"
    with pytest.raises(ValueError, match="no distributed backend for device type 'mps'"):
        D.backend_for("mps")


def test_bad_torchrun_variables_are_named(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"\$WORLD_SIZE must be a non-negative integer"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"\$RANK \(2\) must be below \$WORLD_SIZE \(2\)"):
        D.init_distributed("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ValueError, match=r"\$LOCAL_RANK"):
        D.init_distributed("cpu")


@pytest.mark.parametrize("n,world_size,drop_last,shuffle", [(10, 3, True, True), (10, 3, False, True),
                                                             (7, 2, False, False), (1, 4, False, True)])
def test_shard_indices_is_distributed_samplers_rule(n, world_size, drop_last, shuffle):
    data = list(range(n))
    shards = []
    for rank in range(world_size):
        for epoch in (0, 1):
            sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=5,
                                         drop_last=drop_last)
            sampler.set_epoch(epoch)
            mine = D.shard_indices(n, world_size, rank, seed=5, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
            assert mine.tolist() == list(sampler)
        shards.append(set(D.shard_indices(n, world_size, rank, seed=5, shuffle=shuffle, drop_last=drop_last).tolist()))
    if drop_last:                                  # disjoint, and together all but the tail
        assert sum(map(len, shards)) == len(set().union(*shards)) == n - n % world_size
    else:
        assert set().union(*shards) == set(range(n))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        D.shard_indices(10, 3, 3)


def test_loader_of_a_world_of_one_reads_every_sample_once():
    data = D.make_data(D.RunConfig(scenes=20))
    loader = D.distributed_loader(data, 8, seed=1)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [8, 8]             # the tail of 4 is dropped
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 1


def test_gathered_contrastive_loss_in_one_process_is_the_models_loss(group_of_one):
    config = D.RunConfig(scenes=12, dim=8, embed_dim=4)
    module, batch = D.make_model(config), next(iter(D.distributed_loader(D.make_data(config), 6, seed=0)))
    got = D.gathered_contrastive_step(module, batch)
    want = contrastive_step(module.model, batch)
    assert set(got) == set(want) == {"loss", "image-text"}
    assert torch.allclose(got["loss"], want["loss"], atol=1e-7)
    x = torch.randn(3, 4, requires_grad=True)
    assert D.gather_features(x) is x                          # a world of one gathers nothing
    with pytest.raises(ValueError, match="needs a batch dimension"):
        D.gather_features(torch.tensor(1.0))


def test_simulated_ranks_gather_and_average_to_the_full_batch_gradient():
    """What gather_features does for W ranks, written out: W copies of the same global loss, each rank's
    gradient of its own slice summed over the copies, then DDP's mean over ranks."""
    torch.manual_seed(0)
    W, b, E = 3, 2, 4
    a, t = torch.randn(W * b, E, requires_grad=True), torch.randn(W * b, E, requires_grad=True)
    info_nce(a, t, 2.0).backward()                            # one process, the global batch
    full = a.grad.clone()
    shards = [a.detach()[r * b:(r + 1) * b].clone().requires_grad_() for r in range(W)]
    for rank in range(W):                                     # each rank's copy of the gathered loss
        gathered = torch.cat([s if r == rank else s.detach() for r, s in enumerate(shards)])
        info_nce(gathered, t.detach(), 2.0).backward()
    summed = torch.cat([s.grad for s in shards])              # what the all-gather's backward hands each rank
    assert torch.allclose(summed, full, atol=1e-6)


def test_wrap_ddp_refuses_batch_norm_and_evaluator_broadcasts(group_of_one):
    with pytest.raises(ValueError, match="batch-norm layers"):
        D.wrap_ddp(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "cpu")
    model = D.wrap_ddp(nn.Linear(2, 1), "cpu")
    assert isinstance(model, nn.parallel.DistributedDataParallel) and D.unwrap(model) is model.module
    evaluate = D.rank0_evaluator(lambda m: {"dev_accuracy": float(m.weight.numel())})
    assert evaluate(model) == {"dev_accuracy": 2.0}
    assert D.local_numel(model) == 3
    assert torch.equal(D.all_reduce_mean(torch.tensor([2.0, 4.0])), torch.tensor([2.0, 4.0]))
    with pytest.raises(RuntimeError, match="needs a process group"):
        dist.destroy_process_group()
        try:
            D.shard_fsdp(nn.Linear(2, 2))
        finally:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
