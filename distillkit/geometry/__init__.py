"""Multi-view geometry for pairwise 3-D teachers (DUSt3R-style): pair graphs, fast global alignment,
a faithful reference of the official optimiser, synthetic scenes and benchmarks.

Modules: ``pairs`` (scene graphs), ``predictions`` (input container), ``align`` (the aligner),
``problem`` / ``init`` / ``solver`` / ``dense`` / ``refine`` (its stages), ``system`` (the reduced system,
dense or sparse), ``incremental`` (start from a previous alignment), ``checks`` (input errors),
``procrustes`` and ``cameras`` (helpers),
``reference_ga`` (official-style Adam loop), ``synthetic`` (scene generator), ``metrics``, ``bench``.
"""

from distillkit.geometry.align import AlignConfig, AlignResult, align
from distillkit.geometry.pairs import make_pairs, pairs_by_overlap, pairs_by_retrieval, pairs_from_scores, symmetrized, view_overlap
from distillkit.geometry.predictions import PairPredictions

__all__ = ["AlignConfig", "AlignResult", "PairPredictions", "align", "make_pairs", "pairs_by_overlap",
           "pairs_by_retrieval", "pairs_from_scores", "symmetrized", "view_overlap"]
