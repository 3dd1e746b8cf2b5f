"""Analyses over result records: difficulty, the Junk DNA hypothesis statistics, and the study's figures."""

from __future__ import annotations

from jdna.analysis.baselines import BaselineTable
from jdna.analysis.difficulty import AXES, Analysis, Axis, analyse, parse_axis
from jdna.analysis.records import compression_of, load_records
from jdna.analysis.stats import RULE, holm, kendall_tau_b, spearman_rho, trend

__all__ = [
    "AXES",
    "RULE",
    "Analysis",
    "Axis",
    "BaselineTable",
    "analyse",
    "compression_of",
    "holm",
    "kendall_tau_b",
    "load_records",
    "parse_axis",
    "spearman_rho",
    "trend",
]
