"""fbmem benchmarks: one module per stage (bench_*.py) and one entry point (`python -m benchmarks`)."""
