"""Processes, ranks and devices. Rank and world size come from torchrun, OpenMPI's `mpirun` or
SLURM's `srun`; the model is wrapped for data parallelism in one place, `parallelize()`.

    torchrun --nproc_per_node 8 -m bertkit pretrain ...          # one server, 8 GPUs
    mpirun -np 16 -H a:8,b:8 -x MASTER_ADDR=a bertkit pretrain ...  # OpenMPI
    srun --ntasks 16 bertkit pretrain ...                         # SLURM
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bertkit import BertkitError
from bertkit.model import Layer
from bertkit.ranks import env_ranks


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str, local_rank: int) -> torch.device:
    """`auto` takes this process's GPU when there is one, else the CPU; anything else is a torch
    device string (`cpu`, `cuda`, `cuda:1`, `mps`, `xpu`...)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise BertkitError(f"--device: {spec!r} is not a torch device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BertkitError("--device cuda: no CUDA device is visible")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


DEFAULT_TIMEOUT_S = 600.0


def dist_timeout(env: dict | None = None) -> float:
    """Seconds a collective or the process-group setup may wait for the other processes before
    failing: $BERTKIT_DIST_TIMEOUT (set by `bertkit demo --dist_timeout`), else 600. A lost host
    or a cut link then ends the run with an error within this time instead of hanging."""
    env = os.environ if env is None else env
    text = env.get("BERTKIT_DIST_TIMEOUT")
    if text is None or text == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BertkitError(f"BERTKIT_DIST_TIMEOUT={text!r}: expected a positive number of seconds")
    return value


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX). Without, torch
    falls back to a generic kernel: on an AVX2-only EPYC here bf16 products ran ~75x slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the flags ourselves
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return True  # cannot tell: do not warn
        return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, where bf16 products ran 4-6x faster than fp32 here (with
    AVX512-BF16 alone, about as fast: `cpu_has_fast_bf16` is then true, but bf16 buys no speed)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the flags ourselves
        try:
            return "amx_tile" in open("/proc/cpuinfo").read()
        except OSError:
            return False


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device: torch.device, precision: str = "fp32", seconds: float = 1.0, repeats: int = 5) -> float:
    """FLOP/s of a square matrix product on `device` in `precision`'s dtype (fp32 takes TF32 on CUDA
    when it is on, as the run's products do), with this process's threads on a CPU: the median of
    `repeats` products after an untimed one, fewer when they take over `seconds`. The peak that MFU
    divides by. (On a CPU 1024 x 1024 reaches the rate of 2048 x 2048 within a few percent here.)"""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(PEAK_DTYPES[precision])  # (n, n)
    b = torch.randn(n, n, device=device).to(PEAK_DTYPES[precision])  # (n, n)

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    start = time.perf_counter()
    timed()  # the first product pays for kernel selection and page faults
    times = [timed()]
    while len(times) < repeats and time.perf_counter() - start < seconds:
        times.append(timed())
    return 2 * n**3 / sorted(times)[len(times) // 2]


def set_tf32(enabled: bool) -> None:
    """fp32 matrix products on CUDA in TF32 (10-bit mantissa inputs, fp32 accumulation: the tensor
    cores' fp32 mode, what users of other frameworks expect on a GPU) or in full IEEE fp32. CPUs are
    not affected. torch >= 2.9 refuses a mix of its old and new TF32 switches, so only one is used."""
    matmul = torch.backends.cuda.matmul  # BERT has no convolutions: cuDNN's switch is left alone
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 28


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """Have glibc's malloc serve allocations of up to `limit` bytes from its heap and keep what is
    freed there, instead of mapping fresh pages for each large tensor and unmapping them at free.
    A gradient the size of the vocabulary (30522 x 384 floats, 47 MB, made anew every step) otherwise
    costs 11,000 page faults a step: about 20 ms of a 320 ms MiniLM fine-tuning step on one CPU
    thread (benchmarks/README.md). Returns whether the settings took (False off glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit) and libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False


def init(device: str = "auto", timeout_s: float | None = None, tf32: bool = True) -> Dist:
    """Join the process group when started by a launcher (NCCL on GPUs, gloo otherwise). Collectives
    fail after `timeout_s` seconds (default: `dist_timeout()`). On CUDA, fp32 matrix products use
    TF32 unless `tf32` is False (`set_tf32`); elsewhere host memory is kept for reuse
    (`keep_freed_memory`)."""
    timeout_s = dist_timeout() if timeout_s is None else timeout_s
    rank, world, local, launcher = env_ranks()
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        set_tf32(tf32)
    else:
        keep_freed_memory()
    if world > 1 and not dist.is_initialized():
        if launcher != "torchrun":  # torchrun sets these; other launchers need them from the user
            os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, d: Dist, compile: bool = False) -> nn.Module:
    """Apply, in this order, compilation and data parallelism. The model itself knows one device.

    Compilation is per Transformer layer, in place (torchtitan's order: compile the blocks, then
    wrap for data parallelism). Each layer's backward is then its own autograd node, so a layer's
    gradients are ready, and DDP's buckets start their all-reduce, while earlier layers still run
    their backward. One compiled graph for the whole model would hand every gradient over at the end
    of the backward pass, leaving nothing to overlap. In place (`Module.compile`), the parameter
    names, and so checkpoints, stay those of the plain model. The 24 layers of BERT-large share one
    compiled code, so this also compiles faster than the whole model."""
    model.to(d.device)
    if compile:
        layers = [m for m in model.modules() if isinstance(m, Layer)]
        for m in layers or [model]:
            m.compile()
    if d.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
            gradient_as_bucket_view=True)  # BERT has no buffers, so DDP's buffer sync costs nothing
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers (for saving weights)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce when distributed; a no-op otherwise."""
    if dist.is_initialized():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (for gathering evaluation results)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
