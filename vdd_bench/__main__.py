"""`python -m vdd_bench` is the `vdd` command."""

from vdd_bench.cli import main

if __name__ == "__main__":  # worker processes (`--jobs`) import the main module again: run nothing then
    main()
