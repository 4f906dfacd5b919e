"""`npcai bench`: latency, throughput and quality benchmarks, one report."""

from npcai.bench.runner import ITEMS, run_bench

__all__ = ["ITEMS", "run_bench"]
