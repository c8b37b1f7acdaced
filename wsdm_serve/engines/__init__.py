"""Scoring engines: token-id lists in, A/B logits out. Heavy imports happen inside each engine."""

from .base import ScoringEngine, length_sorted_batches

__all__ = ["ScoringEngine", "length_sorted_batches"]
