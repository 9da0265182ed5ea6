"""tailrobust: adversarial robustness under long-tailed class distributions, benchmarked class by class."""

__version__ = "0.2.0"  # result-affecting: part of every cell key (benchmark.cell.HARNESS_VERSION); = pyproject's
