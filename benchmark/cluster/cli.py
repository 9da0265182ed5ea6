"""The command line's cluster flags and the executor they build (``python -m benchmark --executor ray``)."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from .resources import parse_time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                   help="where cells run: here (default; --devices for one per device), a Ray cluster, or Slurm jobs")
    p.add_argument("--address", help="ray: the cluster to join (auto, ray://host:10001; default: a local instance)")
    p.add_argument("--num-cpus", type=int, help="ray/slurm: CPUs per cell (default from the profile's model)")
    p.add_argument("--num-gpus", type=float, help="ray/slurm: GPUs per cell; a share such as 0.25 packs cells on "
                   "one GPU under Ray (default from the profile's model; 0 on a CPU cluster)")
    p.add_argument("--max-retries", type=int, default=2, help="ray/slurm: times a cell whose worker or job died is "
                   "run again, resuming from its checkpoint (default 2)")
    p.add_argument("--slurm-partition", help="slurm: the partition to submit to (default: the cluster's)")
    p.add_argument("--slurm-time", help="slurm: time limit per job: minutes, H:MM:SS or D-HH:MM; a job that "
                   "hits it is requeued and resumes")
    p.add_argument("--slurm-mem", type=int, help="slurm: memory per job in GB")
    p.add_argument("--slurm-folder", help="slurm: submitit's job folder (default <results>/.submitit)")
    p.add_argument("--slurm-cluster", choices=["slurm", "local"], help="slurm: submitit's backend (default: slurm "
                   "where sbatch is on PATH; local runs the same jobs as processes here)")


def make(args):
    """The executor the flags ask for, or None for the local ones; one line for a missing extra."""
    if args.executor == "local":
        if args.address or args.slurm_partition or args.slurm_time:
            raise UsageError("--address and --slurm-* flags need --executor ray or slurm")
        return None
    if args.devices:
        raise UsageError(f"--devices is for the local executor; with --executor {args.executor} give --num-gpus")
    if args.max_retries < 0:
        raise UsageError("--max-retries must be >= 0")
    if args.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                           max_retries=args.max_retries)
    from .slurm_executor import SlurmExecutor

    return SlurmExecutor(folder=args.slurm_folder, partition=args.slurm_partition,
                         time_min=parse_time(args.slurm_time) if args.slurm_time else None, num_cpus=args.num_cpus,
                         num_gpus=args.num_gpus, mem_gb=args.slurm_mem, max_retries=args.max_retries,
                         cluster=args.slurm_cluster)


def plan_device(executor, args) -> str:
    """The device a cluster grid's plans are resolved for (the workers', not this machine's): --device, else
    cpu when no GPU is asked for, else what the executor finds (a Ray cluster's GPUs; cuda for Slurm). It is
    not checked here: the driver may have no GPU."""
    if args.device:
        return args.device
    return "cpu" if args.num_gpus == 0 else executor.default_device()
