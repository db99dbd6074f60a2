"""The search config: hardware pools, quality and latency settings, the strategy, the Pareto pick rule."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lonas_ray.build import SupernetSpec
from lonas_ray.config_io import ConfigError, YamlConfig, help_field
from lonas_ray.data.spec import DataSpec
from lonas_ray.model_source import DTYPES
from lonas_ray.search.latency import RUNTIMES
from lonas_ray.search.objective import OBJECTIVES

POOL_RUNTIMES = RUNTIMES + ("vllm",)  # vllm: lonas_ray.search.vllm_runtime
POOL_LABEL = "lonas/pool"
PLACEMENTS = ("auto", "label", "resource")
STRATEGIES = ("heuristic", "random", "nsga2", "tpe")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class LatencySpec:
    """How a pool measures serving latency (see ``lonas_ray.search.latency``)."""

    batch_size: int = help_field(1, help="requests decoded together")
    prompt_len: int = help_field(128, help="prompt tokens (prefill)")
    new_tokens: int = help_field(32, help="greedy decode steps after the prefill")
    dtype: str = help_field("auto", help=f"dtype the sub-network is served in: auto (bfloat16 on GPU, "
                                         f"float32 on CPU) or one of {', '.join(DTYPES)}")
    warmup: int = help_field(2, help="unmeasured requests first")
    repeats: int = help_field(10, help="measured requests; median and p90 over these")
    runtimes: list[str] = help_field(
        default_factory=lambda: ["auto"],
        help=f"runtimes to time, the first is the search objective: {', '.join(POOL_RUNTIMES)}; "
        "auto = cuda_graph + eager on GPU, static + eager on CPU; vllm = served by vLLM's offline engine in "
        "vLLM's own environment (latency.vllm_python)",
    )
    reference_every: int = help_field(
        4, help="time the maximal sub-network again after every N timed evaluations of an evaluator (and with its "
        "first): the same-run reference of every speed-up, and its drift over a long search; 0: only the "
        "maximal's own row")
    vllm_python: str = help_field(
        "", help="runtime vllm: the python of vLLM's environment on the pool's nodes (`bash jobs/make_vllm_env.sh "
        "DIR` makes one: DIR/bin/python); checked on the pool's own node before any trial"
    )

    def __post_init__(self):
        for name in ("batch_size", "prompt_len", "new_tokens", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"latency.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("warmup", "reference_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"latency.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"latency.dtype '{self.dtype}' is unknown; use auto or one of {', '.join(DTYPES)}")
        if not self.runtimes:
            raise ConfigError("latency.runtimes must name at least one runtime")
        for r in self.runtimes:
            if r != "auto" and r not in POOL_RUNTIMES:
                raise ConfigError(f"latency.runtimes: '{r}' is unknown; use auto or {', '.join(POOL_RUNTIMES)}")
        if "vllm" in self.runtimes and not self.vllm_python:
            raise ConfigError("latency.runtimes: vllm needs latency.vllm_python, the python of vLLM's environment "
                              "on the pool's nodes: build one with `bash jobs/make_vllm_env.sh DIR` and set "
                              "DIR/bin/python")
        if "auto" in self.runtimes and len(self.runtimes) > 1:
            raise ConfigError("latency.runtimes: 'auto' stands alone")

    def resolved_runtimes(self, cuda: bool) -> list[str]:
        if self.runtimes == ["auto"]:
            return ["cuda_graph", "eager"] if cuda else ["static", "eager"]
        if not cuda and "cuda_graph" in self.runtimes:
            raise ConfigError("latency.runtimes: cuda_graph needs a GPU; this pool's evaluators have none")
        return list(self.runtimes)


@dataclass
class PoolSpec:
    """One hardware pool: which nodes it is, what an evaluator takes there, how latency is measured."""

    placement: str = help_field(
        "auto", help="how trials reach the pool's nodes: label (label_selector), resource (custom resource), "
        "or auto (label when some node carries it, else the resource)"
    )
    label_selector: dict[str, str] = help_field(
        default_factory=dict, help=f"node labels of the pool; default {{{POOL_LABEL}: <pool name>}}"
    )
    resource: str = help_field("", help="custom resource of the pool's nodes; default pool_<pool name>")
    evaluators: int = help_field(1, help="evaluation workers (concurrent trials) on this pool")
    cpus: float = help_field(1, help="CPUs per evaluation worker")
    gpus: float = help_field(0, help="GPUs per evaluation worker (1: the sub-network is timed on its own GPU)")
    device: str = help_field("auto", help=f"where evaluators run the model: {', '.join(DEVICES)} (auto: cuda if gpus)")
    wait_for_nodes_s: float | None = help_field(
        None, help="how long to wait for the pool's first node before failing; unset: 900 s (a cloud GPU node's "
        "boot) when the cluster runs autoscaler v2, else 0 (a fixed cluster: fail at once)"
    )
    latency: LatencySpec = help_field(default_factory=LatencySpec, help="latency measurement")

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"pool placement '{self.placement}' is unknown; use one of {', '.join(PLACEMENTS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"pool device '{self.device}' is unknown; use one of {', '.join(DEVICES)}")
        if not isinstance(self.evaluators, int) or self.evaluators < 1:
            raise ConfigError(f"pool evaluators must be an integer >= 1, got {self.evaluators!r}")
        if self.cpus < 0 or self.gpus < 0 or (self.wait_for_nodes_s or 0) < 0:
            raise ConfigError("pool cpus, gpus and wait_for_nodes_s must be >= 0")
        if self.device == "cuda" and not self.gpus:
            raise ConfigError("pool device cuda needs gpus > 0 (else Ray hides the GPUs from the evaluator)")
        self.latency.resolved_runtimes(self.uses_cuda)  # cuda_graph on a pool without GPUs fails here

    @property
    def uses_cuda(self) -> bool:
        return self.device == "cuda" or (self.device == "auto" and self.gpus > 0)


@dataclass
class QualitySpec:
    examples: int | None = help_field(200, help="evaluation examples per search trial (a fixed seeded subset)")
    final_examples: int | None = help_field(
        None, help="examples for the Pareto members' final evaluation (unset: the whole evaluation set)"
    )
    batch_size: int = help_field(16, help="rows per forward when scoring")
    seed: int = help_field(0, help="which subset")

    def __post_init__(self):
        for name in ("examples", "final_examples"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"quality.{name} must be a positive integer or unset, got {v!r}")
        if self.batch_size < 1:
            raise ConfigError("quality.batch_size must be >= 1")


@dataclass
class StrategySpec:
    strategy: str = help_field("nsga2", help=f"how configurations are proposed: {', '.join(STRATEGIES)}")
    pools: list[str] = help_field(default_factory=list, help="pools to search on (default: every pool)")
    objective: str = help_field(
        "task_loss", help="what the searcher optimises besides speed: task_loss (lower is better: the choice "
        "decision's cross-entropy for multiple choice, the answer loss otherwise; smooth on small subsets and "
        "tracks accuracy), quality (accuracy itself: steps of 1/n on n examples) or loss (the answer loss: for "
        "multiple choice it mostly measures copying *a* listed choice)"
    )
    budget: int = help_field(32, help="evaluations per pool, counting those of earlier runs in output_dir")
    population: int = help_field(8, help="NSGA-II population size; TPE's random start-up trials")
    seed: int = help_field(0, help="sampler seed (each pool's sampler is seeded from it and the pool's name)")
    cross_evaluate: bool = help_field(
        True, help="with several pools, also evaluate each pool's front members on every other pool (a latency "
        "per pool for every chosen sub-network; these rows count towards a later, larger budget)"
    )
    concurrent_pools: bool = help_field(
        True, help="search every pool at once (a Tune run per pool, each with its own searcher and budget; one "
        "writer of results.parquet); false: one pool after another"
    )
    trials_per_run: int = help_field(
        250, help="the most trials one Tune run of a pool's search holds; a longer search runs as several, each "
        "continuing from the rows, so the driver's memory stays bounded however large the budget"
    )
    trial_retries: int = help_field(
        2, help="times an evaluation whose evaluator died (its worker killed, its node lost, out of memory) is "
        "started again on a fresh evaluator of its pool before it counts as failed"
    )

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy '{self.strategy}' is unknown; use one of {', '.join(STRATEGIES)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"search.objective '{self.objective}' is unknown; use task_loss, quality or loss")
        if not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"search.budget must be an integer >= 1 (evaluations per pool), got {self.budget!r}")
        if not isinstance(self.population, int) or self.population < 2:
            raise ConfigError(f"search.population must be an integer >= 2, got {self.population!r}")
        if not isinstance(self.trials_per_run, int) or self.trials_per_run < 1:
            raise ConfigError(f"search.trials_per_run must be an integer >= 1, got {self.trials_per_run!r}")
        if not isinstance(self.trial_retries, int) or self.trial_retries < 0:
            raise ConfigError(f"search.trial_retries must be an integer >= 0, got {self.trial_retries!r}")


@dataclass
class ParetoSpec:
    delta: float = help_field(0.01, help="pick: the fastest member with quality >= maximal's - delta")
    reference_quality: float = help_field(0.0, help="hypervolume reference: the worst quality that counts")
    reference_cost: float = help_field(
        1.1, help="hypervolume reference for latency and params, as a multiple of the maximal sub-network's"
    )

    def __post_init__(self):
        if self.delta < 0:
            raise ConfigError(f"pareto.delta must be >= 0, got {self.delta}")
        if self.reference_cost <= 0:
            raise ConfigError(f"pareto.reference_cost must be > 0, got {self.reference_cost}")


@dataclass
class SearchConfig(YamlConfig):
    CONFIG_NAME = "search config"

    data: DataSpec = help_field(help="evaluation data (data.eval)")
    pools: dict[str, PoolSpec] = help_field(help="hardware pools by name")
    supernet_dir: str | None = help_field(None, help="a trained super-network (lonas-ray train's supernet/)")
    supernet: SupernetSpec | None = help_field(
        None, help="or build an untrained super-network from this spec (smoke tests, benchmarks)"
    )
    output_dir: str = help_field("out/search", help="results.parquet, pareto.parquet and the Tune runs go here")
    search: StrategySpec = help_field(default_factory=StrategySpec, help="strategy, pools and budget")
    quality: QualitySpec = help_field(default_factory=QualitySpec, help="task quality")
    pareto: ParetoSpec = help_field(default_factory=ParetoSpec, help="Pareto reference and pick rule")

    def __post_init__(self):
        if (self.supernet_dir is None) == (self.supernet is None):
            raise ConfigError("set exactly one of supernet_dir (a trained super-network) and supernet (a spec)")
        if self.data.eval is None:
            raise ConfigError("data.eval is not set: the search needs held-out evaluation data")
        if not self.pools:
            raise ConfigError("pools: name at least one hardware pool")
        if len(set(self.search.pools)) != len(self.search.pools):
            raise ConfigError(f"search.pools lists a pool twice: {self.search.pools}")
        for name in self.search.pools:
            if name not in self.pools:
                close = difflib.get_close_matches(name, list(self.pools), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"search.pools: unknown pool '{name}'{hint}; pools: {', '.join(self.pools)}")
        if not self.search.pools:
            self.search.pools = list(self.pools)


def pool_label(name: str, pool: PoolSpec) -> dict[str, str]:
    return dict(pool.label_selector) or {POOL_LABEL: name}


def pool_resource(name: str, pool: PoolSpec) -> str:
    return pool.resource or f"pool_{name}"

