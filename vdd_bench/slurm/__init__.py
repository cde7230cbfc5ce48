"""Sweeps on SLURM through submitit: profiles, the requeue-safe job, submission in job arrays, the
scheduler's view of runs."""
