"""``python -m benchmark.evaluate --checkpoint PATH --model NAME --dataset NAME``: see benchmark.evaluate_external."""
import sys

from benchmark.evaluate_external import main

sys.exit(main())
