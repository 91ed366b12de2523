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


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    """One process: join the group through distributed.setup (as torchrun would set it up),
    give each parameter a rank-dependent gradient, average, and save what came out."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, str(ROOT))
    import distributed
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
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
    # fork where the platform has it: the children inherit the imported torch instead of paying
    # seconds to import it again (spawn is torch's portable default, and the fallback)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size,
                       join=True, start_method=method)
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


def test_stage3_under_torchrun_two_processes(tiny_world, tmp_path):
    """Stage 3 end to end under `torchrun --nproc_per_node 2` (gloo): both ranks mine their share
    of the questions, train two GRPO steps with averaged gradients, and must end with identical
    weights; rank 0 alone writes the one checkpoint, which holds exactly those weights."""
    from eval import evaluate, load_gsm8k
    from model import Qwen2
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
    assert s2.weights_checksum(saved) == sums["0"]
    base = Qwen2.from_pretrained(tiny_world.base_model)
    assert s2.weights_checksum(base) != sums["0"]           # it did train
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
