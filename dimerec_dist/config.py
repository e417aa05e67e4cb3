"""Every knob of a dimerec-dist job, as dataclasses filled from YAML and key=value overrides.

One tree of dataclasses is the single source of truth: the YAML file, the command line
and the checkpoint all speak it. Unknown keys and out-of-range values are refused with
a one-line error that names the key and where it came from, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot be run: the message names the key and its source."""


GEM_KINDS = ("comirec_sa", "comirec_dr", "sasrec", "mean", "last_k")
GUIDANCE_POOLING = ("concat", "attention")
BETA_SCHEDULES = ("linear", "cosine")
NOISE_SPACES = ("sphere", "euclidean")
GRW_NOISE_SCALES = ("angle", "literal")
REVERSE_NOISE_STDS = ("posterior", "beta_tilde")
ATTENTION_POSITIONS = ("input", "bias")


# Model config keys that change the shape or meaning of saved weights.
MODEL_SHAPE_KEYS = (
    "embedding_dim",
    "max_history",
    "gem",
    "num_interests",
    "gem_hidden_mult",
    "routing_iterations",
    "sasrec_layers",
    "sasrec_heads",
    "dam_hidden",
    "dam_layers",
    "guidance_pooling",
    "diffusion_steps",
)


@dataclass
class ModelConfig:
    """The DimeRec model: GEM, DAM, diffusion and loss weights (METHOD.md)."""

    embedding_dim: int = 64
    """d: the width of item embeddings, interests and the generated interest."""
    table_dtype: str = "fp32"
    """The item table's storage: fp32, or fp16 (half the memory; rows are read as fp32, and FBGEMM's
    fused optimizer updates them in place)."""
    max_history: int = 50
    """How many of a user's latest items the GEM reads (older ones are dropped)."""
    gem: str = "comirec_sa"
    """The Guidance Extraction Module: comirec_sa (the paper's), comirec_dr, sasrec, mean, last_k."""
    num_interests: int = 4
    """K: interest vectors the GEM extracts from a history (at most max_history)."""
    gem_hidden_mult: int = 4
    """ComiRec-SA: its attention's W1 maps d -> gem_hidden_mult * d."""
    attention_positions: str = "input"
    """ComiRec-SA's positions: input (ComiRec's: a recency embedding added to each item before the attention
    MLP) or bias (a learned bias per recency and head added to the attention scores). With bias,
    data.sample_mode=sequence scores each item once per chunk instead of once per window (~10x less GEM work
    at max_history 200); with input it pays the MLP's second layer for every (window, item) pair."""
    routing_iterations: int = 3
    """ComiRec-DR: dynamic-routing iterations."""
    sasrec_layers: int = 2
    """SASRec GEM: transformer layers."""
    sasrec_heads: int = 2
    """SASRec GEM: attention heads (must divide embedding_dim)."""
    dropout: float = 0.1
    """Dropout inside the SASRec GEM (its input and layers); the other GEMs have none. [0, 1)."""
    history_dropout: float = 0.0
    """Dropout on the embedded history before any GEM, in training only: a regulariser for sparse logs. [0, 1)."""
    dam_hidden: int = 256
    """The Diffusion Aggregation Module's hidden width (a denoising MLP)."""
    dam_layers: int = 2
    """The DAM's hidden layers."""
    guidance_pooling: str = "concat"
    """How the DAM reads the K interests: concat (all of them side by side) or attention."""
    diffusion_steps: int = 50
    """T: the forward process's steps."""
    beta_schedule: str = "cosine"
    """cosine (reaches alphabar_T ~ 0 for any T) or linear (beta_start..beta_end; needs T ~ 1000)."""
    beta_start: float = 1e-4
    """Linear schedule: the first beta (0 < beta_start < beta_end < 1)."""
    beta_end: float = 0.02
    """Linear schedule: the last beta."""
    noise_space: str = "sphere"
    """sphere: Geodesic Random Walk noising on the unit sphere; euclidean: the paper's "w/o GRW" ablation."""
    grw_noise_scale: str = "angle"
    """angle: the geodesic angle follows sqrt(1 - alphabar_t), rescaled to reach grw_max_angle at t = T;
    literal: Algorithm 1 as printed, whose step of ~sqrt(d) radians wraps around the sphere."""
    grw_max_angle: float = math.pi / 2
    """The GRW angle at t = T, in (0, pi] (pi/2: where a uniform random start of inference lies)."""
    reverse_noise_std: str = "posterior"
    """The reverse step's noise: posterior (sqrt(beta_tilde), DDPM's) or beta_tilde (as Algorithm 2 prints)."""
    sample_steps: int = 1
    """Denoising steps at inference, 1..diffusion_steps."""
    sample_deterministic: bool = True
    """Inference without the reverse steps' noise (the same history always gets the same interest)."""
    guidance_dropout: float = 0.0
    """Classifier-free guidance (DreamRec's): this share of training samples denoise with a learned null
    guidance instead of the GEM's. [0, 1)."""
    guidance_scale: float = 0.0
    """w: sampling extrapolates (1 + w) f(g) - w f(null); needs guidance_dropout > 0."""
    gem_weight: float = 1.0
    """The weight of L_gem in L = w_gem L_gem + lambda L_recon + mu L_ssm (0 switches the term off)."""
    recon_weight: float = 1.0
    """lambda: the weight of L_recon."""
    ssm_weight: float = 1.0
    """mu: the weight of L_ssm."""
    temperature: float = 0.07
    """The softmax temperature of L_gem and L_ssm (> 0)."""
    cosine_logits: bool = True
    """Cosine logits (unit query and items) inside both sampled softmaxes; false: raw inner products."""

    def validate(self) -> None:
        _choice("model.gem", self.gem, GEM_KINDS)
        _choice("model.guidance_pooling", self.guidance_pooling, GUIDANCE_POOLING)
        _choice("model.beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _choice("model.noise_space", self.noise_space, NOISE_SPACES)
        _choice("model.grw_noise_scale", self.grw_noise_scale, GRW_NOISE_SCALES)
        _choice("model.reverse_noise_std", self.reverse_noise_std, REVERSE_NOISE_STDS)
        _choice("model.attention_positions", self.attention_positions, ATTENTION_POSITIONS)
        _choice("model.table_dtype", self.table_dtype, TABLE_DTYPES)
        for key in (k for k in MODEL_SHAPE_KEYS if k not in ("gem", "guidance_pooling")):  # the sizes
            _at_least(f"model.{key}", getattr(self, key), 1)
        if self.embedding_dim % self.sasrec_heads:
            raise ConfigError(
                f"model.sasrec_heads={self.sasrec_heads} must divide model.embedding_dim={self.embedding_dim}"
            )
        if not 1 <= self.sample_steps <= self.diffusion_steps:
            raise ConfigError(
                f"model.sample_steps={self.sample_steps} must lie in 1..model.diffusion_steps={self.diffusion_steps}"
            )
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(f"need 0 < model.beta_start ({self.beta_start}) < model.beta_end ({self.beta_end}) < 1")
        if not 0.0 < self.grw_max_angle <= math.pi:
            raise ConfigError(f"model.grw_max_angle={self.grw_max_angle} must lie in (0, pi]")
        for key in ("dropout", "history_dropout", "guidance_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must lie in [0, 1)")
        if self.temperature <= 0:
            raise ConfigError(f"model.temperature={self.temperature} must be > 0")
        for key in ("gem_weight", "recon_weight", "ssm_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 0")
        if self.guidance_scale < 0:
            raise ConfigError(f"model.guidance_scale={self.guidance_scale} must be >= 0")
        if self.guidance_scale > 0 and self.guidance_dropout == 0:
            raise ConfigError(
                f"model.guidance_scale={self.guidance_scale} needs model.guidance_dropout > 0: "
                "without it no null guidance is learned to steer away from"
            )
        if self.gem_weight == self.recon_weight == self.ssm_weight == 0:
            raise ConfigError("model.gem_weight, recon_weight and ssm_weight are all 0: nothing to train")

    @property
    def trains_dam(self) -> bool:
        """Whether a loss reaches the DAM; with lambda = mu = 0 the model is its GEM alone."""
        return self.recon_weight > 0 or self.ssm_weight > 0


DATA_SOURCES = ("prepared", "raw", "synthetic")
RAW_FORMATS = ("movielens", "pairs", "sequences", "events")
SAMPLE_MODES = ("all", "random_cut", "sequence")
# Measured (tools/bench_train.py --sequence-modes, max_history 1,000, batch 1,024): 256 targets a chunk
# train 2.7x faster than 1,000, whose (targets x (targets + N)) band of windows outgrows the caches.
MAX_DEFAULT_CHUNK_TARGETS = 256
# How valid/test are held out: the last two items of every user, or ComiRec's held-out users.
DATA_SPLITS = ("leave-one-out", "user")
DATA_BACKENDS = ("local", "ray")
NEGATIVE_SAMPLERS = ("uniform", "popularity")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "sgd", "adam")
TABLE_DTYPES = ("fp32", "fp16")
SHARDING = ("row_wise", "table_wise", "column_wise", "data_parallel")
# Where the table's rows live and how they are looked up (TorchRec's compute kernels): fused (in the
# device's memory, optimizer fused into backward), fused_uvm (in host memory, read over PCIe by the
# GPU), fused_uvm_caching (host memory with the hot rows cached in HBM: a table larger than the GPUs'
# memory), or auto (the planner's choice among those).
KERNELS = ("auto", "fused", "fused_uvm", "fused_uvm_caching")
QUERY_MODES = ("auto", "dam", "gem", "dam+gem")


@dataclass
class DataConfig:
    """Where the prepared dataset is, or how to make it on first use."""

    source: str = "synthetic"
    """prepared: `path` holds a dimerec-prepare output; raw: prepare `raw_path` into `path` on first use;
    synthetic: generate a short-video log and prepare it (the default job needs no data)."""
    path: str = ""
    """The prepared dataset's directory (empty: <run_dir>/data)."""
    raw_path: str = ""
    """source=raw: the raw log (a file, or for events a directory of files)."""
    raw_format: str = "sequences"
    """source=raw: movielens, pairs, sequences or events (docs/DATA.md)."""
    kcore: int = 0
    """Keep only users and items with at least this many events, iterated (0: off)."""
    split: str = "leave-one-out"
    """leave-one-out (last item test, second to last valid) or user (ComiRec: held-out users, 80% of history in)."""
    synth_users: int = 5000
    """source=synthetic: users of the generated log."""
    synth_items: int = 2000
    """source=synthetic: items of the generated log."""
    synth_events: int = 200_000
    """source=synthetic: events of the generated log."""
    synth_seed: int = 0
    """source=synthetic: the generator's seed."""
    sample_mode: str = "all"
    """all: every position of each training prefix is a sample, read with its own history (per prefix);
    sequence: the same samples, a run of a user's consecutive targets read in one pass (SASRec's way;
    model.attention_positions=bias makes it fast for ComiRec-SA); random_cut: ComiRec's one random cut per
    user. The default is all: at equal training time sequence mode was a little behind it on ML-100K,
    Beauty and Games (short histories; not significant at 3 seeds); sequence mode is for long histories,
    where it trains 8-31x the targets per second (docs/RESULTS.md, docs/BENCHMARKS.md)."""
    chunk_targets: int = 0
    """sample_mode=sequence: the most targets one chunk holds (0: model.max_history, at most 256). A chunk is read
    with up to max_history items before its first target, so larger chunks read fewer ids per target; past a
    few hundred targets its band of windows outgrows the caches (docs/DESIGN.md, "Sequence mode")."""
    streams: int = 0
    """Virtual streams of the data plan (0: the world size). Runs with the same value see the same global
    batches whatever their world size, which must divide it; set it to resume on another world size."""
    backend: str = "local"
    """Decode row groups in this process (local) or in Ray tasks (ray; RAY_ADDRESS, or a local Ray)."""
    window: int = 4
    """Row groups decoded ahead per rank."""
    mix: int = 4
    """Consecutive row groups of a stream whose samples are shuffled together."""

    def validate(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        _choice("data.raw_format", self.raw_format, RAW_FORMATS)
        _choice("data.split", self.split, DATA_SPLITS)
        _choice("data.sample_mode", self.sample_mode, SAMPLE_MODES)
        _choice("data.backend", self.backend, DATA_BACKENDS)
        _at_least("data.streams", self.streams, 0)
        _at_least("data.window", self.window, 1)
        _at_least("data.mix", self.mix, 1)
        _at_least("data.chunk_targets", self.chunk_targets, 0)
        if self.source == "prepared" and not self.path:
            raise ConfigError("data.source=prepared needs data.path (a dimerec-prepare output directory)")
        if self.source == "raw" and not self.raw_path:
            raise ConfigError("data.source=raw needs data.raw_path")
        for key in ("synth_users", "synth_items", "synth_events"):
            _at_least(f"data.{key}", getattr(self, key), 1)
        for key in ("kcore", "synth_seed"):
            _at_least(f"data.{key}", getattr(self, key), 0)


@dataclass
class TrainConfig:
    """How the model is optimised, logged, checkpointed and resumed."""

    batch_size: int = 256
    """The global batch, split evenly over ranks (and a multiple of data.streams)."""
    epochs: int = 10
    """Passes over the training samples (unless max_steps)."""
    max_steps: int = 0
    """> 0: stop after this many steps, whatever the epochs."""
    max_minutes: float = 0.0
    """> 0: stop training once this many minutes have gone into it (steps, validation, checkpoints; counted
    over restarts), then validate and evaluate as after the last epoch. For comparisons at equal
    wall-clock time; the step it stops at depends on the machine's speed."""
    dense_lr: float = 1e-3
    """Adam's learning rate for GEM and DAM."""
    weight_decay: float = 0.0
    """Adam's weight decay for GEM and DAM."""
    warmup_steps: int = 0
    """Steps of linear warm-up of the dense learning rate (0: none)."""
    grad_clip: float = 0.0
    """The largest global norm of the dense gradients (0: no clipping)."""
    sparse_optimizer: str = "rowwise_adagrad"
    """The item table's optimizer, fused into its backward: rowwise_adagrad, sgd, or adam (GPU only)."""
    sparse_lr: float = 0.05
    """The item table's learning rate."""
    embedding_init: float = 0.1
    """Table rows start uniform in (-x, x)."""
    negatives: int = 1024
    """Sampled negatives per step, shared by every sample of the step."""
    negative_sampler: str = "uniform"
    """uniform over the catalog, or popularity (training counts to the power popularity_alpha)."""
    popularity_alpha: float = 0.75
    """The popularity sampler's exponent (>= 0)."""
    in_batch_negatives: bool = False
    """Also score each sample against every target of the global batch (gathered from all ranks)."""
    logq_correction: bool = True
    """Subtract log q from the logits of popularity-biased negatives (the popularity sampler, in-batch)."""
    log_every: int = 50
    """Steps between progress lines and logged scalars."""
    eval_every_epochs: int = 1
    """Validate every this many epochs, keeping the best model (0: only at the end)."""
    patience: int = 0
    """> 0: stop once this many validations in a row have not beaten the best (early stopping), then
    evaluate the best model as after the last epoch."""
    checkpoint_every: int = 0
    """Steps between training checkpoints (0: only at epoch ends, which always save one)."""
    keep_checkpoints: int = 2
    """How many of the newest complete checkpoints are kept."""
    checkpoint_async: bool = False
    """Write checkpoints in the background while training goes on."""
    resume: str = "auto"
    """auto: the newest checkpoint in run_dir/checkpoints that verifies; none; or a checkpoint's path
    (continues it even with other settings, logged)."""
    resume_other_data: bool = False
    """Resume from a checkpoint saved on another dataset (a warm start on new data). Without it, a
    checkpoint whose dataset (its manifest's identity) differs from data.path's is refused by name."""
    pipeline: bool = True
    """Run the step on TorchRec's train pipeline: the next batches' copy to the device and id
    all-to-all overlap this step's compute (the same losses as the plain step; false: plain)."""
    precision: str = "fp32"
    """fp32, or bf16: GEM, DAM and the logits under bf16 autocast, the losses summed in fp32 (TF32
    matmuls on GPU either way)."""
    profile_steps: list[int] = field(default_factory=list)
    """[first, last]: record steps first..last (counted from 1) with torch.profiler and write each rank's
    trace to run_dir/profile/ (Chrome trace JSON: Perfetto or chrome://tracing open it). Empty: off."""
    threads: int = 0
    """torch intra-op threads per rank (0: torch's default)."""
    device: str = "auto"
    """auto (a GPU if torch sees one), cpu or cuda."""

    def validate(self) -> None:
        for key in ("batch_size", "epochs", "negatives", "log_every"):
            _at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("max_steps", "warmup_steps", "eval_every_epochs", "threads", "checkpoint_every", "patience"):
            _at_least(f"train.{key}", getattr(self, key), 0)
        for key in ("dense_lr", "sparse_lr", "embedding_init"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be > 0")
        for key in ("weight_decay", "grad_clip", "popularity_alpha", "max_minutes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        _choice("train.sparse_optimizer", self.sparse_optimizer, SPARSE_OPTIMIZERS)
        if self.patience and not self.eval_every_epochs:
            raise ConfigError(
                f"train.patience={self.patience} counts validations, and train.eval_every_epochs=0 runs none"
            )
        _choice("train.negative_sampler", self.negative_sampler, NEGATIVE_SAMPLERS)
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        _choice("train.precision", self.precision, ("fp32", "bf16"))
        _at_least("train.keep_checkpoints", self.keep_checkpoints, 1)
        if self.profile_steps and (
            len(self.profile_steps) != 2 or not 1 <= self.profile_steps[0] <= self.profile_steps[1]
        ):
            raise ConfigError(f"train.profile_steps={self.profile_steps} must be [first, last] with 1 <= first <= last")


@dataclass
class ShardingConfig:
    """How TorchRec lays the item table over ranks (the planner places the pieces)."""

    type: str = "row_wise"
    """The item table's layout over ranks: row_wise, table_wise, column_wise or data_parallel (docs/DESIGN.md)."""
    column_block: int = 0
    """column_wise: columns per block, a multiple of 4 (0: embedding_dim / world size). Row-wise Adagrad
    keeps one accumulator per row per block, so the width is part of the optimizer state."""
    kernel: str = "auto"
    """Where the table's rows live (TorchRec's compute kernel): fused (device memory), fused_uvm (host
    memory, read by the GPU), fused_uvm_caching (host memory, hot rows cached in HBM: for a table larger
    than the GPUs' memory), or auto (the planner picks what fits). CPU: auto or fused."""
    cache_load_factor: float = 0.2
    """fused_uvm_caching: the share of the table's rows the HBM cache holds (0 < x <= 1)."""
    hbm_gb: float = 0.0
    """HBM per GPU the planner may use, in GB (0: the GPU's own)."""
    host_memory_gb: float = 0.0
    """Host memory per rank the planner may use, in GB (0: the node's memory / ranks on the node)."""
    intra_host_gbps: float = 0.0
    """Bandwidth between the GPUs of a node, GB/s, for the planner's estimate (0: TorchRec's default)."""
    inter_host_gbps: float = 0.0
    """Bandwidth between nodes per GPU, GB/s, for the planner's estimate (0: TorchRec's default)."""

    def validate(self) -> None:
        _choice("sharding.type", self.type, SHARDING)
        if self.column_block < 0 or self.column_block % 4:
            raise ConfigError(f"sharding.column_block={self.column_block} must be 0 or a positive multiple of 4")
        _choice("sharding.kernel", self.kernel, KERNELS)
        if not 0 < self.cache_load_factor <= 1:
            raise ConfigError(f"sharding.cache_load_factor={self.cache_load_factor} must be in (0, 1]")
        for key in ("hbm_gb", "host_memory_gb", "intra_host_gbps", "inter_host_gbps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"sharding.{key}={getattr(self, key)} must be >= 0")


@dataclass
class EvalConfig:
    """Full-catalog evaluation: cut-offs, protocol, the retrieval query."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    """The cut-offs of HR@k and NDCG@k (and Recall@k under the user split); at most the catalog's size."""
    batch_size: int = 256
    """Users per rank per evaluation step."""
    exclude_seen: bool = True
    """Never recommend what the user has seen (the literature's protocol)."""
    query: str = "auto"
    """dam: the generated interest; gem: the best of the K interests; dam+gem: both; auto: dam unless
    the DAM is untrained (recon_weight = ssm_weight = 0)."""
    at_end: bool = True
    """Evaluate valid and test after training (final.json); benchmarks turn it off."""

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks={self.ks} must be a non-empty list of positive integers")
        _at_least("eval.batch_size", self.batch_size, 1)
        _choice("eval.query", self.query, QUERY_MODES)


@dataclass
class JobConfig:
    """The whole job: one YAML file's sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    """The job's seed: dense weights, table rows, the data plan, negatives, noise (0..2^32-1)."""

    def validate(self) -> None:
        for name in ("model", "data", "train", "sharding", "eval"):
            _all_finite(getattr(self, name), name)
            getattr(self, name).validate()
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed} must lie in 0..2^32-1")
        if self.model.num_interests > self.model.max_history:
            raise ConfigError(
                f"model.num_interests={self.model.num_interests} must be <= model.max_history="
                f"{self.model.max_history}: more interests than history positions only repeat them"
            )
        if not self.model.trains_dam and self.eval.query in ("dam", "dam+gem"):
            raise ConfigError(
                f"eval.query={self.eval.query} retrieves with the DAM, which model.recon_weight=0 and "
                f"model.ssm_weight=0 leave untrained: use eval.query=gem (or auto)"
            )
        if self.sharding.column_block and self.model.embedding_dim % self.sharding.column_block:
            raise ConfigError(
                f"sharding.column_block={self.sharding.column_block} must divide "
                f"model.embedding_dim={self.model.embedding_dim}"
            )

    def check_catalog(self, num_items: int, where: str) -> None:
        """Settings that must fit the data set's catalog (known once it is loaded)."""
        if max(self.eval.ks) > num_items:
            raise ConfigError(f"eval.ks={self.eval.ks} asks for more items than {where}'s catalog of {num_items}")

    def chunk_targets(self) -> int:
        """data.chunk_targets as resolved: 0 means max_history, at most 256."""
        return self.data.chunk_targets or min(self.model.max_history, MAX_DEFAULT_CHUNK_TARGETS)

    def query_mode(self) -> str:
        if self.eval.query != "auto":
            return self.eval.query
        return "dam" if self.model.trains_dam else "gem"


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _all_finite(section: Any, name: str) -> None:
    """NaN passes every comparison a range check makes (NaN <= 0 is False): refuse it, and inf, first."""
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{spec.name}={value} must be a finite number")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")


# --------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, raw: Any, kind: Any, source: str) -> Any:
    """Turn a YAML value or an override string into the field's type, or say why not."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
    elif typing.get_origin(kind) is list:
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, list):
            (inner,) = typing.get_args(kind)
            return [_coerce(f"{key}[{i}]", item, inner, source) for i, item in enumerate(items)]
    elif kind is str:
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            return str(raw)
    else:
        return raw
    raise ConfigError(f"{source}: {key}={raw!r} is not a valid {getattr(kind, '__name__', kind)}")


def apply_mapping(obj: Any, values: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Fill the dataclass `obj` in place from a nested mapping; unknown keys are errors."""
    types = _field_types(type(obj))
    for key, raw in values.items():
        path = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(sorted(types))
            raise ConfigError(f"{source}: unknown key {path!r} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{source}: {path} must be a section (a mapping), got {raw!r}")
            apply_mapping(current, raw, source, prefix=f"{path}.")
        else:
            setattr(obj, key, _coerce(path, raw, types[key], source))


def parse_override(text: str) -> dict[str, Any]:
    """'model.num_interests=8' -> {'model': {'num_interests': '8'}}."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    dotted, value = text.split("=", 1)
    nested: dict[str, Any] = {}
    cursor = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Defaults, then the YAML file, then each override in order; validated at the end."""
    import yaml

    values: Mapping[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"{where}: not valid YAML: {reason}") from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(values, str(path), overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(values: Mapping[str, Any], source: str, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Defaults, then `values` (a YAML file's, or a checkpoint's saved config: keys it lacks keep
    today's defaults), then each key=value override in order; validated at the end."""
    config = JobConfig()
    apply_mapping(config, values, source)
    for text in overrides:
        apply_mapping(config, parse_override(text), f"override {text!r}")
    config.validate()
    return config


# Where a job reads, writes and logs, how the table is laid out over ranks, how fast it runs:
# none of it changes what a run learns. Every other setting does.
NOT_LEARNED = {
    ("data", "path"),
    ("data", "source"),
    ("data", "raw_path"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"),
    ("train", "checkpoint_async"),
    ("train", "resume"),
    ("train", "resume_other_data"),
    ("train", "threads"),
    ("train", "pipeline"),
    ("train", "device"),
    ("eval", "batch_size"),
    ("sharding", "type"),
    ("sharding", "column_block"),
    ("sharding", "kernel"),
    ("sharding", "cache_load_factor"),
    ("sharding", "hbm_gb"),
    ("sharding", "host_memory_gb"),
    ("sharding", "intra_host_gbps"),
    ("sharding", "inter_host_gbps"),
}


def learned_settings(config: JobConfig) -> dict[str, Any]:
    """The settings that decide a run's result, flat ("model.temperature": 0.07, ...)."""
    flat = {}
    for section, values in config_to_dict(config).items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            if (section, key) not in NOT_LEARNED:
                flat[f"{section}.{key}" if key else section] = value
    flat["eval.query"] = config.query_mode()  # "auto" is whichever mode it resolves to
    if config.model.gem_weight == 0 and config.model.ssm_weight == 0:
        # Only the two softmax losses read the temperature (retrieval ranks by the logits' order, which
        # it does not change): a model trained on L_recon alone (DreamRec-like) learns the same at any.
        del flat["model.temperature"]
    return flat


def settings_changes(before: JobConfig, now: JobConfig) -> list[str]:
    """How two jobs' learned settings differ, as "key old -> new" ([] if they do not)."""
    old, new = learned_settings(before), learned_settings(now)
    return [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
