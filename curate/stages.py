"""Annotate and enrich stages, for recipes built in Python: ``curate.stages.ImageSignals(batch_size=64)``.

Each is the class a recipe's ``- stage: NAME`` entry builds (:data:`curate.recipe.STAGES`). Any stage also
runs on its own: ``stage(table)`` appends its ``writes`` to a ``pyarrow.Table`` holding its ``reads``.
"""

from curate.enrich.recaption import Recaption
from curate.signals.caption import CaptionSignals
from curate.signals.classifier import ImageClassifier
from curate.signals.clip import ClipScorer
from curate.signals.concepts import ConceptMatch
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals
from curate.signals.language import LanguageID
from curate.stage import Stage, StageConfig

__all__ = [
    "CaptionSignals",
    "ClipScorer",
    "ConceptMatch",
    "Hashes",
    "ImageClassifier",
    "ImageSignals",
    "LanguageID",
    "Recaption",
    "Stage",
    "StageConfig",
]
