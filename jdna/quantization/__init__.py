"""Numerical library for weight quantization (RTN, GPTQ), low-rank factorization and bit accounting."""

from jdna.quantization.accounting import (
    DENSE_BITS,
    aggregate_bits_per_weight,
    compression_ratio,
    lowrank_bits_per_weight,
    quantized_bits_per_weight,
)
from jdna.quantization.gptq import gptq_quantize
from jdna.quantization.lowrank import LowRankFactors, low_rank, rank_for_energy, rank_for_ratio
from jdna.quantization.packing import pack_codes, packed_nbytes, unpack_codes
from jdna.quantization.rtn import QuantizedMatrix, quantize_rtn
from jdna.quantization.spec import GRANULARITIES, QuantSpec

__all__ = [
    "DENSE_BITS",
    "GRANULARITIES",
    "LowRankFactors",
    "QuantSpec",
    "QuantizedMatrix",
    "aggregate_bits_per_weight",
    "compression_ratio",
    "gptq_quantize",
    "low_rank",
    "lowrank_bits_per_weight",
    "pack_codes",
    "packed_nbytes",
    "quantize_rtn",
    "quantized_bits_per_weight",
    "rank_for_energy",
    "rank_for_ratio",
    "unpack_codes",
]
