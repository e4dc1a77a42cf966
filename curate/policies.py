"""Decide policies, for recipes built in Python: ``curate.policies.ImageSize(min_side=64)``.

Each is the class a recipe's ``- policy: NAME`` entry builds (:data:`curate.recipe.POLICIES`).
"""

from curate.decide.balance import Balance
from curate.decide.base import Policy, PolicyConfig
from curate.decide.blocklist import Blocklist
from curate.decide.dedup import Decontaminate, ExactDedup, NearDedup, SemanticDedup
from curate.decide.head import HeadPolicy, ScoreCut
from curate.decide.thresholds import CaptionBoilerplate, CaptionLength, ClipScoreFilter, ImageSize, Language
from curate.decide.urls import UrlFilter

__all__ = [
    "Balance",
    "Blocklist",
    "CaptionBoilerplate",
    "CaptionLength",
    "ClipScoreFilter",
    "Decontaminate",
    "ExactDedup",
    "HeadPolicy",
    "ImageSize",
    "Language",
    "NearDedup",
    "Policy",
    "PolicyConfig",
    "ScoreCut",
    "SemanticDedup",
    "UrlFilter",
]
