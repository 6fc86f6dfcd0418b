"""The runner: expand a (dataset x attack x defense x seed) grid, resolve and validate every
parameter before any training, then run each cell, reusing cached artifacts, and write one
result row per finished cell. It knows no method by name: only the interfaces."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ..attacks import ATTACKS, Attack, AttackTools, attack_groups
from ..budgets import BUDGETS
from ..config import Layers, as_dict
from ..data import DATASETS, Dataset, LoadedData, PoisonedSplit, Split, Splits, limit_holdout, parse_dataset_spec, split_holdout
from ..defenses import DEFENSES, Defense, DefenseContext, Need, defense_groups
from ..detectors import DETECTORS, Detector, detector_groups
from ..detectors.base import GuardedModel
from ..detectors.evaluation import detect
from ..errors import BenchbdError
from ..models import MODELS, create_model
from ..progress import NullProgress
from ..retune import RetuneParams, retune, retuning_set
from ..seeding import derive
from ..train import TRAINER_VERSION, Trainer, TrainingDiverged, TrainRecipe, precision_of, resolve_device
from .cache import Cache
from .files import content_key
from .results import Results
from .serial import Serial


@dataclass
class Cell:
    """One fully resolved (dataset, attack, defense, seed, budget) cell."""

    dataset_name: str
    dataset: Dataset
    data: LoadedData
    attack: Attack
    defense: Defense
    seed: int
    budget: str
    normal_recipe: TrainRecipe
    precision: str = "fp32"  # the numeric mode the cell trains and evaluates in (bf16 autocast on CUDA)
    detector: Detector | None = None  # a detector cell: the backdoored model guarded by this detector
    retune: RetuneParams | None = None  # --retune: the retuning attack after the defense

    @property
    def model_name(self) -> str:
        return self.dataset.params.model

    @property
    def label(self) -> str:
        guard = f"detector {self.detector.name}" if self.detector else self.defense.name
        return f"{self.dataset_name} / {self.attack.name} / {guard} / seed {self.seed}"

    def poison_identity(self) -> dict:
        identity = {
            "dataset": self.data.identity,
            "holdout": self.dataset.params.holdout_fraction,
            "seed": self.seed,
            **self.attack.identity(),
        }
        if self.attack.trains_surrogate:  # the poisoned images depend on how the surrogate was trained
            identity["surrogate"] = {"model": self.model_name, "recipe": as_dict(self.normal_recipe), **self.budget_identity()}
        return identity

    def budget_identity(self) -> dict:
        """What fixes every training run's length and numerics: the budget's rule and the precision."""
        return {"budget": self.budget, "budget_rule": BUDGETS.get(self.budget).identity(), "precision": self.precision}

    def params(self) -> dict:
        """Every resolved parameter, as recorded in the result row."""
        out = {"dataset": as_dict(self.dataset.params), "attack": as_dict(self.attack.params), "defense": as_dict(self.defense.params)}
        if Need.BACKDOORED_MODEL in self.defense.needs:
            out["train"] = as_dict(self.normal_recipe)
        if self.detector is not None:
            out["detector"] = as_dict(self.detector.params)
        if self.retune is not None:
            out["retune"] = as_dict(self.retune)
        return out

    def versions(self) -> dict:
        """The methods' and the trainer's version numbers (all in the key): which code a row's numbers come from."""
        out = {"attack": self.attack.version, "defense": self.defense.version, "trainer": TRAINER_VERSION}
        return {**out, "detector": self.detector.version} if self.detector is not None else out

    @property
    def key(self) -> str:
        return content_key(
            {  # the data by its content (in the poison identity), not by its name or path
                "poison": self.poison_identity(),
                "defense": self.defense.name,
                "defense_version": self.defense.version,
                "params": self.params(),
                **self.budget_identity(),
                "trainer": TRAINER_VERSION,
                **({"detector": self.detector.identity()} if self.detector is not None else {}),
            }
        )


@dataclass
class Scores:
    """A model's numbers on the test set, in %: clean accuracy, attack success rate, robust accuracy
    (triggered non-target images classified as their true label, BackdoorBench's R-Acc)."""

    ca: float
    asr: float
    ra: float
    n_asr: int


@dataclass
class Defended:
    """A cell's defended model with what produced it (for rows, and for figures that look inside)."""

    model: torch.nn.Module
    context: DefenseContext
    splits: Splits
    trainer: Trainer
    cached: dict
    started: float  # perf_counter() when the cell began
    new_model: Callable | None = None
    tools: AttackTools | None = None


def training_key(cell: Cell) -> dict:
    """What, besides its data, determines a model or artifact trained for a cell (part of cache keys)."""
    return {
        "seed": cell.seed,
        "holdout": cell.dataset.params.holdout_fraction,
        "model": cell.model_name,
        "recipe": as_dict(cell.normal_recipe),
        **cell.budget_identity(),
        "trainer": TRAINER_VERSION,
    }


def package_sha256(package: Path) -> str:
    """sha256 over the relative path and content of every file of a package folder (no bytecode)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def code_sha256() -> str:
    """benchbd's files (sources, registry, assets) as this process first read them: pinned when the
    first runner starts, so rows say which code ran whatever git does meanwhile."""
    return package_sha256(Path(__file__).resolve().parent.parent)


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """The commit of the code this process runs: read once, when the first runner starts (a
    commit made while a long run goes on does not relabel its later rows); '+dirty' when the
    package's tracked files differ from it."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


class Runner:
    def __init__(
        self,
        results: Results,
        cache: Cache,
        layers: Layers | None = None,
        data_root: Path | None = None,
        device: str = "auto",
        progress: NullProgress | None = None,
        warn: Callable[[str], None] = print,
    ):
        git_commit(), code_sha256()  # pinned now: the code this run executes
        self.results = results
        self.cache = cache
        self.layers = layers or Layers()
        self.data_root = data_root
        self.device = resolve_device(device)
        self.progress = progress or NullProgress()
        self.warn = warn
        self.deadline: float | None = None  # time.monotonic() after which no new cell starts (--time-limit)
        self._loaded: dict[str, LoadedData] = {}

    def out_of_time(self) -> bool:
        """True once the run's time limit has passed: executors start no new cell, cells in flight finish."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    # ---- planning: every name and parameter is checked before anything trains
    def plan(
        self,
        datasets: list[str],
        attacks: str,
        defenses: str,
        seeds: list[int],
        budget: str,
        layers: Layers | None = None,
        detectors: str | None = None,
        retune: bool = False,
    ) -> list[Cell]:
        """Every cell of the grid, parameters resolved from `layers` (default: the runner's).

        `detectors`: also one cell per (dataset, attack, detector, seed) on the backdoored model.
        `retune`: every defense cell gets the retuning check, and `none` joins the defenses (its
        cell holds the two controls: the backdoored and a clean model retuned)."""
        layers = layers or self.layers
        budget = BUDGETS.resolve(budget)
        attack_names = ATTACKS.expand(attacks, attack_groups())
        defense_names = DEFENSES.expand(defenses, defense_groups()) if defenses else []
        detector_names = DETECTORS.expand(detectors, detector_groups()) if detectors else []
        if retune and "none" not in defense_names:
            defense_names = ["none", *defense_names]
        for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES), ("dataset", DATASETS), ("detector", DETECTORS)):
            layers.check_names(kind, {name: registry.get(name).Params for name in registry.names()}, DATASETS.names())
        layers.check_names("train", {"normal": TrainRecipe, "retune": RetuneParams}, DATASETS.names())
        cells = []
        for spec in datasets:
            label, name, dataset, data = self.dataset(spec, layers)
            num_classes = len(data.classes)
            n_holdout = int(round(dataset.params.holdout_fraction * len(data.train)))
            if n_holdout < 1:
                raise BenchbdError(
                    f"dataset.{name}.holdout_fraction={dataset.params.holdout_fraction} leaves no holdout image of "
                    f"{len(data.train)} training images: valid at least {1 / len(data.train):.2g}"
                )
            if dataset.params.holdout_size is not None and dataset.params.holdout_size > n_holdout:
                raise BenchbdError(
                    f"dataset.{name}.holdout_size={dataset.params.holdout_size} is more than the holdout of {label} "
                    f"({n_holdout} images at holdout_fraction={dataset.params.holdout_fraction}): valid 1..{n_holdout}"
                )
            recipe = layers.params("train", "normal", name, TrainRecipe)
            retuning = layers.params("train", "retune", name, RetuneParams) if retune else None
            pipeline = dataset.pipeline
            architecture = create_model(dataset.params.model, num_classes, mean=pipeline.mean, std=pipeline.std)
            for attack_name in attack_names:
                attack = self.attack(attack_name, name, data, layers)
                for defense_name in defense_names:
                    dcls = DEFENSES.get(defense_name)
                    defense = dcls(layers.params("defense", defense_name, name, dcls.Params), defense_name)
                    defense.check_model(architecture)
                    for seed in seeds:
                        cells.append(
                            Cell(label, dataset, data, attack, defense, seed, budget, recipe, precision_of(self.device), retune=retuning)
                        )
                for detector_name in detector_names:
                    detector = DETECTORS.get(detector_name)(
                        layers.params("detector", detector_name, name, DETECTORS.get(detector_name).Params), detector_name
                    )
                    for seed in seeds:
                        guard = GuardedModel(GuardedModel.Params(), "none")
                        cells.append(
                            Cell(label, dataset, data, attack, guard, seed, budget, recipe, precision_of(self.device), detector=detector)
                        )
        return cells

    def dataset(self, spec: str, layers: Layers | None = None) -> tuple[str, str, Dataset, LoadedData]:
        """(label for rows, registered name, source, loaded data) for a --dataset entry."""
        name, path = parse_dataset_spec(spec)
        source = DATASETS.get(name)
        dataset = source((layers or self.layers).params("dataset", name, name, source.Params), self.data_root, path)
        MODELS.resolve(dataset.params.model)
        return (spec if path else name), name, dataset, self.load(dataset)

    def attack(self, name: str, dataset_name: str, data: LoadedData, layers: Layers | None = None) -> Attack:
        layers = layers or self.layers
        cls = ATTACKS.get(name)
        attack = cls(layers.params("attack", name, dataset_name, cls.Params), len(data.classes), data.train.images.shape[1], name)
        attack.resolve_parts(lambda other: layers.params("attack", other, dataset_name, ATTACKS.get(other).Params))
        return attack

    def load(self, dataset: Dataset) -> LoadedData:
        key = content_key(dataset.source())
        if key not in self._loaded:
            self._loaded[key] = dataset.load()
            for warning in self._loaded[key].warnings:
                self.warn(f"warning: {warning}")
        return self._loaded[key]

    # ---- running
    def run(self, cells: list[Cell], force: bool = False, executor=None) -> list[dict]:
        """Run the cells not finished yet (all with `force`); return the rows written.

        A cell that fails (an exception, a diverging loss, a killed worker) gets a row with
        status "failed" and its reason; the grid goes on, and the next run retries it."""
        executor = executor or Serial()
        written = []
        with self.results.lock():
            unique = list({cell.key: cell for cell in cells}.values())
            pending = [cell for cell in unique if force or not self.results.done(cell.key)]
            self.progress.start_grid(len(unique))
            self.progress.skipped(len(unique) - len(pending))

            def record(row: dict) -> None:
                self.results.write(row)
                written.append(row)

            executor.run(self, pending, record)
        return written

    def safe_run_cell(self, cell: Cell) -> dict:
        """The cell's row; a failed row (with the reason) instead of an exception."""
        try:
            return self.run_cell(cell)
        except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the grid
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            return self.failed_row(cell, reason)

    def failed_row(self, cell: Cell, reason: str, wall_time_s: float = 0.0) -> dict:
        return {
            **self._identity_row(cell),
            "status": "failed",
            "error": reason,
            "ca": float("nan"),
            "asr": float("nan"),
            "wall_time_s": round(wall_time_s, 3),
        }

    def _identity_row(self, cell: Cell) -> dict:
        return {
            "cell_key": cell.key,
            "dataset": cell.dataset_name,
            "paper_dataset": cell.dataset.paper_dataset or cell.dataset_name,
            "attack": cell.attack.name,
            "defense": cell.defense.name,
            "defense_group": cell.defense.group,  # tables group columns by it without importing the registry
            **({"detector": cell.detector.name} if cell.detector is not None else {}),
            "seed": cell.seed,
            "budget": cell.budget,
            "model": cell.model_name,
            "params": cell.params(),
            "versions": cell.versions(),
            "data_sha256": cell.data.sha256,
            **({"data_warnings": cell.data.warnings} if cell.data.warnings else {}),
            "device": self.device_name(),
            "precision": cell.precision,
            "git_commit": git_commit(),
            "code_sha256": code_sha256(),
            "torch_version": torch.__version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    @staticmethod
    def summary(row: dict) -> str:
        if row.get("status") == "failed":
            return f"FAILED: {row['error']}"
        return f"ASR {row['asr']:.2f}  CA {row['ca']:.2f}  ({row['wall_time_s']:.0f}s)"

    def run_cell(self, cell: Cell, outcome: "Defended | None" = None) -> dict:
        """The result row of a cell; `outcome`: the cell already defended (by a figure), to evaluate."""
        outcome = outcome or self.defend(cell)
        self.progress.stage("evaluating")
        scores = self.evaluate(outcome.trainer, outcome.model, cell.attack, outcome.splits.test)
        for name, probe in outcome.context.probes.items():  # models inside the defense (T&R's trapped model)
            inside = self.evaluate(outcome.trainer, probe, cell.attack, outcome.splits.test)
            outcome.context.metrics.update({f"{name}_asr": inside.asr, f"{name}_ca": inside.ca})
        splits = outcome.splits
        for name, labelled in cell.attack.accuracy_sets(splits.test, outcome.trainer.device).items():
            outcome.context.metrics[f"{name}_accuracy"] = round(100 * outcome.trainer.accuracy(outcome.model, labelled), 4)
        if cell.detector is not None:  # the model behind the detector: its ASR and CA are the filtered ones
            self.progress.stage(f"detector {cell.detector.name}")
            found = detect(outcome.trainer, outcome.model, cell.detector, outcome.context.holdout, splits.test,
                           cell.attack.backdoor_test(splits.test), cell.attack.params.target, splits.num_classes, cell.seed)  # fmt: skip
            outcome.context.metrics.update(found)
            scores = Scores(found["filtered_ca"], found["filtered_asr"], scores.ra, scores.n_asr)
        if cell.retune is not None:
            outcome.context.metrics.update(self.retuning(cell, outcome))
        row = {
            **self._identity_row(cell),
            "status": "ok",
            "ca": scores.ca,
            "asr": scores.asr,
            "ra": scores.ra,
            "n_test": len(splits.test),
            "n_asr": scores.n_asr,
            "n_train": len(splits.train),
            "n_holdout": len(splits.holdout if outcome.context.holdout is None else outcome.context.holdout),
            "metrics": outcome.context.metrics,
            "trainings": outcome.trainer.trainings,
            "cached": outcome.cached,
            "wall_time_s": round(time.perf_counter() - outcome.started, 3),
        }
        if self.device.type == "cuda":
            row["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return row

    def defend(self, cell: Cell) -> "Defended":
        """Split, poison, train what the defense needs (cached), run the defense."""
        started = time.perf_counter()
        seed = cell.seed
        splits, trainer, new_model = self.cell_setup(cell)
        tools = self.attack_tools(cell, splits, trainer, new_model)
        if type(cell.attack).prepare is not Attack.prepare:
            self.progress.stage(f"preparing ({cell.attack.name})")
            cell.attack.prepare(tools)
        target = getattr(cell.attack.params, "target", None)  # scores NC's detection; no defense decides on it
        ctx = DefenseContext(trainer, new_model, splits.num_classes, seed, normal_recipe=cell.normal_recipe, attack_target=target)
        ctx.cache_model = lambda purpose, identity, model, train: self.defense_model(cell, trainer, purpose, identity, model, train)
        needs = cell.defense.needs
        cached = {}
        if needs & {Need.POISONED_TRAIN, Need.BACKDOORED_MODEL}:
            poisoned, cached["poisoned_split"] = self.poisoned_split(cell, splits, tools)
            if Need.POISONED_TRAIN in needs:  # the attacker's training control only where it reaches (Defense docs)
                ctx.poisoned_train = poisoned if cell.defense.attacker_controls_training else poisoned.static(seed)
            if Need.BACKDOORED_MODEL in needs:
                self.progress.stage("backdoored model")
                ctx.backdoored_model, cached["backdoored_model"] = self.trained_model(
                    cell, trainer, new_model, "backdoored", {"poison": cell.poison_identity()}, poisoned.plus_clean(splits.holdout)
                )
                start = self.evaluate(trainer, ctx.backdoored_model, cell.attack, splits.test)
                ctx.metrics.update(start_asr=start.asr, start_ca=start.ca)  # the model the defense starts from
        if Need.HOLDOUT in needs:
            ctx.holdout = limit_holdout(splits.holdout, cell.dataset.params.holdout_size, seed)
        self.progress.stage(f"defense {cell.defense.name}")
        torch.manual_seed(derive(seed, f"defense:{cell.defense.name}"))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        model = cell.defense.run(ctx)
        if not all(bool(torch.isfinite(w).all()) for w in model.state_dict().values() if w.is_floating_point()):
            raise TrainingDiverged(f"defense {cell.defense.name} returned a model with NaN or infinite weights")
        return Defended(model, ctx, splits, trainer, {**cached, **ctx.cached}, started, new_model, tools)

    def retuning(self, cell: Cell, outcome: Defended) -> dict:
        """The retuning check on the defended model; on an undefended cell also on a model trained
        on clean data only (`clean_model_*`), which must not acquire the backdoor."""
        trainer, splits = outcome.trainer, outcome.splits
        self.progress.stage("retuning check")
        poisoned, _ = self.poisoned_split(cell, splits, outcome.tools)
        data = retuning_set(splits.train, poisoned.static(cell.seed), splits.full_train_size, cell.retune, cell.seed)

        def evaluate(model):
            scores = self.evaluate(trainer, model, cell.attack, splits.test)
            return scores.asr, scores.ca

        out = retune(trainer, outcome.model, data, cell.retune, cell.seed, evaluate)
        if cell.defense.undefended:
            self.progress.stage("clean model (retuning control)")
            whole = Split.concat(splits.train, splits.holdout)
            clean, _ = self.trained_model(
                cell, trainer, outcome.new_model, "clean model", {"clean_train": cell.poison_identity()["dataset"]}, whole
            )
            out.update({f"clean_model_{k}": v for k, v in retune(trainer, clean, data, cell.retune, cell.seed, evaluate).items()})
        return out

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()})"

    @staticmethod
    def evaluate(trainer: Trainer, model, attack: Attack, test: Split) -> "Scores":
        """CA on the whole clean test set; ASR and RA on the triggered non-target test images (one
        pass: the target, or the true label). Per sample, in %."""
        ca = trainer.accuracy(model, test)
        backdoor = attack.backdoor_test(test)
        predicted = trainer.predict(model, backdoor.images)

        def share(hits: torch.Tensor) -> float:
            return round(100 * hits.double().mean().item(), 4) if len(hits) else float("nan")

        return Scores(round(100 * ca, 4), share(predicted == attack.params.target), share(predicted == backdoor.labels), len(predicted))

    def cell_setup(self, cell: Cell) -> tuple[Splits, Trainer, Callable]:
        """The cell's splits (seeded holdout), trainer and model factory."""
        data, pipeline = cell.data, cell.dataset.pipeline
        splits = split_holdout(data.train, data.test, len(data.classes), cell.dataset.params.holdout_fraction, cell.seed)
        trainer = Trainer(pipeline, BUDGETS.get(cell.budget), self.device, cell.seed, self.progress, train_size=splits.full_train_size)

        def new_model(dropout: float = 0.0):
            return create_model(cell.model_name, splits.num_classes, dropout=dropout, mean=pipeline.mean, std=pipeline.std)

        return splits, trainer, new_model

    def prepare_from_cache(self, cell: Cell) -> None:
        """The cell's attack ready to stamp triggers from cached artifacts only (the gallery): a
        one-line error naming the run that builds them when they are not cached yet."""
        if type(cell.attack).prepare is not Attack.prepare:
            splits, trainer, new_model = self.cell_setup(cell)
            cell.attack.prepare(self.attack_tools(cell, splits, trainer, new_model, build=False))

    def attack_tools(self, cell: Cell, splits: Splits, trainer: Trainer, new_model, build: bool = True) -> AttackTools:
        """What the cell's attack may train and cache: models on the clean training split, artifacts."""

        def train_cached(purpose: str, data: Split):
            return self.trained_model(cell, trainer, new_model, purpose, {"clean_train": cell.poison_identity()["dataset"]}, data)[0]

        def cached(kind: str, identity: dict, make):
            key = {**identity, "attack": cell.attack.identity(), "clean_train": cell.poison_identity()["dataset"], **training_key(cell)}
            if not build:
                found = self.cache.get(kind, key)
                if found is None:
                    raise BenchbdError(
                        f"attack {cell.attack.name} has no {kind} for {cell.dataset_name}, seed {cell.seed}, budget {cell.budget} "
                        f"in {self.cache.root} yet: `benchbd run --dataset {cell.dataset_name} --attacks {cell.attack.name} "
                        f"--defenses none --budget {cell.budget}` trains it"
                    )
                return found
            return self.cached_training(trainer, kind, key, make)[0]

        return AttackTools(trainer, splits.train, train_cached, new_model, cell.normal_recipe, cached)

    def poisoned_split(self, cell: Cell, splits: Splits, tools: AttackTools) -> tuple[PoisonedSplit, bool]:
        self.progress.stage(f"poisoning ({cell.attack.name})")

        def build():
            p = cell.attack.poison(splits.train, splits.full_train_size, cell.seed, tools)
            return {"indices": p.poisoned, "images": p.images[p.poisoned], "labels": p.labels}

        art, hit = self.cached_training(tools.trainer, "poisoned", cell.poison_identity(), build)
        images = splits.train.images.clone()
        images[art["indices"]] = art["images"]
        return PoisonedSplit(images, art["labels"], poisoned=art["indices"], training_control=cell.attack.training_control), hit

    def defense_model(self, cell: Cell, trainer: Trainer, purpose: str, identity: dict, model: torch.nn.Module, train) -> bool:
        """A defense's intermediate model (T&R's stage 1), cached by what determines it; True on a hit."""
        key = {
            "defense": cell.defense.name,
            "version": cell.defense.version,
            "purpose": purpose,
            "settings": identity,
            "poison": cell.poison_identity(),
            "seed": cell.seed,
            "model": cell.model_name,
            **cell.budget_identity(),
            "trainer": TRAINER_VERSION,
        }

        def build():
            train(model)
            return model.state_dict()

        state, hit = self.cached_training(trainer, f"{cell.defense.name}_{purpose}", key, build)
        if hit:
            model.load_state_dict(state)
        return hit

    def cached_training(self, trainer: Trainer, kind: str, identity: dict, build) -> tuple[dict, bool]:
        """`cache.get_or_build` for an artifact that trains: the training runs of its build are
        stored beside it, and a cell that loads it records them with `cached: true`."""
        start = len(trainer.trainings)
        artifact, hit = self.cache.get_or_build(kind, identity, build, describe=lambda: {"trainings": trainer.trainings[start:]})
        if hit:
            trainer.trainings += [{**run, "cached": True} for run in self.cache.meta(kind, identity).get("trainings", [])]
        return artifact, hit

    def trained_model(
        self, cell: Cell, trainer: Trainer, new_model, purpose: str, identity: dict, data: Split
    ) -> tuple[torch.nn.Module, bool]:
        """A model normally trained on `data` (the normal recipe and the cell's budget), cached.

        `identity` must pin down `data`; the seed, holdout, model, recipe and budget are added here."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(cell.seed, f"init:{purpose}"))
            model = new_model()

        def build():
            return trainer.fit(model, data, cell.normal_recipe, desc=purpose).state_dict()

        key = {**identity, "purpose": purpose, **training_key(cell)}
        state, hit = self.cached_training(trainer, purpose.replace(" ", "_"), key, build)
        model.load_state_dict(state)
        return model, hit
