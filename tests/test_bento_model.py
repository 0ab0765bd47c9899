"""The Bento model's layout (training/core/bento_model.py): one place names the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.core import bento_model


def test_layout_names_every_file_under_the_root(tmp_path: Path) -> None:
    files = bento_model.Layout.of(tmp_path)
    assert files.pipeline == tmp_path / bento_model.PIPELINE
    assert files.compiled == tmp_path / bento_model.COMPILED
    names = {p.name for p in vars(files).values()}
    assert names == {
        bento_model.PIPELINE, bento_model.INFO, bento_model.WARMUP, bento_model.COMPILED,
        bento_model.DRIFT_REFERENCE,
    }  # fmt: skip


def test_a_model_the_store_lacks_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no nothing_here model"):
        bento_model.find("nothing_here")
    with pytest.raises(LookupError, match="MLflow version 7 of nothing_here"):
        bento_model.find("nothing_here", "7")
