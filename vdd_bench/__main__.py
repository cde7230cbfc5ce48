"""`python -m vdd_bench` is the `vdd` command."""

from vdd_bench.cli import main

main()
