"""The pass rules px_hf knows, in the order they are tried. Adding a kind of module is adding a class here."""

from __future__ import annotations

from .activation import ActivationRule
from .attention import InlineAttentionRule
from .base import Rule
from .convolution import WeightStandardizedConvRule
from .gate import GateRule, ModulatorRule
from .linear_attention import AdditiveAttentionRule, SeparableAttentionRule
from .normalization import NormRule
from .pooling import MaxPoolRule, PoolMinusInputRule

# Each LinearizedPasses makes its own instances: rules keep per-module state (a normalization's statistics, an
# activation's slope at zero) for one set of passes.
RULES: tuple[type[Rule], ...] = (ActivationRule, NormRule, MaxPoolRule, PoolMinusInputRule, GateRule, ModulatorRule,
                                 InlineAttentionRule, SeparableAttentionRule, AdditiveAttentionRule,
                                 WeightStandardizedConvRule)
