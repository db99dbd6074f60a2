"""Config sections of a compressed base: ``sparsity`` (Wanda / magnitude) and ``quantization`` (INT4 RTN)."""

from __future__ import annotations

from dataclasses import dataclass

from lonas_ray.config_io import ConfigError, help_field

SPARSITY_METHODS = ("none", "wanda", "magnitude")


@dataclass
class CalibrationSpec:
    """The calibration batch Wanda's activation norms come from (default: the importance step's)."""

    examples: int | None = help_field(None, help="calibration examples (default: importance.examples)")
    max_length: int | None = help_field(None, help="tokens per example (default: importance.max_length)")

    def __post_init__(self):
        if self.examples is not None and self.examples < 1:
            raise ConfigError(f"sparsity.calibration.examples must be >= 1, got {self.examples}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"sparsity.calibration.max_length must be >= 2, got {self.max_length}")


@dataclass
class SparsitySpec:
    """Prune the frozen base before adapter training (Shears; SQFT's sparse base)."""

    method: str = help_field("none", help=f"how weights are scored: {', '.join(SPARSITY_METHODS)} ('none': dense)")
    level: float | None = help_field(
        None, help="fraction of each row's weights set to zero, in [0, 1); for N:M patterns 1 - N/M (may be left out)")
    pattern: str = help_field(
        "unstructured", help="'unstructured' (per row) or 'N:M' (N kept in every M inputs, e.g. 2:4)")
    mask_adapter: bool = help_field(
        True, help="SparsePEFT: mask the adapter's delta by the base's non-zero mask, so merges keep the sparsity")
    calibration: CalibrationSpec = help_field(default_factory=CalibrationSpec, help="Wanda's calibration batch")

    def __post_init__(self):
        if self.method not in SPARSITY_METHODS:
            raise ConfigError(f"sparsity.method '{self.method}' is unknown; use one of {', '.join(SPARSITY_METHODS)}")
        nm = self.n_m  # validates the pattern
        if not self.enabled:
            return
        if nm is None:
            if self.level is None:
                raise ConfigError("sparsity.level is required for the unstructured pattern, e.g. level: 0.5")
        elif self.level is not None and abs(self.level - (1 - nm[0] / nm[1])) > 1e-9:
            raise ConfigError(
                f"sparsity.level {self.level} contradicts pattern {self.pattern} (which zeroes {1 - nm[0] / nm[1]:g}); "
                "leave level out for N:M patterns")
        if self.level is not None and not 0.0 <= self.level < 1.0:
            raise ConfigError(f"sparsity.level must be in [0, 1), got {self.level}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern, None for unstructured."""
        if self.pattern == "unstructured":
            return None
        parts = self.pattern.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            n = m = 0
        if len(parts) != 2 or not 0 < n < m:
            raise ConfigError(
                f"sparsity.pattern '{self.pattern}' is unknown; use 'unstructured' or 'N:M' with 0 < N < M, e.g. '2:4'")
        return n, m

    @property
    def zero_fraction(self) -> float:
        nm = self.n_m
        return (1 - nm[0] / nm[1]) if nm else float(self.level or 0.0)


@dataclass
class QuantizationSpec:
    """Symmetric group-wise integer weight-only quantization of the (sparse) base (SQFT)."""

    enabled: bool = help_field(False, help="quantize every block linear of the base")
    bits: int = help_field(4, help="weight bits (the INT4 export needs 4)")
    group_size: int = help_field(32, help="input channels that share one scale; must divide every input width")
    method: str = help_field("rtn", help="'rtn': round to nearest with an absmax scale per group")
    qa: bool = help_field(
        False, help="QA-SparsePEFT: train on the fake-quantized merged weight, so the INT4 merge equals training")

    def __post_init__(self):
        if self.qa and not self.enabled:
            raise ConfigError("quantization.qa needs a quantized base: set quantization.enabled: true (or qa: false)")
        if self.method != "rtn":
            raise ConfigError(f"quantization.method '{self.method}' is unknown; use 'rtn' (GPTQ is not built in)")
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"quantization.bits must be between 2 and 8, got {self.bits}")
        if self.group_size < 1:
            raise ConfigError(f"quantization.group_size must be >= 1, got {self.group_size}")
