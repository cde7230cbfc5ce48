"""Training cost of each parameter-sharing method relative to fine-tuning (`vdd_bench.bench.method_costs`).

python bench/method_costs.py --width 0.5 --batch 16 --steps 3 --warmup 1 --threads 1 [--json]
"""

from vdd_bench.bench.method_costs import main

if __name__ == "__main__":
    main()
