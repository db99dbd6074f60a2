"""GGUF export of an exported Llama/Mistral sub-network, for llama.cpp (``export.formats: [hf, gguf]``).

It reads what the Hugging Face export wrote (``config.json``, ``*.safetensors``,
``tokenizer.json``), so it needs nothing of the super-network: any stage, or a
user, can turn an export directory into ``model.gguf``.

* **Architecture.** A sub-network whose blocks all have one shape is written as
  llama.cpp's ``llama``. One whose blocks differ (per-layer MLP widths or head
  counts: ``layer_intermediate_sizes`` / ``layer_num_heads`` in its config) is
  written as ``deci``, the architecture llama.cpp reads per-layer arrays for
  (``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv``):
  plain ``llama`` accepts the arrays but sizes every block like the first.
  Skipped blocks are already gone from the export (its layers are renumbered),
  so no block is a no-op.
* **Families.** Llama and Mistral (SmolLM2 is a Llama). Qwen2 and Qwen3 are
  refused: ``deci`` has no per-layer query/key bias of a pruned width (Qwen2) and
  no query/key norms (Qwen3), so their GGUF would load wrong or not at all.
  Rope scaling (Llama 3.1's ``rope_scaling``) is refused too: it needs a
  ``rope_freqs`` tensor this writer does not make.
* **Weights.** Matrices in F16 (``dtype: f32`` keeps them exact), norms in F32.
  Query and key rows are permuted from Hugging Face's rotate-half layout to
  llama.cpp's interleaved pairs, per layer with that layer's head counts.
* **Tokenizer.** Tokens, types and merges from ``tokenizer.json`` (a byte-level
  BPE); special ids, ``add_bos`` and the chat template through gguf's
  ``SpecialVocab``. The pre-tokenizer name (how llama.cpp splits text before BPE)
  cannot be read from a Hugging Face tokenizer: give it (``pre``; SmolLM2's is
  ``smollm``, which the model source records), else ``default`` is written with a
  warning that llama.cpp may split some text differently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral")
DTYPES = ("f16", "f32")
GGUF_FILE = "model.gguf"
EXPORT_FORMATS = ("hf", "gguf")


class GGUFExportError(ValueError):
    """An export that llama.cpp could not load as written: the message names why and what to do."""


def check_formats(formats, key: str) -> None:
    """An export's formats: hf always (the canonical model), gguf optionally beside it."""
    if not isinstance(formats, list) or "hf" not in formats or set(formats) - set(EXPORT_FORMATS):
        from lonas_ray.config_io import ConfigError

        raise ConfigError(f"{key} must list hf and optionally gguf ({', '.join(EXPORT_FORMATS)}), got {formats!r}")


def gguf_options(source, dtype: str = "f16") -> dict:
    """``save_subnetwork``'s gguf options for models of ``source``: the pre-tokenizer name where it is known."""
    from lonas_ray.model_source import gguf_tokenizer_pre

    return {"pre": gguf_tokenizer_pre(source), "dtype": dtype}


def check_gguf_source(source, key: str) -> None:
    """Config check of a GGUF export: the model source's family must be one the writer covers (a local model
    whose config cannot be read yet is checked again when its export is written)."""
    from lonas_ray.config_io import ConfigError
    from lonas_ray.model_source import source_family

    if source.kind == "tiny":
        raise ConfigError(f"{key}: gguf needs the model's Hugging Face tokenizer inside the GGUF, and tiny random "
                          "models have none (they use the byte tokenizer): leave gguf out for kind tiny")
    family = source_family(source)
    try:
        if family is not None:
            check_gguf_family(family)
    except GGUFExportError as e:
        raise ConfigError(f"{key}: {e}") from None


def family_of(config: dict) -> str:
    return str(config.get("model_type", "")).removeprefix("lonas_")


def check_gguf_family(family: str) -> None:
    """Refuse, before anything is written, a family the GGUF writer does not cover (the module docstring: why)."""
    if family not in FAMILIES:
        raise GGUFExportError(
            f"GGUF export covers Llama and Mistral sub-networks; this model is '{family}' (llama.cpp's per-layer "
            "architecture has no pruned Qwen2 biases or Qwen3 query/key norms): leave 'gguf' out of export.formats, "
            "or serve the Hugging Face export")


def layer_shapes(config: dict) -> tuple[list[int], list[int], list[int]]:
    """(MLP widths, query heads, key/value heads) of every kept block, from a stock or ``lonas_`` config."""
    n = config["num_hidden_layers"]
    widths = list(config.get("layer_intermediate_sizes") or [config["intermediate_size"]] * n)
    heads = list(config.get("layer_num_heads") or [config["num_attention_heads"]] * n)
    group = config["num_attention_heads"] // (config.get("num_key_value_heads") or config["num_attention_heads"])
    if config.get("layer_num_heads"):
        kv = [h // group for h in heads]  # lonas_ exports cut heads in whole GQA groups
    else:
        kv = [config.get("num_key_value_heads") or config["num_attention_heads"]] * n
    if not len(widths) == len(heads) == n:
        raise GGUFExportError(f"config.json lists {len(widths)} MLP widths and {len(heads)} head counts for {n} "
                              "layers: the export is damaged; export it again")
    return widths, heads, kv


def interleave_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a query/key projection from rotate-half order (each head's first half, then its second half) to
    llama.cpp's interleaved pairs (0, d/2, 1, d/2 + 1, ...), head by head."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_bpe_tokenizer(model_dir: Path) -> dict:
    """``tokenizer.json`` of an export, checked to be a byte-level BPE (what llama.cpp's ``gpt2`` vocabulary is)."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise GGUFExportError(f"{model_dir} has no tokenizer.json: llama.cpp needs the tokenizer inside the GGUF; "
                              "export a model that has a Hugging Face tokenizer (tiny test models have none)")
    tok = json.loads(path.read_text())
    kind = tok.get("model", {}).get("type")
    if kind != "BPE":
        raise GGUFExportError(f"{path}: a {kind} tokenizer; the GGUF writer covers byte-level BPE tokenizers "
                              "(Llama 3, SmolLM2): serve the Hugging Face export")
    return tok


def _tokenizer(writer, model_dir: Path, tok: dict, vocab_size: int, pre: str | None) -> None:
    import gguf

    model = tok["model"]
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    by_id = {i: t for t, i in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            special = added.get(i, {}).get("special", False)
            types.append(gguf.TokenType.CONTROL if special else
                         gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
        else:  # the embedding is larger than the vocabulary: padding rows llama.cpp must still name
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    if pre is None:
        log.warning("no pre-tokenizer name given: writing 'default'; llama.cpp may split some text differently "
                    "from the Hugging Face tokenizer")
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def write_gguf(model_dir: str | Path, out: str | Path, *, pre: str | None = None, dtype: str = "f16") -> Path:
    """Write ``model_dir`` (a Hugging Face export) as one GGUF file at ``out``; returns ``out``."""
    import gguf
    from safetensors import safe_open

    model_dir, out = Path(model_dir), Path(out)
    config = check_gguf_export(model_dir, dtype)
    tok = read_bpe_tokenizer(model_dir)
    widths, heads, kv = layer_shapes(config)
    n = config["num_hidden_layers"]
    uniform = len(set(widths)) == 1 and len(set(heads)) == 1
    arch = gguf.MODEL_ARCH.LLAMA if uniform else gguf.MODEL_ARCH.DECI
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    partial = out.with_name(out.name + ".partial")  # renamed into place when whole: no half file looks done
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(config.get("_name_or_path") or model_dir.name)
    writer.add_block_count(n)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(widths[0] if uniform else widths)
    writer.add_head_count(heads[0] if uniform else heads)
    writer.add_head_count_kv(kv[0] if uniform else kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    _tokenizer(writer, model_dir, tok, config["vocab_size"], pre)

    names = gguf.get_tensor_name_map(arch, n)
    tied = config.get("tie_word_embeddings", False)
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if tied and key == "lm_head.weight":
                    continue  # llama.cpp ties output to token_embd when output.weight is absent
                tensor = f.get_tensor(key).float().numpy()
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise GGUFExportError(f"{file.name}: tensor {key} has no llama.cpp name for {arch.name.lower()}")
                if key.endswith(("q_proj.weight", "k_proj.weight")):
                    layer = int(key.split(".")[2])
                    tensor = interleave_rope_rows(tensor, heads[layer] if "q_proj" in key else kv[layer])
                keep_f32 = dtype == "f32" or tensor.ndim == 1
                writer.add_tensor(name, tensor.astype(np.float32 if keep_f32 else np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


def check_gguf_export(model_dir: Path, dtype: str = "f16") -> dict:
    """The export's config.json, once every reason the GGUF writer would refuse it has been ruled out."""
    if dtype not in DTYPES:
        raise GGUFExportError(f"GGUF dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    path = model_dir / "config.json"
    if not path.exists():
        raise GGUFExportError(f"{model_dir} holds no config.json: give the directory of a lonas-ray export")
    config = json.loads(path.read_text())
    check_gguf_family(family_of(config))
    if config.get("quantization_config"):
        raise GGUFExportError(f"{model_dir} is a quantized (compressed-tensors) export; the GGUF writer takes "
                              "dense or sparse merges: leave 'gguf' out of export.formats for INT4 bases")
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise GGUFExportError(f"{model_dir}: rope scaling {scaling.get('rope_type')} needs a rope_freqs tensor "
                              "this writer does not make: serve the Hugging Face export")
    return config
