"""The torchrun side of tests/distributed: ``python -m torch.distributed.run --standalone --nproc-per-node=2
tests/distributed/worker.py {checks|resume} OUT_DIR``.

Every rank first computes the single-process references (no process group yet: one process on the whole
global batch), then joins the group and runs the same steps data-parallel. Each rank writes
``OUT_DIR/<mode>_rank<r>.json`` with the largest differences; the pytest side asserts on them.

``checks``: (1) the gathered contrastive loss and the DDP-averaged gradients against one process on the
global batch, and the same with the loss wrongly multiplied by W (which the check must catch); (2) DDP
training through ``mmcourse.training.train`` for K steps against one process; (3) FSDP2 the same; then (4a)
a DDP run with a checkpoint every 2 steps in which rank 1 dies (``os._exit``) after step KILL_AT.
``resume``: (4b) the relaunched run resumes from the last checkpoint and must end with the weights of an
uninterrupted single-process run.
"""
import json
import os
import sys
from pathlib import Path

import torch

from mmcourse import distributed as D
from mmcourse.data.dataset import collate
from mmcourse.training import TrainConfig, train

MODE, OUT = sys.argv[1], Path(sys.argv[2])
W, RANK = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
CFG = D.RunConfig(scenes=96, batch_size=8, dim=16, embed_dim=8, lr=1e-2, seed=3)
K, STEPS, EVERY, KILL_AT = 3, 8, 2, 5          # equality steps; resume run: steps, checkpoint period, crash step
torch.set_num_threads(1)
data = D.make_data(CFG)


def global_batches(steps: int) -> list:
    """The global batches of one process: step k holds every rank's k-th shard batch, in rank order
    (DistributedSampler's shards, :func:`mmcourse.distributed.shard_indices`, reshuffled each epoch)."""
    b = CFG.batch_size
    per_epoch = len(data) // W // b
    batches = []
    for k in range(steps):
        epoch, j = divmod(k, per_epoch)
        shards = [D.shard_indices(len(data), W, r, seed=CFG.seed, epoch=epoch) for r in range(W)]
        batches.append(collate([data[int(i)] for r in range(W) for i in shards[r][j * b:(j + 1) * b]]))
    return batches


def config(steps: int, **extra) -> TrainConfig:
    """K or STEPS steps, evaluated after each; epochs=2 lets the data-parallel run (6 steps per epoch) cross an
    epoch boundary."""
    settings = dict(eval_every=1, monitor="dev_loss", mode="min", **extra)
    return TrainConfig(epochs=2, max_steps=steps, lr=CFG.lr, warmup_steps=1, progress=False, log_every=1000, **settings)


DEV = collate([data[i] for i in range(16)])[0]          # a small dev batch (training scenes: only a number to compare)


def dev_loss(module) -> dict:
    """The dev metric: the plain (ungathered) contrastive loss of DEV; it runs on rank 0 alone, so no collective."""
    return {"dev_loss": float(module.model.loss(DEV)["loss"])}


def single_process_run(steps: int, with_history: bool = False):
    model = D.make_model(CFG)
    history = train(model, D.gathered_contrastive_step, global_batches(steps), config(steps), "cpu", evaluate=dev_loss)
    return (D.full_state(model), history) if with_history else D.full_state(model)


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def grads_of(module, batch, scale: float = 1.0) -> tuple[float, dict]:
    module.zero_grad(set_to_none=True)
    loss = D.gathered_contrastive_step(module, batch)["loss"]
    (scale * loss).backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in D.unwrap(module).named_parameters()}


def local_batch(batch: dict, rank: int):
    (inputs, labels), b = batch, CFG.batch_size
    return {m: v[rank * b:(rank + 1) * b] for m, v in inputs.items()}, labels[rank * b:(rank + 1) * b]


def write(name: str, result: dict) -> None:
    (OUT / f"{name}_rank{RANK}.json").write_text(json.dumps(result))


if MODE == "checks":
    first = global_batches(1)[0]
    ref_loss, ref_grads = grads_of(D.make_model(CFG), first)
    ref_k, ref_history = single_process_run(K, with_history=True)
    info = D.init_distributed("cpu")
    result = {"backend": info.backend, "world_size": info.world_size}
    ddp = D.wrap_ddp(D.make_model(CFG), info.device)
    mine = local_batch(first, info.rank)
    assert torch.equal(mine[0]["image"], next(iter(D.distributed_loader(data, CFG.batch_size, CFG.seed)))[0]["image"])
    loss, grads = grads_of(ddp, mine)
    result["loss_diff"] = abs(loss - ref_loss)
    result["grad_diff"] = max_diff(grads, ref_grads)
    result["grad_scale"] = max(float(ref_grads[n].abs().max()) for n in ref_grads)
    _, bad = grads_of(ddp, mine, scale=W)                  # the classic bug: "DDP averages, so multiply by W"
    result["bug_grad_diff"] = max_diff(bad, ref_grads)
    ddp = D.wrap_ddp(D.make_model(CFG), info.device)
    loader = D.distributed_loader(data, CFG.batch_size, CFG.seed)
    history = train(ddp, D.gathered_contrastive_step, loader, config(K), info.device,
                    evaluate=D.rank0_evaluator(dev_loss))
    result["ddp_weight_diff"] = max_diff(D.full_state(ddp), ref_k)
    result["dev_loss_diff"] = max(abs(a - b) for a, b in zip(history.metrics["dev_loss"], ref_history.metrics["dev_loss"]))
    result["train_loss_diff"] = max(abs(a - b) for a, b in zip(history.train_loss, ref_history.train_loss))
    result["evaluations"] = len(history.metrics["dev_loss"])
    fsdp = D.shard_fsdp(D.make_model(CFG))
    result["fsdp_local_params"], result["total_params"] = D.local_numel(fsdp), sum(v.numel() for v in ref_k.values())
    train(fsdp, D.gathered_contrastive_step, loader, config(K), info.device)
    result["fsdp_weight_diff"] = max_diff(D.full_state(fsdp), ref_k)
    write("checks", result)
    D.barrier()
    ddp = D.wrap_ddp(D.make_model(CFG), info.device)
    crash = lambda state: os._exit(17) if info.rank == 1 and state.step == KILL_AT else False   # noqa: E731
    train(ddp, D.gathered_contrastive_step, D.distributed_loader(data, CFG.batch_size, CFG.seed),
          config(STEPS, checkpoint_every=EVERY), info.device, checkpoint=OUT / "run.pt", stop=crash)
    write("uninterrupted_by_mistake", {})                  # never reached: rank 1 dies, torchrun stops rank 0
elif MODE == "resume":
    reference = single_process_run(STEPS)
    info = D.init_distributed("cpu")
    from mmcourse.training import read_checkpoint
    resumed_from = read_checkpoint(OUT / "run.pt")["run"]["step"]
    ddp = D.wrap_ddp(D.make_model(CFG), info.device)
    history = train(ddp, D.gathered_contrastive_step, D.distributed_loader(data, CFG.batch_size, CFG.seed),
                    config(STEPS, checkpoint_every=EVERY), info.device, checkpoint=OUT / "run.pt", resume=True)
    D.barrier()                                            # rank 0 has written the final checkpoint
    write("resume", {"resumed_from": resumed_from, "final_step": read_checkpoint(OUT / "run.pt")["run"]["step"],
                     "weight_diff": max_diff(D.full_state(ddp), reference), "stop_reason": history.stop_reason})
D.cleanup()
