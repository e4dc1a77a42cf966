"""Policy ``head``: score ``RUN/embeddings`` with a learned head (:mod:`curate.heads`) and reject by the score.

The recipe names the reason (``reason: watermark``, ``nsfw``, ``low_aesthetic``): a recipe-defined code,
documented by the recipe itself (see :func:`curate.reasons.declare`). Every row with an embedding gets its
score in the decisions files as ``score_{reason}``, so ``curate stats RUN heads`` and the report show the
distribution and the cut. The head is read on the driver when the recipe is checked and travels with the
policy, so a cluster's decide task needs no access to the head's path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from curate import reasons, storage
from curate.decide.base import DecideDB, Policy, PolicyConfig, embedding_matrix
from curate.heads import Head, HeadError, load_head, same_model

if TYPE_CHECKING:
    from curate.recipe import Recipe

_REASON = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def new_reason_code(reason: str) -> str:
    """A recipe-named reason: a new lowercase code, never a built-in one."""
    if not _REASON.match(reason) or reason in reasons.REASONS:
        raise ValueError(f"{reason!r} must be a new lowercase code (letters, digits, _), not a built-in one")
    return reason


class HeadConfig(PolicyConfig):
    path: str = Field(..., description="A head folder ('curate train head') or a LAION .pth head file.")
    reason: str = Field(..., description="The reason code rejected rows get (e.g. watermark, nsfw, low_aesthetic).")
    min_score: float | None = Field(None, description="Reject rows scoring below this (e.g. aesthetic < 5).")
    max_score: float | None = Field(None, description="Reject rows scoring above this (e.g. P(watermark) > 0.5).")
    keep_top: float | None = Field(
        None, gt=0.0, le=1.0, description="Keep this fraction of the rows still kept, by score, highest first."
    )
    clip_model: str | None = Field(
        None, description="The CLIP model the head expects, when its file does not say (LAION's .pth heads)."
    )

    _new_code = field_validator("reason")(new_reason_code)

    @model_validator(mode="after")
    def _one_cut(self) -> HeadConfig:
        if self.min_score is None and self.max_score is None and self.keep_top is None:
            raise ValueError("give min_score, max_score or keep_top: the cut the score is compared with")
        return self


class HeadPolicy(Policy):
    """Reject by a learned head's score on stored embeddings (aesthetic, NSFW, watermark, your own)."""

    name = "head"
    Config = HeadConfig

    @property
    def reads(self) -> tuple[str, ...]:  # type: ignore[override]
        """The embedding column the head scores (read from RUN/embeddings)."""
        return ("clip_image_emb",)

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.config.reason,)

    def head(self) -> Head:
        """The loaded head (read once, then carried with the policy)."""
        head = self.__dict__.get("_head")
        if head is None:
            head = self.__dict__["_head"] = load_head(self.config.path)
        return head

    def check(self, recipe: Recipe) -> None:
        """Refuse a head made for another CLIP model than the recipe's clip stage."""
        spec = self.head().spec
        expected = self.config.clip_model or spec.clip_model
        clip = next((s for s in recipe.annotate if s.name == "clip"), None)
        if clip is not None and not same_model(expected, clip.config.model):
            raise HeadError(
                f"head {self.config.path} expects embeddings of CLIP model {expected!r}, the run's clip stage uses "
                f"{clip.config.model!r}: train a head on this run ('curate train head --run RUN --labels ...')"
            )

    def apply(self, db: DecideDB) -> None:
        code, c = self.config.reason, self.config
        reasons.declare(code, f"A learned head ({c.path}) scored the image's embedding beyond the recipe's cut.")
        column = f"score_{code}"
        scored = self._score(db)
        db.con.execute(f'ALTER TABLE verdict ADD COLUMN IF NOT EXISTS "{column}" FLOAT')
        db.con.execute(f'UPDATE verdict SET "{column}" = h.score FROM "{scored}" h WHERE verdict.key = h.key')
        cuts = [f"score < {float(c.min_score)}"] if c.min_score is not None else []
        cuts += [f"score > {float(c.max_score)}"] if c.max_score is not None else []
        if cuts:
            db.reject_query(
                f'SELECT key, NULL::VARCHAR AS dup_of FROM "{scored}" WHERE {" OR ".join(cuts)}', code, self.name
            )
        if c.keep_top is not None:
            (n,) = db.con.execute("SELECT count(*) FROM kept").fetchone()
            below = f"""SELECT key, NULL::VARCHAR AS dup_of FROM (
                            SELECT s.key, row_number() OVER (ORDER BY h.score DESC NULLS LAST, s.key) AS place
                            FROM kept s LEFT JOIN "{scored}" h USING (key))
                        WHERE place > $keep"""
            db.reject_query(below, code, self.name, {"keep": round(c.keep_top * n)})
        db.info.setdefault(self.name, {})[code] = {"path": c.path, "sizes": self.head().spec.sizes}

    def _score(self, db: DecideDB) -> str:
        """Score every stored embedding, one embeddings file at a time, into a DuckDB table; its name."""
        table = f"_head_{self.config.reason}"
        db.con.execute(f'CREATE OR REPLACE TABLE "{table}" (key VARCHAR, score FLOAT)')
        files = storage.files(str(db.embeddings_dir)) if db.embeddings_dir is not None else []
        if not files:
            raise HeadError("the head policy needs RUN/embeddings: add the clip stage to annotate")
        head = self.head()
        for path in files:
            part = _scored_file(path, head)
            db.con.register("_head_part", part)
            db.con.execute(f'INSERT INTO "{table}" SELECT key, score FROM _head_part')
            db.con.unregister("_head_part")
        return table


def _scored_file(path: str, head: Head) -> pa.Table:
    """(key, score) of one embeddings file's rows that have an embedding."""
    fsys, local = storage.arrow_fs(path)
    column = head.spec.embedding
    table = pq.read_table(local, filesystem=fsys, columns=["key", column])
    table = table.filter(pc.is_valid(table.column(column)))
    emb = embedding_matrix(table.column(column), head.spec.sizes[0])
    return pa.table({"key": table.column("key"), "score": pa.array(head.score(emb), pa.float32())})


class ScoreCutConfig(PolicyConfig):
    column: str = Field(..., description="A numeric samples column, e.g. a classifier stage's {name}_score.")
    reason: str = Field(..., description="The reason code rejected rows get (e.g. watermark).")
    min_score: float | None = Field(None, description="Reject rows below this.")
    max_score: float | None = Field(None, description="Reject rows above this.")

    _new_code = field_validator("reason")(new_reason_code)

    @model_validator(mode="after")
    def _one_cut(self) -> ScoreCutConfig:
        if self.min_score is None and self.max_score is None:
            raise ValueError("give min_score or max_score: the cut the column is compared with")
        return self


class ScoreCut(Policy):
    """Reject by a score column annotate wrote (the ``classifier`` stage's ``{name}_score``), with a named reason.

    Rows without a score (undecodable images, already rejected by availability) are kept by this policy.
    """

    name = "score"
    Config = ScoreCutConfig

    @property
    def reads(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.config.column,)

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.config.reason,)

    def apply(self, db: DecideDB) -> None:
        c = self.config
        reasons.declare(c.reason, f"samples.{c.column} is beyond the recipe's cut.")
        cuts = [f's."{c.column}" < {float(c.min_score)}'] if c.min_score is not None else []
        cuts += [f's."{c.column}" > {float(c.max_score)}'] if c.max_score is not None else []
        db.reject_where(" OR ".join(cuts), c.reason, self.name)
