"""``curate train head``: a small head on a run's stored embeddings, from a file of labelled keys.

Labels are a Parquet or CSV file of ``key,label``: 0/1 (or true/false) trains logistic regression with a
sigmoid output (a probability: watermark, NSFW); any other numbers train a regression (aesthetic ratings).
``--hidden 64`` adds a ReLU hidden layer (a 1-layer MLP); two values give two layers. Full-batch AdamW on
L2-normalised embeddings (as LAION's heads), a seeded held-out split (stratified for binary labels)
reported as ROC AUC or Pearson r, then the final head is refit on every labelled key and written as a head
folder (:mod:`curate.heads`) that records the run's CLIP model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate import storage
from curate.decide.base import embedding_matrix
from curate.heads import Head, HeadError, HeadSpec, build_module, save_head
from curate.manifest import Manifest


def train_head(
    run_dir: str,
    labels: str | Path,
    output: str | Path,
    hidden: list[int] | None = None,
    embedding: str = "clip_image_emb",
    holdout: float = 0.2,
    epochs: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Train, measure on a held-out split, refit on all labels and write the head folder; returns the summary."""
    keys, y = read_labels(labels)
    x, found = labelled_embeddings(run_dir, keys, embedding)
    y = y[found]
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    train, test = split(y, holdout, seed, binary)
    model = fit(x[train], y[train], hidden or [], binary, epochs, seed)
    metric = evaluate(model, x[test], y[test], binary)
    final = fit(x, y, hidden or [], binary, epochs, seed)
    metrics = {
        ("auc" if binary else "pearson_r"): metric,
        "labelled": len(keys),
        "with_embedding": int(found.sum()),
        "train": len(train),
        "held_out": len(test),
    }
    model_id, pretrained = run_clip_model(run_dir)
    spec = HeadSpec(
        embedding=embedding,
        clip_model=model_id,
        clip_pretrained=pretrained,
        sizes=[x.shape[1], *(hidden or []), 1],
        output="sigmoid" if binary else "identity",
        metrics=metrics,
    )
    save_head(output, Head(spec, final))
    return {**metrics, "head": str(output), "clip_model": model_id}


def read_labels(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Keys (strings) and float labels of a ``key,label`` Parquet or CSV file."""
    path = str(path)
    as_text = pacsv.ConvertOptions(column_types={"key": pa.string()})  # keys like 000012 stay text
    table = pq.read_table(path) if path.endswith(".parquet") else pacsv.read_csv(path, convert_options=as_text)
    if not {"key", "label"} <= set(table.column_names):
        raise HeadError(f"{path}: labels need columns 'key' and 'label', found {table.column_names}")
    label = table.column("label")
    if pa.types.is_boolean(label.type):
        label = label.cast(pa.int8())
    if label.null_count:
        raise HeadError(f"{path}: {label.null_count} labels are empty; give every key a label or leave it out")
    keys = [str(k) for k in table.column("key").to_pylist()]
    return keys, np.asarray(label.to_numpy(zero_copy_only=False), dtype=np.float32)


def labelled_embeddings(run_dir: str, keys: list[str], column: str) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of ``keys`` (in their order) and a mask of the keys that have one."""
    files = storage.files(storage.join(run_dir, "embeddings"))
    if not files:
        raise HeadError(f"{run_dir}: no RUN/embeddings. Run the clip stage (annotate) before training a head.")
    con = storage.duckdb_for(run_dir)
    con.register("_labels", pa.table({"key": keys, "_i": np.arange(len(keys))}))
    rows = con.sql(
        f'SELECT l._i, e."{column}" FROM read_parquet($files) e JOIN _labels l USING (key) WHERE e."{column}" IS NOT NULL',
        params={"files": files},
    ).to_arrow_table()
    if len(rows) < 4:
        raise HeadError(f"{run_dir}: only {len(rows)} of {len(keys)} labelled keys have a {column}; label more keys")
    order = np.argsort(rows.column("_i").to_numpy())
    lists = rows.column(column).combine_chunks().take(pa.array(order))
    x = embedding_matrix(lists).astype(np.float32)
    found = np.zeros(len(keys), dtype=bool)
    found[rows.column("_i").to_numpy()] = True
    return x, found


def split(y: np.ndarray, holdout: float, seed: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/held-out row indices; each class split alike when labels are binary."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == v) for v in (0.0, 1.0)] if binary else [np.arange(len(y))]
    test = np.concatenate([rng.permutation(g)[: max(1, round(holdout * len(g)))] for g in groups if len(g)])
    return np.setdiff1d(np.arange(len(y)), test), np.sort(test)


def fit(x: np.ndarray, y: np.ndarray, hidden: list[int], binary: bool, epochs: int, seed: int) -> Any:
    """Full-batch AdamW on L2-normalised ``x``; BCE with logits for binary labels, else MSE."""
    import torch

    torch.manual_seed(seed)
    spec = HeadSpec(sizes=[x.shape[1], *hidden, 1], output="sigmoid" if binary else "identity")
    module = build_module(spec)
    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    yt = torch.from_numpy(y)
    loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.MSELoss()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(module(xt)[:, 0], yt)
        loss.backward()
        opt.step()
    return module.eval()


def evaluate(module: Any, x: np.ndarray, y: np.ndarray, binary: bool) -> float:
    """Held-out ROC AUC (binary labels) or Pearson r (numeric), rounded to 4 places."""
    from sklearn.metrics import roc_auc_score

    spec = HeadSpec(sizes=[x.shape[1], 1], output="sigmoid" if binary else "identity")
    scores = Head(spec, module).score(x) if x.shape[1] else np.zeros(len(y))
    if binary:
        return round(float(roc_auc_score(y, scores)), 4) if len(set(y.tolist())) == 2 else float("nan")
    return round(float(np.corrcoef(scores, y)[0, 1]), 4)


def run_clip_model(run_dir: str) -> tuple[str | None, str | None]:
    """The (model, pretrained) of the run's clip stage, from its manifest."""
    recipe = Manifest(run_dir).data.get("recipe", {})
    clip = next((s for s in recipe.get("annotate", []) if s.get("stage") == "clip"), {})
    return clip.get("model"), clip.get("pretrained")
