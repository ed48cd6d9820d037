"""fusedopt.torch under torch.distributed, launched as torch users launch training:

    torchrun --standalone --nproc-per-node 2 examples/torch_distributed.py

Every process trains the same small MLP on its own share of the data (gloo
backend, CPU), four ways, and checks them against each other:

1. DistributedDataParallel with fusedopt.torch.AdamW, against the same run with
   torch.optim.AdamW: the parameters agree within fusedopt.torch's float32
   parity tolerance (docs/torch.md: rtol=2e-5, atol=2e-6).
2. ZeroRedundancyOptimizer(optimizer_class=fusedopt.torch.AdamW): each rank keeps
   the AdamW state of its share of the parameters; the parameters agree with
   torch.optim.AdamW's under ZeRO within the same tolerance.
3. A checkpoint round trip: after half the steps, consolidate_state_dict() gathers
   the state on rank 0, which saves it with torch.save; a new model and a new
   ZeroRedundancyOptimizer load it on every rank and train the second half. The
   parameters equal those of the uninterrupted ZeRO run bit for bit.

Rank 0 prints one line per check; the exit status is 1 if any fails.
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

import fusedopt.torch as ft

STEPS, LR, WEIGHT_DECAY = 40, 1e-2, 1e-2
RTOL, ATOL = 2e-5, 2e-6  # fusedopt.torch's float32 parity tolerance against torch.optim (docs/torch.md)


def make_model():
    torch.manual_seed(0)  # the same start on every rank
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def shard(rank):
    """This rank's data: its own 8 batches of 32 samples of one smooth target."""
    w = torch.randn(16, 1, generator=torch.Generator().manual_seed(7)) / 4
    x = torch.randn(8, 32, 16, generator=torch.Generator().manual_seed(100 + rank))
    return x, torch.tanh(x @ w)


def train(model, opt, data, first, last):
    """Steps first..last-1 of DDP training; returns the mean loss of the last step over ranks."""
    ddp = DDP(model)
    x, y = data
    loss = torch.zeros(())
    for step in range(first, last):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x[step % len(x)]), y[step % len(y)])
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size()


def zero(model, cls):
    return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=LR, weight_decay=WEIGHT_DECAY)


def close(a, b):
    return all(torch.allclose(p, q, rtol=RTOL, atol=ATOL) for p, q in zip(a.parameters(), b.parameters()))


def equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def main():
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    data = shard(rank)
    results = []

    start = make_model()
    start_loss = torch.nn.functional.mse_loss(start(data[0][0]), data[1][0]).item()
    ours, theirs = make_model(), make_model()
    loss = train(ours, ft.AdamW(ours.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), data, 0, STEPS)
    train(theirs, torch.optim.AdamW(theirs.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), data, 0, STEPS)
    results.append((f"DDP, fusedopt.torch.AdamW: loss {start_loss:.4f} -> {loss:.4f} in {STEPS} steps; "
                    f"parameters equal torch.optim.AdamW's within rtol={RTOL}, atol={ATOL}", close(ours, theirs)))

    z_ours, z_theirs = make_model(), make_model()
    train(z_ours, zero(z_ours, ft.AdamW), data, 0, STEPS)
    train(z_theirs, zero(z_theirs, torch.optim.AdamW), data, 0, STEPS)
    results.append(("ZeroRedundancyOptimizer(optimizer_class=fusedopt.torch.AdamW): parameters equal "
                    "torch.optim.AdamW's under ZeRO within the same tolerance", close(z_ours, z_theirs)))

    first = make_model()
    opt = zero(first, ft.AdamW)
    train(first, opt, data, 0, STEPS // 2)
    opt.consolidate_state_dict(to=0)
    path = os.path.join(tempfile.gettempdir(), f"fusedopt-zero-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}.pt")
    if rank == 0:
        torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, path)
    dist.barrier()
    checkpoint = torch.load(path)
    dist.barrier()
    if rank == 0:
        os.remove(path)
    resumed = make_model()
    resumed.load_state_dict(checkpoint["model"])
    opt = zero(resumed, ft.AdamW)
    opt.load_state_dict(checkpoint["optimizer"])
    train(resumed, opt, data, STEPS // 2, STEPS)
    results.append((f"ZeRO checkpoint: consolidated at step {STEPS // 2}, saved, loaded by a new optimizer; "
                    "the resumed run equals the uninterrupted one bit for bit", equal(resumed, z_ours)))

    # Every rank checks; rank 0 reports whether all ranks agree.
    ok = torch.tensor([float(all(passed for _, passed in results))])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if rank == 0:
        print(f"{size} processes, gloo backend")
        for line, passed in results:
            print(f"{'ok ' if passed else 'FAILED'} {line}")
    dist.destroy_process_group()
    return 0 if ok.item() == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
