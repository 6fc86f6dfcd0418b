"""Where cells run: in this process one after another (`Serial`), in worker processes that
share the machine's GPUs (`LocalProcesses`, K cells per GPU), or as Ray tasks on a cluster
(`RayExecutor`). The driver alone writes result rows, so every executor gives the same results
directory; a worker that dies loses only its cell, which is retried and otherwise recorded as
failed (the next run retries it again).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing.connection
import os
import signal
import time
from pathlib import Path

import torch

from ..errors import BenchbdError
from ..progress import NullProgress
from .files import content_key
from .serial import Serial, Write  # noqa: F401 - Serial is one of the executors chosen here


def interleave(cells: list) -> list:
    """Order cells so that cells sharing a backdoored model / poisoned split do not start
    together: the first cell of every group, then the second of every group, ... Concurrent
    workers then build different artifacts instead of waiting on one."""
    groups: dict[str, list] = collections.defaultdict(list)
    for cell in cells:
        groups[content_key({"poison": cell.poison_identity(), "budget": cell.budget})].append(cell)
    order, columns = [], list(groups.values())
    for i in range(max((len(g) for g in columns), default=0)):
        order += [g[i] for g in columns if i < len(g)]
    return order


# ---------------------------------------------------------------- worker processes
class QueueProgress(NullProgress):
    """A worker's progress, sent to the driver; step counts are batched to a few messages a second."""

    def __init__(self, slot: int, outbox, every_s: float = 0.5):
        self.slot, self.outbox, self.every_s = slot, outbox, every_s
        self.pending_steps, self.last = 0, 0.0

    def _send(self, method: str, *args) -> None:
        self.outbox.put(("progress", self.slot, method, args))

    def start_cell(self, label):
        self._send("start_cell", label)

    def stage(self, text):
        self._send("stage", text)

    def start_run(self, desc, total_steps, batch_size=0):
        self.pending_steps = 0
        self._send("start_run", desc, total_steps, batch_size)

    def advance(self, steps=1, info=None):
        self.pending_steps += steps
        now = time.monotonic()
        if info is not None or now - self.last >= self.every_s:
            self._send("advance", self.pending_steps, info)
            self.pending_steps, self.last = 0, now

    def end_run(self):
        self._send("end_run")


class PipeSender:
    """A worker's own pipe to the driver, with a queue's `put`. One pipe per worker, written
    synchronously: a worker killed mid-message breaks only its own pipe, never a lock the other
    workers share (as a killed writer of a shared multiprocessing.Queue can)."""

    def __init__(self, connection):
        self.connection = connection

    def put(self, item) -> None:
        self.connection.send(item)


def _worker(slot: int, device: str, results_root: str, cache_root: str, threads: int, inbox, connection) -> None:
    """A worker process: run the cells it is sent until it is sent None."""
    from .cache import Cache
    from .grid import Runner
    from .results import Results

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver alone handles it
    torch.set_num_threads(threads)
    outbox = PipeSender(connection)
    runner = Runner(
        Results(results_root),
        Cache(cache_root, warn=lambda text: outbox.put(("warn", slot, text))),
        device=device,
        progress=QueueProgress(slot, outbox),
    )
    while True:
        item = inbox.get()
        if item is None:
            return
        index, cell = item
        outbox.put(("row", slot, index, runner.safe_run_cell(cell)))


class LocalProcesses:
    """K cells at once on each of `devices`, each in its own worker process (spawned once and
    reused). The dataset tensors reach the workers through shared memory, not as copies."""

    def __init__(self, devices: list[str], jobs_per_device: int, retries: int = 1, threads: int | None = None):
        self.slots = [device for device in devices for _ in range(jobs_per_device)]
        self.retries = retries
        self.threads = threads or max(1, (os.cpu_count() or 1) // len(self.slots))

    def run(self, runner, cells: list, write: Write) -> None:
        if not cells:
            return
        ctx = torch.multiprocessing.get_context("spawn")
        todo = collections.deque(enumerate(interleave(cells)))
        attempts: collections.Counter = collections.Counter()
        workers: dict[int, dict] = {}
        progress = runner.progress
        view = progress.view if hasattr(progress, "view") else (lambda slot: progress)

        def start(slot: int) -> None:
            inbox = ctx.Queue()
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_worker,
                daemon=True,
                args=(slot, self.slots[slot], str(runner.results.root), str(runner.cache.root), self.threads, inbox, sender),
            )
            process.start()
            sender.close()  # the worker holds the writing end; the pipe reads EOF when it dies
            workers[slot] = {"process": process, "inbox": inbox, "pipe": receiver, "cell": None}

        def finish(slot: int, row: dict) -> None:
            write(row)
            view(slot).end_cell(runner.summary(row))
            workers[slot]["cell"] = None

        def handle(message) -> None:
            kind, slot = message[0], message[1]
            if kind == "row" and workers[slot]["cell"] is not None and workers[slot]["cell"][0] == message[2]:
                finish(slot, message[3])
            elif kind == "progress":
                getattr(view(slot), message[2])(*message[3])
            elif kind == "warn":
                runner.warn(message[2])

        for slot in range(min(len(self.slots), len(todo))):
            start(slot)
        checked = time.monotonic()
        try:
            while (todo and not runner.out_of_time()) or any(w["cell"] is not None for w in workers.values()):
                for slot, worker in workers.items():
                    if worker["cell"] is None and todo and worker["process"].is_alive() and not runner.out_of_time():
                        worker["cell"] = todo.popleft()
                        view(slot).start_cell(worker["cell"][1].label)
                        worker["inbox"].put(worker["cell"])
                messages = self._receive(workers, 0.5)
                for message in messages:
                    handle(message)
                if messages and time.monotonic() - checked < 1.0:
                    continue  # busy workers send often: look for dead ones about once a second
                checked = time.monotonic()
                for slot, worker in list(workers.items()):
                    if worker["process"].is_alive():
                        continue
                    for message in self._receive({slot: worker}, 0):  # its row may still be in the pipe
                        handle(message)
                    if worker["cell"] is not None:
                        index, cell = worker["cell"]
                        attempts[index] += 1
                        reason = f"worker process died (exit code {worker['process'].exitcode})"
                        if attempts[index] <= self.retries:
                            runner.warn(f"{cell.label}: {reason}; retrying")
                            todo.appendleft(worker["cell"])
                            worker["cell"] = None
                        else:
                            finish(slot, runner.failed_row(cell, reason))
                    if todo:
                        start(slot)
                    else:
                        del workers[slot]
        except BaseException:  # Ctrl-C or an error in the driver: the cells in flight are abandoned, not awaited
            for worker in workers.values():
                worker["process"].kill()
            raise
        finally:
            for worker in workers.values():
                if worker["process"].is_alive():
                    worker["inbox"].put(None)
            for worker in workers.values():
                worker["process"].join(timeout=10)
                if worker["process"].is_alive():
                    worker["process"].kill()

    @staticmethod
    def _receive(workers: dict[int, dict], timeout: float) -> list:
        """Every message ready on the workers' pipes within `timeout`; a pipe that breaks (its
        worker died, perhaps mid-message) is dropped, and the liveness check does the rest."""
        pipes = {worker["pipe"]: worker for worker in workers.values() if worker["pipe"] is not None}
        if not pipes:
            time.sleep(timeout)
            return []
        messages = []
        for pipe in multiprocessing.connection.wait(list(pipes), timeout):
            while True:
                try:
                    if not pipe.poll(0):
                        break
                    messages.append(pipe.recv())
                except Exception:  # noqa: BLE001 - EOF, or a message cut off by a kill
                    worker = pipes[pipe]
                    worker["pipe"] = None
                    worker["process"].kill()  # a worker we can no longer hear is treated as dead: its cell is retried
                    break
        return messages


# ---------------------------------------------------------------- Ray
def _ray_cell(cell, data, results_root: str, cache_root: str, device: str) -> dict:
    """A Ray task: one cell, with the dataset from the object store; returns its row."""
    from .cache import Cache
    from .grid import Runner
    from .results import Results

    cell = dataclasses.replace(cell, data=data)
    runner = Runner(Results(results_root), Cache(cache_root, warn=print), device=device)
    return runner.safe_run_cell(cell)


class RayExecutor:
    """One Ray task per cell (fractional GPUs), rows returned to the driver, which writes them as
    they finish. The cache directory must be on storage every node sees (e.g. NFS)."""

    def __init__(self, address: str | None = None, jobs_per_gpu: int = 1, cpus_per_cell: float = 1.0, retries: int = 1):
        self.address, self.cpus_per_cell, self.retries = address, cpus_per_cell, retries
        self.gpus_per_cell = 1.0 / jobs_per_gpu

    def run(self, runner, cells: list, write: Write) -> None:
        try:
            import ray
        except ImportError:
            raise BenchbdError("the ray executor needs Ray: pip install 'benchbd[ray]'") from None
        if not cells:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0) if runner.device.type == "cuda" else 0
        task = ray.remote(_ray_cell).options(
            num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell if gpus else 0, max_retries=self.retries
        )
        # Tasks are submitted as slots free up (not all at once), so that a time limit can stop
        # submitting while the cells in flight finish.
        slots = max(1, int(gpus / self.gpus_per_cell) if gpus else int(ray.cluster_resources().get("CPU", 1) / self.cpus_per_cell))
        data_refs: dict[int, object] = {}
        pending = {}
        todo = collections.deque(interleave(cells))
        while pending or (todo and not runner.out_of_time()):
            while todo and len(pending) < slots and not runner.out_of_time():
                cell = todo.popleft()
                ref = data_refs.setdefault(id(cell.data), ray.put(cell.data))
                stripped = dataclasses.replace(cell, data=None)
                pending[
                    task.remote(
                        stripped,
                        ref,
                        str(Path(runner.results.root).resolve()),
                        str(Path(runner.cache.root).resolve()),
                        "cuda" if gpus else "cpu",
                    )
                ] = cell
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            runner.progress.start_cell(cell.label)
            try:
                row = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task's worker died more often than `retries`
                row = runner.failed_row(cell, f"Ray task failed: {str(exc).splitlines()[0][:300]}")
            write(row)
            runner.progress.end_cell(runner.summary(row))


def default_jobs_per_gpu(device: torch.device, image_size: int) -> int:
    """Cells per GPU from free memory: about 3 GiB per small-image (32x32) cell, 12 GiB for
    ImageNet-size images; at most 8 (beyond that, one H200 no longer gains)."""
    free, _ = torch.cuda.mem_get_info(device)
    per_cell = (12 if image_size > 64 else 3) * 2**30
    return max(1, min(8, math.floor(0.9 * free / per_cell)))


@dataclasses.dataclass
class ExecutorOptions:
    device: str = "auto"  # auto: every visible GPU, else the CPU
    jobs_per_gpu: int | None = None  # None: from free memory on CUDA, 1 on the CPU
    retries: int = 1  # reruns of a cell whose worker died, in the same run
    address: str | None = None  # Ray cluster address (ray only)


def _local(runner, cells: list, options: ExecutorOptions):
    if options.device == "auto" and torch.cuda.is_available():
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = [str(runner.device)]
    jobs = options.jobs_per_gpu
    if jobs is None:
        size = max((cell.data.train.images.shape[1] for cell in cells), default=32)
        jobs = default_jobs_per_gpu(torch.device(devices[0]), size) if devices[0].startswith("cuda") else 1
    if len(devices) * jobs == 1:
        return Serial()
    return LocalProcesses(devices, jobs, options.retries)


def _ray(runner, cells: list, options: ExecutorOptions):
    return RayExecutor(options.address, options.jobs_per_gpu or 1, retries=options.retries)


EXECUTORS = {"local": _local, "ray": _ray}


def check_options(name: str, options: ExecutorOptions) -> None:
    """Refuse a bad executor or option before anything is planned (also under --dry-run)."""
    from ..errors import unknown

    if name not in EXECUTORS:
        raise unknown("executor", name, EXECUTORS)
    if options.jobs_per_gpu is not None and options.jobs_per_gpu < 1:
        raise BenchbdError(f"--jobs-per-gpu {options.jobs_per_gpu} is invalid: must be at least 1")
    if options.retries < 0:
        raise BenchbdError(f"--retries {options.retries} is invalid: must be 0 or more")


def make_executor(name: str, runner, cells: list, options: ExecutorOptions):
    check_options(name, options)
    return EXECUTORS[name](runner, cells, options)
