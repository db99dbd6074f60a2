"""The dimensions of a decoder-only model that the search space is sized against."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lonas_ray.families import family_of


@dataclass(frozen=True)
class ModelShape:
    """Sizes read once from a Hugging Face config; everything downstream uses these, not the config."""

    family: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def heads_per_group(self) -> int:
        """Query heads that share one key/value head (1 for plain multi-head attention)."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_config(cls, config) -> ModelShape:
        family = family_of(getattr(config, "model_type", ""))
        num_heads = config.num_attention_heads
        num_kv = getattr(config, "num_key_value_heads", None) or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        if num_heads % num_kv:
            raise ValueError(f"num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv})")
        return cls(
            family=family.name,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=num_heads,
            num_kv_heads=num_kv,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def to_dict(self) -> dict:
        return asdict(self)
