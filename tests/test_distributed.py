"""Data parallelism with real processes on CPU (gloo): distributed.Dist's helpers, and a stage
script under torchrun whose two ranks must end with identical weights."""
import json
import os
import re
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world_size: int, port: int):
    """In a child process: join the group through distributed.setup, with the environment
    torchrun would give it; one thread, as two processes share the CPU."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, str(ROOT))
    import distributed
    torch.set_num_threads(1)
    return distributed.setup("cpu")


def start_two_processes(worker, out_dir):
    """Run worker(rank, 2, port, out_dir) in two processes and wait for both. Fork where the
    platform has it: the children inherit the imported torch instead of paying seconds to import
    it again (spawn is torch's portable default, and the fallback)."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True, start_method=method)


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    """One process: join the group, give each parameter a rank-dependent gradient, average, and
    save what came out."""
    ctx = join_group(rank, world_size, port)
    try:
        torch.manual_seed(0)  # the same model on every rank
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        frozen, no_grad = model[0].bias, model[2].bias
        frozen.requires_grad_(False)
        g = torch.Generator().manual_seed(100 + rank)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        no_grad.grad = None          # a trainable parameter that got no gradient this step
        frozen.grad = torch.full_like(frozen, float(rank + 1))  # frozen: must not be touched
        before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        ctx.average_gradients(model)
        after = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        record = {"before": before, "after": after, "no_grad_is_none": no_grad.grad is None,
                  "sum": ctx.sum([rank, 1.5]), "gather": ctx.gather({"rank": rank}),
                  "shard": ctx.shard(list(range(7))),
                  "is_main": ctx.is_main}
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
        ctx.barrier()
    finally:
        ctx.close()


def test_average_gradients_two_gloo_processes(tmp_path):
    world_size = 2
    start_two_processes(_worker, tmp_path)
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for name in records[0]["after"]:
        if name == "0.bias":
            continue
        expected = sum(r["before"][name] for r in records) / world_size
        for r in records:
            torch.testing.assert_close(r["after"][name], expected)
        assert not torch.equal(records[0]["before"][name], records[1]["before"][name])  # the test can fail
    for rank, r in enumerate(records):
        # frozen parameters are left alone; a missing gradient stays missing
        assert torch.equal(r["after"]["0.bias"], torch.full((4,), float(rank + 1)))
        assert r["no_grad_is_none"]
        assert r["sum"] == [1.0, 3.0]
        assert r["gather"] == [{"rank": 0}, {"rank": 1}]
        assert r["is_main"] == (rank == 0)
    assert records[0]["shard"] + records[1]["shard"] != list(range(7))  # interleaved, not blocks
    assert sorted(records[0]["shard"] + records[1]["shard"]) == list(range(7))


def _split_step_worker(rank: int, world_size: int, port: int, out_dir: str):
    """One of two processes taking one step on its share of a batch: stage 1's train_step on
    every other example, stage 2's optimise on every other group (as train_grpo shards prompts)."""
    ctx = join_group(rank, world_size, port)
    try:
        torch.save(split_step_gradients(ctx), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        ctx.close()


def split_step_gradients(dist) -> dict:
    """The gradients of one stage-1 step and one stage-2 step (each aggregation) on this
    process's share of a fixed batch: the whole of it in one process."""
    from conftest import small_policy
    from test_stage1 import train_step_gradients, uneven_examples
    from test_stage2 import grpo_rows, optimise_gradients
    import stage2_grpo as s2
    model = small_policy()
    grads = {"stage1": train_step_gradients(model, dist.shard(uneven_examples()), micro_batch=1, dist=dist)}
    G, groups = 2, 4
    rows = grpo_rows(model, groups=groups, G=G)
    mine = [row for group in dist.shard(list(range(groups))) for row in range(group * G, (group + 1) * G)]
    share = [[part[row] for row in mine] for part in rows[:4]] + [rows[4][mine]]
    left_out = len(dist.shard([0, 1]))   # 2 completions sampled but left out of the loss, in all
    for agg in s2.LOSS_AGGREGATIONS:
        grads[agg] = optimise_gradients(model, share, dist, n_sampled=len(mine) + left_out, loss_agg=agg,
                                        micro_batch_size=2)
    return grads


def test_two_processes_take_the_step_of_one(tmp_path):
    """Stage 1's train_step and stage 2's optimise normalise by the batch of all processes
    (stage 1: world_size / all target tokens, since the gradients are then averaged; stage 2:
    grpo_loss's whole-batch count / world_size), so two processes, each with half the batch,
    step with the gradients one process computes on all of it."""
    from distributed import Dist
    start_two_processes(_split_step_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = split_step_gradients(Dist())
    for key, expected in one.items():
        assert max(float(g.abs().max()) for g in expected) > 1e-3, key
        for rank in ranks:
            for a, b in zip(rank[key], expected):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=key)


def test_stage3_under_torchrun_two_processes(tiny_world, tmp_path):
    """Stage 3 end to end under `torchrun --nproc_per_node 2` (gloo): both ranks mine their share
    of the questions, train two GRPO steps with averaged gradients, and must end with identical
    weights; rank 0 alone writes the one checkpoint, which holds exactly those weights."""
    from eval import evaluate, load_gsm8k
    from model import Qwen2
    from run import weights_checksum
    from tokenizer import load_tokenizer
    import stage2_grpo as s2

    out = tmp_path / "stage3"
    rows = (200, 232)
    # A reward that differs for any two different texts, so every group trains and identical
    # weights really prove the averaged gradients (the tiny base model cannot rewrite yet, so
    # the real rewards would give it -2 across the board). Adding it is one entry in REWARDS.
    script = tmp_path / "stage3_text_hash_reward.py"
    script.write_text("import sys, zlib\n"
                      f"sys.path.insert(0, {str(ROOT)!r})\n"
                      "import stage3_rewrite\n"
                      "stage3_rewrite.REWARDS['text_hash'] = lambda completion, example: "
                      "zlib.crc32(completion.text.encode()) / 2 ** 32\n"
                      "stage3_rewrite.main()\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), "--model", str(tiny_world.base_model), "--teacher-data", str(tiny_world.teacher),
               "--rows", f"{rows[0]}:{rows[1]}", "--attempts", "1", "--mine-temperature", "0",
               "--mine-max-new-tokens", "160", "--out", str(out), "--max-steps", "2", "--group-size", "2",
               "--prompts-per-step", "4", "--max-new-tokens", "48", "--lr", "1e-4", "--beta", "0.04", "--save-every", "0",
               "--reward", "text_hash", "--device", "cpu", "--seed", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # 1. the two ranks' weights are identical, and equal to the one checkpoint rank 0 wrote
    sums = dict(re.findall(r"stage3 rank (\d): weights sha256 ([0-9a-f]{64})", run.stdout))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], run.stdout[-2000:]
    saved = Qwen2.from_pretrained(out)
    assert weights_checksum(saved) == sums["0"]
    base = Qwen2.from_pretrained(tiny_world.base_model)
    assert weights_checksum(base) != sums["0"]           # it did train
    assert not list(out.glob("checkpoint-*")) and not list(tmp_path.glob(".stage3*"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]               # one writer, one line per step
    assert all(m["trained_completions"] > 0 for m in metrics)

    # 2. the mined set is the union of both ranks' shares: with one greedy attempt it is exactly
    #    the questions eval.py gets wrong (the authors' rule)
    mined = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    examples = load_gsm8k(str(tiny_world.train))[rows[0]:rows[1]]
    samples, _ = evaluate(base, load_tokenizer(tiny_world.base_model), examples, batch_size=32,
                          max_new_tokens=160, progress=False)
    assert [m["row"] for m in mined] == [s["index"] for s in samples if not s["correct"]]
    assert 0 < len(mined) < len(examples)
