"""The one DeepSpeed training loop for every reasoner stage: bootstrap, RG-SFT, DPO and RG-CL.

A stage's job writes a *spec* (JSON: model dir, token data, DeepSpeed config, steps, where to
checkpoint and save) and calls ``launch(spec, nproc)``, which runs this module under the
``deepspeed`` launcher: ``--num_gpus N`` on a GPU box, N CPU processes with gloo here, the same
code path. Rank 0 logs loss, tokens/s and lr every ``log_every`` steps (to a JSONL file and, when a
run id is given, straight to the stage's MLflow run) with a progress bar, checkpoints with
DeepSpeed's own ``save_checkpoint``, and saves the final model with ``save_pretrained``.

Objectives (``spec["objective"]``): ``causal_lm`` on packed blocks (.npy), and ``sft``, ``dpo``,
``rg_cl`` on named right-padded arrays (.npz, built by rgalign_core/alignment.py) whose batches are
cut to their longest row; ``bucket_by: length`` groups rows of similar length into a batch.

Data parallelism is by global batch: step ``s`` takes rows ``perm[s*G:(s+1)*G]`` of a seeded
permutation, and rank ``r`` its ``r``-th slice, so 1 process and 2 processes see the same global
batch and a resumed run continues with exactly the batches it would have seen.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("rgalign.ds_trainer")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---- launching (in the job's process) ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_buffers(port: int) -> list[Path]:
    """The shared-memory segments DeepSpeed's CPU all-reduce op (deepspeed_shm_comm) made for a run
    whose master port was ``port``: one per local rank, 64 MiB each, named after the port."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def remove_shm_buffers(port: int) -> None:
    """DeepSpeed never unlinks those segments when its processes exit (shm.cpp only does in
    shared_close, which nothing calls), so every run would leave 64 MiB per rank in /dev/shm, which
    is RAM: a nightly worker runs out of memory after a few hundred runs. Unlink them once the run is over."""
    for path in shm_buffers(port):
        path.unlink(missing_ok=True)


def launch(spec: dict, nproc: int, workdir: Path) -> list[dict]:
    """Run the training described by ``spec`` on ``nproc`` processes; returns the logged metrics."""
    import torch

    check(spec, nproc, row_count(spec["data"]))
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    spec = {**spec, "metrics_file": str(workdir / "metrics.jsonl")}
    spec_path.write_text(json.dumps(spec, indent=2))
    Path(spec["metrics_file"]).unlink(missing_ok=True)
    deepspeed = Path(sys.executable).parent / "deepspeed"
    port = free_port()
    cmd = [str(deepspeed), "--num_gpus", str(nproc), "--master_port", str(port),
           "--module", "rgalign_core.ds_trainer", "--spec", str(spec_path)]
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        # Split the cores between the processes instead of oversubscribing them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    log.info("launching: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT)
    finally:
        remove_shm_buffers(port)
    if proc.returncode != 0:
        raise RuntimeError(f"DeepSpeed training failed (exit {proc.returncode}); see the log above. Command: {' '.join(cmd)}")
    return [json.loads(line) for line in Path(spec["metrics_file"]).read_text().splitlines()]


# ---- objectives -----------------------------------------------------------------------------------
# objective(engine, batch, aux) -> (loss, tokens processed, {metric: value}); aux is built once per
# run by the objective's setup (the frozen DPO reference, the RG-CL temperature).

def causal_lm_loss(model, batch, aux):
    """Next-token loss over every position of packed blocks (no padding)."""
    ids = batch["input_ids"]
    out = model(input_ids=ids, labels=ids)
    return out.loss, int(ids.numel()), {}


def sft_objective(model, batch, aux):
    from rgalign_core.alignment import sft_loss

    loss, n = sft_loss(model, batch, trim_padding=aux.get("trim", True))
    return loss, n, {}


def dpo_objective(model, batch, aux):
    from rgalign_core.alignment import dpo_loss

    return dpo_loss(model, aux["ref"], batch, float(aux["beta"]), float(aux["anchor_weight"]))


def rg_cl_objective(model, batch, aux):
    from rgalign_core.alignment import rg_cl_loss

    return rg_cl_loss(model, batch, float(aux["tau"]), float(aux["lm_weight"]))


OBJECTIVES = {"causal_lm": causal_lm_loss, "sft": sft_objective, "dpo": dpo_objective, "rg_cl": rg_cl_objective}


def build_model(spec: dict):
    """What the run trains: a causal LM, or for RG-CL the reasoner + the query projection."""
    import torch
    from transformers import AutoModelForCausalLM

    if spec.get("objective") == "rg_cl":
        from rgalign_core.alignment import load_query_aligner

        return load_query_aligner(spec["model_dir"], spec["projection_dir"], spec.get("trainable_layers"))
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], local_files_only=True, dtype=torch.float32)
    model.config.use_cache = False
    return model


def build_aux(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    if spec.get("objective") == "dpo":
        ref = AutoModelForCausalLM.from_pretrained(spec.get("ref_model_dir") or spec["model_dir"], local_files_only=True,
                                                   dtype=torch.float32)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return {"ref": ref, "beta": spec.get("beta", 0.1), "anchor_weight": spec.get("anchor_weight", 0.0)}
    if spec.get("objective") == "sft":
        return {"trim": spec.get("trim_batches", True)}
    if spec.get("objective") == "rg_cl":
        return {"tau": spec.get("tau", 0.1), "lm_weight": spec.get("lm_weight", 0.0)}
    return {}


def load_data(path: str) -> dict:
    """Training rows: a .npy of packed token blocks, or a .npz of named arrays sharing axis 0."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    return {"input_ids": np.load(path, mmap_mode="r")}


def row_count(path: str) -> int:
    """How many training rows ``path`` holds, reading one array's header, not the data."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return len(z[z.files[0]])  # an npz reads arrays one by one: this loads only the first
    return len(np.load(path, mmap_mode="r"))


def to_batch(data: dict, rows: np.ndarray) -> dict:
    import torch

    out = {}
    for k, v in data.items():
        a = np.asarray(v[rows])
        t = torch.from_numpy(np.ascontiguousarray(a))
        out[k] = t.long() if a.dtype.kind in "iu" else t
    return out


def bucketed_permutation(lengths: np.ndarray, global_batch: int, rng) -> np.ndarray:
    """Rows ordered so each global batch holds rows of similar length (less padding), with the
    batches in random order and random order among equal lengths."""
    order = np.lexsort((rng.random(len(lengths)), lengths))
    n = len(order) // global_batch * global_batch
    chunks = order[:n].reshape(-1, global_batch)
    return np.concatenate([chunks[rng.permutation(len(chunks))].reshape(-1), order[n:]])


# ---- the loop (in each launched process) ----------------------------------------------------------

def ds_config(spec: dict, world: int) -> dict:
    """The DeepSpeed config file with the batch sizes filled in from ``global_batch`` and ``world``,
    and ``"enabled": "auto"`` of bf16/fp16 made a bool (DeepSpeed itself drops "auto": bf16 would
    stay off on GPUs that have it)."""
    import torch

    cfg = json.loads(Path(spec["ds_config"]).read_text())
    accum = int(cfg.get("gradient_accumulation_steps", 1))
    global_batch = int(spec["global_batch"])
    section = spec.get("config_section", "train")
    if global_batch % (world * accum):
        raise ValueError(f"{section}.global_batch={global_batch} is not divisible by {section}.nproc={world} x "
                         f"gradient_accumulation_steps={accum} (in {spec['ds_config']}): set a multiple of {world * accum}")
    cfg["train_micro_batch_size_per_gpu"] = global_batch // (world * accum)
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = global_batch
    gpu = torch.cuda.is_available()
    if (cfg.get("bf16") or {}).get("enabled") == "auto":
        cfg["bf16"]["enabled"] = bool(gpu and torch.cuda.is_bf16_supported())
    if (cfg.get("fp16") or {}).get("enabled") == "auto":
        cfg["fp16"]["enabled"] = False  # bf16 or fp32: fp16 needs loss scaling we do not tune
    return cfg


def check(spec: dict, nproc: int, n_rows: int) -> None:
    """What would stop the launched processes, raised here where the stage shows it: the batch
    split (``ds_config``) and at least one global batch of rows."""
    ds_config(spec, nproc)
    check_rows(spec, n_rows)


def check_rows(spec: dict, n_rows: int) -> None:
    section = spec.get("config_section", "train")
    if n_rows < int(spec["global_batch"]):
        raise ValueError(f"{n_rows} training rows is fewer than one global batch ({section}.global_batch="
                         f"{spec['global_batch']}): lower it, or give the stage more days (windows.train_days)")


def train(spec: dict) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(int(spec["seed"]))
    model = build_model(spec)
    aux = build_aux(spec)
    cfg = ds_config(spec, world)
    # A torch optimizer: DeepSpeed's own Adam would JIT-compile fused/cpu Adam ops on CPU.
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(spec["lr"]), weight_decay=float(spec.get("weight_decay", 0.0)),
                                  betas=(0.9, 0.95))
    steps = int(spec["train_steps"])
    warmup = int(spec.get("warmup_steps", 0))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.1, 1 - s / max(1, steps)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=cfg)

    data = load_data(spec["data"])
    n_rows = len(next(iter(data.values())))
    lengths = data.get(spec["bucket_by"]) if spec.get("bucket_by") else None
    micro, accum = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    global_batch = cfg["train_batch_size"]
    rng = np.random.default_rng(int(spec["seed"]))
    check_rows(spec, n_rows)  # launch checked it already; train() may also be called on its own
    per_epoch = n_rows // global_batch
    perms: dict[int, np.ndarray] = {}

    def batch_rows(step: int) -> np.ndarray:
        epoch, pos = divmod(step, per_epoch)
        while epoch not in perms:  # permutations drawn in order, so step -> rows is fixed
            perms[len(perms)] = (rng.permutation(n_rows) if lengths is None
                                 else bucketed_permutation(np.asarray(lengths), global_batch, rng))
        rows = perms[epoch][pos * global_batch:(pos + 1) * global_batch]
        return rows[rank * micro * accum:(rank + 1) * micro * accum]

    start = 0
    ckpt = spec.get("checkpoint_dir")
    if spec.get("resume") and ckpt and Path(ckpt, "latest").exists():
        _, client = engine.load_checkpoint(ckpt)
        start = int(client["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", ckpt, start)

    objective = OBJECTIVES[spec.get("objective", "causal_lm")]
    mlflow_client = None
    if rank == 0 and spec.get("mlflow_run_id"):
        import mlflow

        mlflow.set_tracking_uri(spec["mlflow_tracking_uri"])
        mlflow_client = mlflow.MlflowClient()
    metrics_file = open(spec["metrics_file"], "a") if rank == 0 else None
    log_every, save_every = int(spec.get("log_every", 10)), int(spec.get("save_every", 0))
    # MFU only where it means something: on a GPU whose peak TFLOP/s is given in the config.
    peak = spec.get("peak_tflops_per_device")
    n_params = sum(p.numel() for p in engine.module.parameters())
    use_mfu = bool(peak) and torch.cuda.is_available()
    bar = tqdm(total=steps, initial=start, desc=spec.get("name", "train"), unit="step", disable=rank != 0)
    t_last, tokens_since, extra_sums, extra_n = time.time(), 0, {}, 0
    engine.train()
    # stop_after: end this run early (after checkpointing) as if interrupted; a resumed run continues.
    stop_after = int(spec.get("stop_after") or steps)
    for step in range(start, min(steps, stop_after)):
        rows = batch_rows(step)
        sums = {"loss": 0.0}
        for a in range(accum):
            loss, n_tokens, extras = objective(engine, to_batch(data, rows[a * micro:(a + 1) * micro]), aux)
            engine.backward(loss)
            engine.step()
            sums["loss"] += float(loss.detach())
            for k, v in extras.items():
                sums[k] = sums.get(k, 0.0) + v
            tokens_since += n_tokens * world
        # The global batch's loss (and the objective's metrics): mean over accumulation steps and ranks.
        keys = sorted(sums)
        reduced = torch.tensor([sums[k] / accum for k in keys], dtype=torch.float64)
        dist.all_reduce(reduced)
        step_values = dict(zip(keys, (reduced / world).tolist()))
        mean_loss = step_values.pop("loss")
        for k, v in step_values.items():
            extra_sums[k] = extra_sums.get(k, 0.0) + v
        extra_n += 1
        bar.update(1)
        if rank == 0 and ((step + 1) % log_every == 0 or step == start or step + 1 == steps or step + 1 == stop_after):
            dt_s = time.time() - t_last
            row = {"step": step + 1, "loss": mean_loss, "tokens_per_s": tokens_since / max(dt_s, 1e-9),
                   "lr": schedule.get_last_lr()[0], **{k: v / extra_n for k, v in extra_sums.items()}}
            if use_mfu:  # 6 N flops per token (forward + backward), over the devices' peak
                row["mfu"] = 6 * n_params * row["tokens_per_s"] / (float(peak) * 1e12 * world)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if not sys.stderr.isatty():  # task logs (Airflow) get a line per interval, not only the bar
                log.info("%s step %d/%d loss %.4f tokens/s %.0f lr %.2e", spec.get("name", "train"), step + 1, steps,
                         mean_loss, row["tokens_per_s"], row["lr"])
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if mlflow_client:
                ts = int(time.time() * 1000)
                for k in row:
                    if k == "step":
                        continue
                    mlflow_client.log_metric(spec["mlflow_run_id"], f"{spec.get('name', 'train')}/{k}", row[k], ts, step + 1)
            t_last, tokens_since, extra_sums, extra_n = time.time(), 0, {}, 0
        if ckpt and save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            engine.save_checkpoint(ckpt, tag=f"step{step + 1}", client_state={"step": step + 1})
    bar.close()
    done = min(steps, stop_after)
    if ckpt:
        engine.save_checkpoint(ckpt, tag=f"step{done}", client_state={"step": done})
    if done == steps:
        save_final(engine, spec, rank)
    dist.barrier()
    if metrics_file:
        metrics_file.close()
    dist.destroy_process_group()


def save_final(engine, spec: dict, rank: int) -> None:
    """The trained model as a plain Hugging Face checkpoint (safetensors) in spec["out_dir"]."""
    import deepspeed

    if not spec.get("out_dir"):
        return
    module = engine.module
    params = list(module.parameters())
    gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if engine.zero_optimization_stage() == 3 else None
    if gather:
        gather.__enter__()
    try:
        if rank == 0:
            out = Path(spec["out_dir"])
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if hasattr(module, "save"):  # RG-CL: the reasoner and its query projection
                module.save(str(out))
            else:
                module.save_pretrained(out, safe_serialization=True)
    finally:
        if gather:
            gather.__exit__(None, None, None)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="DeepSpeed worker: run under the deepspeed launcher (see launch()).")
    p.add_argument("--spec", required=True)
    p.add_argument("--local_rank", type=int, default=0)  # passed by some launchers
    args, _ = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(json.loads(Path(args.spec).read_text()))


if __name__ == "__main__":
    main()
