"""The `vdd` command line.

click gives nested commands, typed options and help text without hand-written argument parsing.
"""

from __future__ import annotations

import errno
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from vdd_bench.cli_settings import GivenSettings, settings_options
from vdd_bench.errors import Diverged, VddError

RESULTS = click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    envvar="VDD_RESULTS",
    show_default=True,
    help="Folder of the run store (env VDD_RESULTS).",
)
DEVICE = click.option("--device", default=None, help="cpu, cuda or cuda:N (default: a GPU when present).")
PROGRESS = click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a hyper-parameter.")


def sweep_files_option(help_text: str):
    """--sweep FILE (repeatable): the commands that read what a sweep expects."""
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    return click.option("--sweep", "sweep_files", multiple=True, type=path, help=help_text)


def run_options(command):
    """The options of a command that runs: the run settings, --set, --results, --device, --progress."""
    for option in (PROGRESS, DEVICE, RESULTS, SETS, settings_options):
        command = option(command)
    return command


def parse_sets(sets: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VddError(f"bad --set {item!r}: write KEY=VALUE, e.g. --set lr=0.01")
        out[key.strip()] = value.strip()
    return out


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise VddError(f"bad --seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _device(name: str | None):
    from vdd_bench.device import pick_device

    return pick_device(name)


# a folder the harness may not write (a read-only mount, another user's results, a file in the way)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


class Cli(click.Group):
    """Turns the harness's one-line errors into `error: ...` and exit status 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VddError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            if exc.errno not in _NOT_WRITABLE:
                raise
            click.echo(
                f"error: {exc.filename}: {exc.strerror}: nothing was recorded there; use a results folder "
                "this user may write (--results or VDD_RESULTS) and files it may read",
                err=True,
            )
            sys.exit(2)


@click.group(cls=Cli)
@click.version_option(package_name="vdd-bench")
def main() -> None:
    """vdd-bench: the Visual Decathlon harness."""


@main.command()
@RESULTS
@DEVICE
@PROGRESS
@click.option("--methods", default="all", show_default=True, help="Comma-separated methods, or all.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Runs at once [default: the visible GPUs; on a CPU its cores, up to 4].",
)
def demo(results: Path, device: str | None, progress: bool, methods: str, jobs: int | None) -> None:
    """The main job on the toy decathlon: data, pre-training, every method on every task, leaderboard."""
    from vdd_bench.demo import run_demo

    chosen = "all" if methods == "all" else methods.split(",")
    table, summary = run_demo(results, chosen, _device(device), progress, jobs)
    click.echo(table)
    _report_failures(summary)


def _report_failures(summary) -> None:
    for run_id, error in summary.failed:
        click.echo(f"failed: {run_id}: {error.splitlines()[0] if error else ''}", err=True)
    if summary.failed:
        sys.exit(1)


@main.command()
@click.option("--method", required=True)
@click.option("--task", required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@run_options
def run(method, task, seed, given: GivenSettings, sets, results, device, progress) -> None:
    """Run one method on one task (skipped when already done) and print its record."""
    from vdd_bench.runner import execute, plan_run
    from vdd_bench.store import RunStore

    request = plan_run(given.settings(), task, method, parse_sets(sets), seed)
    store = RunStore(results)
    store.mark_entries([request.config.run_id])
    try:
        record = execute(request, results, _device(device), progress)
    except Diverged:  # settled by `execute`: `vdd status` says diverged; `vdd run` tries it again
        raise
    except Exception as exc:  # `vdd status` then says failed, with this error, not todo
        store.fail(request.config.run_id, exc)
        raise
    click.echo(
        json.dumps(
            {k: v for k, v in record.to_json().items() if k in ("run_id", "metrics", "accounting")},
            indent=2,
        )
    )


def _sweep_requests(sweep_file: Path | None, given: dict[str, Any], sets: tuple[str, ...] = ()) -> list:
    """The runs of a sweep file and/or options (`given`: sweep-file keys from the command line, which
    override the file's)."""
    from vdd_bench.sweep import SweepSpec

    data: dict[str, Any] = {}
    if sweep_file:
        from vdd_bench.config import read_yaml

        data = read_yaml(sweep_file, "sweep file") or {}
        if not isinstance(data, dict):
            raise VddError(f"{sweep_file}: a sweep file must be a mapping of keys to values")
    data.update(given)
    if "methods" in given and isinstance(data.get("hparams"), dict):  # --methods narrows the file
        kept = {"all", *given["methods"]}
        data["hparams"] = {k: v for k, v in data["hparams"].items() if k in kept}
    if sets:  # over the file's "all" section and over a method's own value of the same key
        hparams = data.setdefault("hparams", {})
        for key, value in parse_sets(sets).items():
            hparams.setdefault("all", {})[key] = value
            for section in hparams.values():
                if isinstance(section, dict) and key in section:
                    section[key] = value
    spec = SweepSpec.from_mapping(data, str(sweep_file or "command line"))
    base = sweep_file.parent if sweep_file and "benchmark" not in given else Path.cwd()
    return spec.expand(base)


@main.command()
@click.option("--file", "sweep_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--methods", default=None, help="Comma-separated (default all).")
@click.option("--tasks", default=None, help="Comma-separated (default all).")
@click.option("--seeds", default=None, help="Comma-separated integers (default 0).")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Hyper-parameter search: trials 0..N-1 of every method and task, trial 0 the defaults "
    "(a sweep file's `search: {trials: N}`) [default: 1].",
)
@settings_options
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SLURM profile (YAML, e.g. slurm/profiles/generic-gpu.yaml); required with --launcher slurm.",
)
@click.option("--wait", is_flag=True, help="SLURM: return once the submitted jobs have left the queue.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Local launcher: runs at once, each in a process of its own (one per GPU; on a CPU the cores "
    "split between them) [default: the visible GPUs, else 1].",
)
@click.option("--dry-run", is_flag=True, help="List the runs and whether they are done; run nothing.")
@click.option(
    "--refit",
    is_flag=True,
    help="After a search: train each setting selected on validation again on train+val (protocol trainval).",
)
@click.option(
    "--retry-diverged",
    is_flag=True,
    help="Run again the runs of this sweep settled as diverged (a relaunch leaves them be: the same setting "
    "diverges again unless the code or data changed).",
)
@SETS
@RESULTS
@DEVICE
@PROGRESS
def sweep(sweep_file, given: GivenSettings, sets, dry_run, refit, retry_diverged, **options) -> None:
    """Methods x tasks x seeds on one benchmark, from a sweep file and/or options; done runs are skipped.

    With --launcher slurm the runs are submitted as job arrays (one per method and dependency level) and
    the command returns; `vdd status` follows them, and relaunching submits only what is missing."""
    from vdd_bench.local_launcher import LocalLauncher
    from vdd_bench.store import RunStore

    profile = _slurm_profile(options["launcher"], options["profile"])
    methods, tasks, seeds = options["methods"], options["tasks"], options["seeds"]
    selection = {"methods": methods and methods.split(","), "tasks": tasks and tasks.split(",")}
    selection["seeds"] = _seeds(seeds) if seeds else None
    selection["search"] = {"trials": options["trials"]} if options["trials"] else None
    keys = {**given.sweep_keys(), **{k: v for k, v in selection.items() if v is not None}}
    requests = _sweep_requests(sweep_file, keys, sets)
    results, device = options["results"], options["device"]
    if refit:
        from vdd_bench.refit import plan_refits
        from vdd_bench.store import RunStore

        requests = plan_refits(requests, RunStore(results))
    if retry_diverged and not dry_run:
        from vdd_bench.config import closure

        cleared = RunStore(results).clear_diverged(r.config.run_id for r in closure(requests))
        click.echo(f"{cleared} run(s) settled as diverged will run again")
    if dry_run:
        store = RunStore(results)
        for request in requests:
            run_id = request.config.run_id
            state = "done" if store.is_done(run_id) else "diverged" if store.is_diverged(run_id) else "todo"
            click.echo(f"{state}\t{run_id}\ttrial {request.config.trial}")
        return
    if profile is not None:
        _sweep_on_slurm(requests, profile, results, device, options["wait"])
        return
    summary = LocalLauncher(results, _device(device), options["progress"], options["jobs"]).launch(requests)
    claimed = f", {len(summary.claimed)} skipped (running elsewhere)" if summary.claimed else ""
    elsewhere = f", {summary.done_elsewhere} done meanwhile elsewhere" if summary.done_elsewhere else ""
    diverged = _diverged_note(summary.diverged_before + len(summary.diverged))
    click.echo(
        f"{len(requests)} runs: {summary.done_before} already done, {summary.completed} completed, "
        f"{len(summary.failed)} failed{claimed}{elsewhere}{diverged}"
    )
    for run_id, why in summary.diverged:
        click.echo(f"diverged: {run_id}: {why}", err=True)
    _report_failures(summary)


def _diverged_note(count: int) -> str:
    """A sweep summary's words for the runs settled as diverged (none: nothing)."""
    if not count:
        return ""
    return f", {count} diverged (settled: a relaunch leaves them, --retry-diverged runs them again)"


def _job_list(job_ids: list[str], shown: int = 3) -> str:
    """Job ids for a summary line: all of a few, else the first ones and how many more (a sweep of
    thousands of runs waits for thousands of jobs)."""
    if len(job_ids) <= shown + 1:
        return ",".join(job_ids)
    return f"{','.join(job_ids[:shown])} and {len(job_ids) - shown} more jobs"


def _sweep_on_slurm(requests, profile, results: Path, device: str | None, wait: bool) -> None:
    from vdd_bench.slurm.launcher import SlurmLauncher, wait_for
    from vdd_bench.status import run_statuses

    summary = SlurmLauncher(results, profile, device).launch(requests)
    where = f" (submitit folder {summary.folder})" if summary.folder else ""
    click.echo(
        f"{summary.runs} runs (inputs included): {summary.done_before} already done, "
        f"{len(summary.active)} queued or running, {summary.submitted} submitted in "
        f"{len(summary.groups)} job array(s){where}{_diverged_note(summary.diverged)}"
    )
    for group in summary.groups:
        after = f" after {_job_list(group.after)}" if group.after else ""
        first = group.job_ids[0].split("_")[0] if group.job_ids else "?"
        click.echo(f"  job {first}: {group.method} level {group.level}, {len(group.requests)} run(s){after}")
    if not wait:
        return
    wait_for(summary.job_ids() + [j for j in summary.active.values() if not j.startswith("pid ")])
    ids = [g_request.config.run_id for g in summary.groups for g_request in g.requests]
    failed = [s for s in run_statuses(results, ids) if s.state not in ("done", "diverged")]
    for status in failed:
        click.echo(f"{status.state}: {status.run_id}: {status.error or ''} (log {status.log})", err=True)
    if failed:
        sys.exit(1)


@main.command()
@sweep_files_option("Only the runs of this sweep file (repeatable); default every run folder of --results.")
@settings_options
@SETS
@RESULTS
@click.option("--json", "as_json", is_flag=True)
def status(sweep_files, given: GivenSettings, sets, results, as_json) -> None:
    """Every run: done / running / pending / failed / todo, from the run store and squeue/sacct; failed
    runs with their log file and last error line."""
    from dataclasses import asdict

    from vdd_bench.status import render_status, run_statuses

    configs = None
    if sweep_files:  # planning a sweep loads torch; the store alone does not
        from vdd_bench.config import closure

        configs = {}
        for sweep_file in sweep_files:
            requests = _sweep_requests(sweep_file, given.sweep_keys(), sets)
            configs.update({r.config.run_id: r.config for r in closure(requests)})
    statuses = run_statuses(results, None if configs is None else list(configs), configs)
    if as_json:
        click.echo(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        click.echo(render_status(statuses))


@main.command()
@RESULTS
@click.option("--format", "fmt", type=click.Choice(["markdown", "latex", "csv", "json"]), default="markdown")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--benchmark", "fingerprint", default=None, help="Only this benchmark fingerprint.")
@click.option("--continual", is_flag=True, help="Chains: accuracy matrix, final accuracy, forgetting.")
@click.option("--architectures", is_flag=True, help="NetTailor: add each task's kept-architecture diagram.")
@click.option(
    "--select",
    type=click.Choice(["val", "oracle", "default"]),
    default=None,
    help="Among a method's settings (search trials): val: best validation accuracy per task and seed "
    "[default where there are several]; oracle: best test accuracy (an upper bound); default: trial 0 only.",
)
@click.option("--show-choice", is_flag=True, help="List the setting chosen for every cell.")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Read every search as its first N trials (0 to N-1), as `vdd sweep --trials N` would have run it: "
    "an equal, smaller budget from a store that holds more.",
)
@sweep_files_option(
    "Sweep file (repeatable): every run it expects that is not done is shown as missing, by run id."
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --sweep: the benchmark root, as given to `vdd sweep --benchmark`.",
)
@click.option(
    "--backbone-checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --sweep: as given to `vdd sweep`.",
)
def leaderboard(
    results: Path, fmt: str, split: str, fingerprint: str | None, continual: bool, **options: Any
) -> None:
    """Tables of every finished run, grouped by benchmark and backbone, with the decathlon score.

    Cells are the mean over seeds (± the sample standard deviation when there are several); a run a row
    should have and does not reads `missing`, listed with the run id or command that would produce it."""
    from vdd_bench.leaderboard import build_groups
    from vdd_bench.store import RunStore
    from vdd_bench.tables import render_groups

    if continual:
        from vdd_bench.continual import chain_results
        from vdd_bench.tables import render_continual

        chains = chain_results(results, split)
        if not chains and fmt != "json":
            raise VddError(f"no evaluated chain under {results}: run `vdd chain` first")
        click.echo(render_continual(chains, fmt, split))
        return

    store = RunStore(results)
    records = [r for r in store.done_records() if fingerprint is None or r.config.benchmark == fingerprint]
    sweep_files, root, checkpoint = options["sweep_files"], options["root"], options["backbone_checkpoint"]
    expected = _expected_runs(sweep_files, root, checkpoint) if sweep_files else None
    if expected and fingerprint is not None:
        expected = [e for e in expected if e.config.benchmark == fingerprint]
    if expected:  # what produces a run settled as diverged is the sweep with --retry-diverged
        expected = [
            replace(e, command=f"{e.command} --retry-diverged") if store.is_diverged(e.run_id) else e
            for e in expected
        ]
    if not records and not expected:
        raise VddError(f"no finished runs under {results}: run `vdd demo` or `vdd sweep` first")
    groups = build_groups(records, split, expected, store.entry_ids(), options["select"], options["trials"])
    click.echo(render_groups(groups, fmt, split, options["show_choice"]))
    _note_diverged(store, fingerprint)
    if fmt == "markdown":
        from vdd_bench.architectures import render_architectures
        from vdd_bench.leaderboard import shown_runs

        by_id, shown = {r.run_id: r for r in records}, shown_runs(groups)
        tailored = render_architectures(
            [r for r in records if r.run_id in shown], by_id, options["architectures"]
        )
        if tailored:
            click.echo("\n" + tailored)


def _note_diverged(store, fingerprint: str | None) -> None:
    """Say on stderr which runs were settled as diverged: they have no result, so a search never chose them
    and a table has no cell from them (a few named, the rest counted)."""
    diverged = [c for c in store.diverged_configs() if fingerprint is None or c.benchmark == fingerprint]
    if not diverged:
        return
    named = ", ".join(f"{c.method}/{c.task} seed {c.seed} trial {c.trial} ({c.run_id})" for c in diverged[:5])
    more = f" and {len(diverged) - 5} more" if len(diverged) > 5 else ""
    click.echo(f"note: {len(diverged)} run(s) settled as diverged, without a result: {named}{more}", err=True)


def _expected_runs(sweep_files: tuple[Path, ...], root: Path | None, checkpoint: Path | None) -> list:
    """The runs the sweep files expect, as the leaderboard's `Expected` entries."""
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.leaderboard import Expected
    from vdd_bench.record import BenchmarkInfo

    benches: dict[Path, BenchmarkInfo] = {}
    expected = []
    for sweep_file in sweep_files:
        command = f"vdd sweep --file {sweep_file}"
        command += f" --benchmark {root}" if root else ""
        command += f" --backbone-checkpoint {checkpoint}" if checkpoint else ""
        given = {"benchmark": str(root)} if root else {}
        given.update({"backbone_checkpoint": str(checkpoint)} if checkpoint else {})
        for request in _sweep_requests(sweep_file, given):
            if request.root not in benches:
                benches[request.root] = BenchmarkInfo.of(Benchmark.open(request.root))
            expected.append(Expected(request.config, benches[request.root], command))
    return expected


@main.command()
@click.option("--method", required=True, help="A sequential method: packnet, lwf, avalanche:<Strategy>.")
@click.option("--order", default=None, help="Comma-separated task order (default: the benchmark's order).")
@click.option("--seed", type=int, default=0, show_default=True)
@run_options
def chain(method, order, seed, given: GivenSettings, sets, results, device, progress) -> None:
    """Learn the tasks one after another with one network; relaunching continues a killed chain."""
    from vdd_bench.continual import plan_chain, run_chain

    order_list = order.split(",") if order else None
    requests = plan_chain(given.settings(), method, order_list, parse_sets(sets), seed)
    result = run_chain(requests, results, _device(device), progress)
    click.echo(json.dumps(result.to_json(), indent=2))


@main.command()
@click.option(
    "--task", default=None, help="Source task (default: imagenet12, the toy's source, or the largest)."
)
@settings_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Data-parallel processes, one per GPU (CPU: gloo); default 1, with SLURM the profile's gpus.",
)
@click.option(
    "--sync-bn/--per-process-bn",
    default=True,
    show_default=True,
    help="BatchNorm statistics of the global batch, or of each process's shard (a run of its own).",
)
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option(
    "--profile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="SLURM profile (YAML, e.g. slurm/profiles/generic-gpu.yaml); required with --launcher slurm.",
)
@click.option("--wait/--no-wait", default=False, help="With --launcher slurm: wait for the job's result.")
@SETS
@RESULTS
@DEVICE
@PROGRESS
def pretrain(task, given: GivenSettings, out, processes, sync_bn, sets, **launch) -> None:
    """Train a backbone on the source task and save the checkpoint that later runs start from.

    With --processes N it trains data-parallel (DDP): every process takes 1/N of each global batch.
    With --launcher slurm it is one SLURM job of N tasks (one GPU each when the profile has GPUs)."""
    from vdd_bench.pretrain import PretrainPlan
    from vdd_bench.pretrain import pretrain as run_pretrain

    if given.values["backbone_checkpoint"] is not None:
        raise VddError("vdd pretrain writes a backbone checkpoint: give --backbone (and --width), not one")
    profile = _slurm_profile(launch["launcher"], launch["profile"])
    processes = processes or (max(profile.gpus, 1) if profile else 1)
    settings = given.settings(backbone_default="resnet26")
    plan = PretrainPlan(settings, task, parse_sets(sets), processes=processes, sync_bn=sync_bn)
    if profile is None:
        path = run_pretrain(plan, launch["results"], out, _device(launch["device"]), launch["progress"])
        click.echo(str(path))
        return
    from vdd_bench.slurm.pretrain import submit_pretrain, wait_for_job

    job, path = submit_pretrain(plan, launch["results"], profile, out, launch["device"])
    if job is not None:
        click.echo(f"submitted job {job.job_id} ({job.paths.folder}): writes {path}", err=True)
        if launch["wait"]:
            wait_for_job(job)
    click.echo(str(path))


def _slurm_profile(launcher: str, profile: Path | None):
    """The SLURM profile of `--launcher slurm` (None with the local launcher)."""
    if launcher != "slurm":
        return None
    if profile is None:
        raise VddError("--launcher slurm needs --profile FILE (see slurm/profiles/)")
    from vdd_bench.slurm.profile import SlurmProfile

    return SlurmProfile.from_file(profile)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--labels",
    type=click.Path(exists=True, path_type=Path),
    help="Test labels (a folder of <task>_test.json or one such file) to score a predictions file.",
)
@click.option(
    "--baselines",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON {task: baseline accuracy %} for tasks outside the decathlon (default: the official ones).",
)
@click.option("--json", "as_json", is_flag=True)
def score(file: Path, labels: Path | None, baselines: Path | None, as_json: bool) -> None:
    """Decathlon score of per-task accuracies (JSON) or of a challenge predictions file with --labels."""
    from vdd_bench.score_files import score_file

    click.echo(score_file(file, labels, as_json, baselines))


@main.command()
@RESULTS
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("plots"),
    show_default=True,
    help="Folder for the figures.",
)
@click.option("--formats", default="png,pdf", show_default=True, help="Comma-separated: png, pdf.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--benchmark", "fingerprint", default=None, help="Only this benchmark fingerprint.")
@click.option("--curves", is_flag=True, help="Also the training curves (loss, accuracy) of the runs shown.")
def plot(results: Path, out: Path, formats: str, split: str, fingerprint: str | None, curves: bool) -> None:
    """Figures of every finished run: accuracy vs task-specific parameters per task, score vs MACs per
    method, NetTailor's kept blocks per task, a search's validation accuracy by trial; with --curves the
    training curves."""
    from vdd_bench.leaderboard import build_groups
    from vdd_bench.plots import FIGURE_FORMATS, plot_all
    from vdd_bench.store import RunStore

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FIGURE_FORMATS]
    if unknown or not chosen:
        raise VddError(f"unknown figure format(s) {', '.join(unknown) or formats!r}: use png, pdf")
    store = RunStore(results)
    records = [r for r in store.done_records() if fingerprint is None or r.config.benchmark == fingerprint]
    if not records:
        raise VddError(f"no finished runs under {results}: run `vdd demo` or `vdd sweep` first")
    groups = build_groups(records, split, entry_ids=store.entry_ids())
    for path in plot_all(groups, records, out, chosen, results if curves else None):
        click.echo(str(path))


@main.command()
@click.option("--method", required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--benchmark", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--test-labels",
    type=click.Path(exists=True, path_type=Path),
    help="As given to `vdd run` (it is part of the benchmark's fingerprint).",
)
@click.option("--run", "run_ids", multiple=True, help="The run to submit for a task (repeatable).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@RESULTS
def submit(method, seed, root, test_labels, run_ids, out, results) -> None:
    """Write the challenge submission file of a method's runs: one JSON list of {image_id, category_id}
    covering every test image of every task exactly once (checked)."""
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.submission import build_submission, write_submission

    bench = Benchmark.open(root, test_labels)
    entries, runs = build_submission(bench, results, method, seed, run_ids)
    write_submission(entries, out)
    click.echo(f"{out}: {len(entries)} predictions, {len(runs)} tasks ({method}, seed {seed})")
    for task, run_id in runs.items():
        click.echo(f"  {task}: {run_id}")


@main.command("backbone-info")
@click.argument("name")
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=None,
    help="Input size (default 64 for resnet26, 224 otherwise).",
)
@click.option("--width", type=float, default=1.0, show_default=True)
@click.option("--classes", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def backbone_info(name: str, size: int | None, width: float, classes: int, as_json: bool) -> None:
    """Parameters (total and without the classifier) and MACs of a backbone, from a real forward pass."""
    from vdd_bench.accounting import count_macs, count_parameters
    from vdd_bench.backbones import BackboneSpec, build_backbone

    size = size if size is not None else (64 if name == "resnet26" else 224)
    model = build_backbone(BackboneSpec(name, width=width), classes)
    info = {
        "backbone": name,
        "width": width,
        "input_size": size,
        "classes": classes,
        "params": count_parameters(model),
        "params_without_classifier": count_parameters(model, include_classifier=False),
        "macs": count_macs(model, size),
        "blocks": len(model.blocks),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"{name} (width {width:g}) at {size}x{size}, {classes} classes: "
        f"{info['params'] / 1e6:.2f}M parameters, "
        f"{info['params_without_classifier'] / 1e6:.2f}M without the classifier, "
        f"{info['macs'] / 1e9:.3f} GMACs "
        f"(multiply-accumulates, the papers' 'GFLOPs'), {info['blocks']} blocks"
    )


@main.command("methods")
@click.option("--preset", "presets", is_flag=True, help="List the presets (named hyper-parameter sets).")
@click.option("--search", is_flag=True, help="List each method's search space (what `--trials` draws).")
@click.option("--json", "as_json", is_flag=True)
def list_methods(presets: bool, search: bool, as_json: bool) -> None:
    """The registered methods and their default hyper-parameters; with --preset, every method's presets
    (apply one with `--set preset=NAME`; docs/fidelity.md says where each value comes from); with --search,
    the distribution of each hyper-parameter a search varies."""
    from vdd_bench.method import METHODS

    if search:
        spaces = {name: METHODS.get(name).search_space for name in METHODS.names()}
        spaces = {name: {k: str(v) for k, v in space.items()} for name, space in spaces.items() if space}
        if as_json:
            click.echo(json.dumps(spaces, indent=2))
            return
        for name, space in spaces.items():
            click.echo(f"{name}: " + "; ".join(f"{k} {v}" for k, v in space.items()))
        return
    if presets:
        table = {name: METHODS.get(name).presets for name in METHODS.names() if METHODS.get(name).presets}
        if as_json:
            click.echo(json.dumps(table, indent=2))
            return
        for name, named in table.items():
            for preset, values in named.items():
                click.echo(f"{preset} ({name}): {json.dumps(values)}")
        return
    table = {name: METHODS.get(name).defaults for name in METHODS.names()}
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for name, defaults in table.items():
        click.echo(f"{name}: {json.dumps(defaults)}")


# --- performance: bundles and benchmarks (vdd_bench/bundle.py, vdd_bench/bench/) ---
@main.command("export")
@click.option("--method", required=True)
@click.option(
    "--benchmark", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backbone-checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@SETS
@RESULTS
@click.option("--json", "as_json", is_flag=True)
def export_bundle(
    method: str,
    root: Path,
    seed: int,
    backbone_checkpoint: Path | None,
    out: Path,
    sets: tuple[str, ...],
    results: Path,
    as_json: bool,
) -> None:
    """One file with the shared pre-trained weights once and every task's own part (`Bundle.load`)."""
    from vdd_bench.bundle import Bundle, export

    summary = export(method, results, root, out, seed, parse_sets(sets), backbone_checkpoint)
    facts = summary.as_dict()
    facts["switch_s"] = Bundle.load(out).switch_seconds()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    n = len(summary.tasks)
    click.echo(
        f"{out}: {method}, {n} tasks ({', '.join(summary.tasks)}): {summary.bundle_bytes / 2**20:.2f} MiB "
        f"(pre-trained {summary.pretrained_bytes / 2**20:.2f} MiB) vs {n} fine-tuned networks "
        f"{summary.finetuned_bytes / 2**20:.2f} MiB: x{facts['ratio_to_finetuned']:.3f}; "
        f"task switch {1000 * facts['switch_s']:.1f} ms"
    )


@main.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--quick", is_flag=True, help="Tiny inputs: checks that every benchmark runs.")
@click.option("--only", default=None, help="Comma-separated sections: data,methods,tailored,bundle,harness.")
@click.option(
    "--data-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Benchmark root for the data path: its largest task (default: the toy decathlon).",
)
@click.option(
    "--nettailor-results",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Run store whose finished runs the tailored and bundle sections use (default: --results).",
)
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Worker processes of the baseline loader."
)
@click.option("--threads", type=int, default=1, show_default=True, help="Torch threads for model timings.")
@click.option(
    "--device", default=None, help="cpu, cuda or cuda:N (default: a GPU when present); a GPU adds its rows."
)
@click.option(
    "--compile/--no-compile",
    "use_compile",
    default=True,
    show_default=True,
    help="Also time compiled networks (torch.compile; minutes on a CPU).",
)
@RESULTS
def bench(as_json: bool, only: str | None, device: str | None, results: Path, **options: Any) -> None:
    """Measure the harness's speed as ratios against baselines on this machine, and print them."""
    from vdd_bench.bench import BenchOptions, render, run_benchmarks
    from vdd_bench.device import pick_device

    bench_options = BenchOptions(
        quick=options["quick"],
        sections=only.split(",") if only else None,
        data_root=options["data_root"],
        nettailor_results=options["nettailor_results"] or results,
        workers=options["workers"],
        threads=options["threads"],
        device=pick_device(device).torch_device,
        compile=options["use_compile"],
    )
    report = run_benchmarks(bench_options)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


# --- end performance ---


@main.group()
def data() -> None:
    """Download, check, pack and generate benchmark roots in the decathlon-1.0 format."""


@data.command("verify")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test-labels", type=click.Path(exists=True, path_type=Path))
@click.option("--no-images", is_flag=True, help="Check the annotations only, not every image file.")
@click.option(
    "--cache",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also check this HDF5 pack of the root (vdd data pack): readable to its end, same annotations, "
    "images of the same names and sizes.",
)
@click.option(
    "--digest",
    is_flag=True,
    help="Also print each task's sha256 over its images' contents, to compare two copies of a root (runs "
    "are keyed by the annotations only).",
)
def data_verify(
    root: Path, test_labels: Path | None, no_images: bool, cache: Path | None, digest: bool
) -> None:
    """Check a root before spending GPU hours on it; exit 1 when it has errors."""
    from vdd_bench.verify import format_report, verify

    report = verify(
        root, test_labels, not no_images, progress=sys.stderr.isatty(), cache=cache, digest=digest
    )
    click.echo(format_report(report))
    if not report.ok:
        sys.exit(1)


@data.command("download")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tasks", default=None, help="Comma-separated (default: every task whose archive is at hand).")
@click.option(
    "--archive",
    "archives",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A release archive already on disk, used in place of a download; ImageNet's images "
    "(decathlon-1.0-data-imagenet.tar) come only this way. Repeatable.",
)
def data_download(root: Path, tasks: str | None, archives: tuple[Path, ...]) -> None:
    """Fetch the official decathlon-1.0 archives into ROOT, check their digests, extract, then verify.

    Resumable: an interrupted download continues where it stopped; extracted tasks are not redone.
    """
    from vdd_bench.download import download_decathlon
    from vdd_bench.verify import format_report, verify

    progress = sys.stderr.isatty()
    chosen = download_decathlon(root, tasks.split(",") if tasks else None, archives, progress=progress)
    report = verify(root, None, True, progress=progress)
    click.echo(format_report(report))
    store = root / "downloads"
    click.echo(
        f"{len(chosen)} tasks in {root}: {', '.join(chosen)}; the archives stay in {store} for later "
        "--tasks runs: delete that folder once you no longer need them"
    )
    if not report.ok:
        sys.exit(1)


@data.command("pack")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--size", type=int, default=72, show_default=True, help="Stored image size (the recipe's resize)."
)
@click.option("--tasks", default=None, help="Comma-separated (default all).")
@click.option(
    "--geometry",
    type=click.Choice(["square", "squash"]),
    default="square",
    show_default=True,
    help="square: shorter side to SIZE, centre square (every recipe); squash: the whole image to SIZE x SIZE "
    "(the nettailor recipe's aircraft, cifar100, daimlerpedcls, gtsrb). Each has its own file.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: <results>/cache/<fingerprint>-s<size>[-squash].h5, which training reads automatically.",
)
@RESULTS
def data_pack(
    root: Path, size: int, tasks: str | None, geometry: str, out: Path | None, results: Path
) -> None:
    """Write the HDF5 uint8 cache that training reads instead of decoding JPEGs."""
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.cache import default_cache_path, pack

    bench = Benchmark.open(root)
    path = pack(
        bench,
        out or default_cache_path(results, bench, size, geometry),
        size,
        tasks.split(",") if tasks else None,
        geometry=geometry,
    )
    click.echo(str(path))


@data.command("toy")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def data_toy(out: Path, seed: int) -> None:
    """Write the toy decathlon (the embedded default) in the official format."""
    from vdd_bench.tasks.toy import generate_toy

    click.echo(str(generate_toy(out, seed)))
