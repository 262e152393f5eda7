"""Benchmarks behind `distillkit bench`: ``loader`` (training reader vs a raw memory-mapped copy), ``cache`` (cache
run vs the bare teacher forward), ``align`` (global alignment vs the official-style optimiser). Each measures both
sides in the same run and reports ratios."""
