"""The research area: experiment grids and their reports and plots, run records,
significance tests, and the replicated baseline the benchmarks compare against.

It imports the product (dimerec_dist) and is never imported by it (tests/test_structure.py):
the product works from an installed wheel, this runs from a source checkout, behind
tools/experiments.py and tools/bench_train.py. Its committed run records are in
research/results/, read by the report that writes docs/RESULTS.md.
"""
