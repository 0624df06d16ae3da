"""Benchmarks of spo-agents: latency models, the throughput simulator and their reports.

Nothing here imports torch or the rollout engine; the benchmarks that need them import them
inside their command functions.
"""
