"""Benchmarks: figures printed and recorded in BENCHMARKS.md, never asserted in tests."""
