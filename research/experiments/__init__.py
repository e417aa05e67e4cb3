"""The experiment harness behind tools/experiments.py (issue #7's tables): what a grid file asks
(grid.py), the tables and verdicts made from the run records (report.py), and the plots
(plots.py). The runner itself, which trains and records, is tools/experiments.py.

The harness works on a source checkout: a grid names job configs and a report file relative
to the repository root (REPO), and its runs default to REPO/runs/experiments.
"""
