"""The labels reader on real sources: a Parquet directory and a SQL database (SQLite file through SQLAlchemy),
and the one-line errors for a source without the key or label column."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from ct_pipeline.adapters.labels import LabelsSourceReader
from ct_pipeline.domain.monitoring import LabelsSource
from ct_pipeline.errors import DataError

START, END = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
LABELS = pd.DataFrame(
    {
        "request_id": ["a", "a", "b", "c"],
        "row": [0, 1, 0, 0],
        "is_fraud": [1, 0, 0, 1],
        "labeled_at": pd.to_datetime(
            ["2026-03-01T05:00Z", "2026-03-01T06:00Z", "2026-03-01T23:00Z", "2026-03-02T01:00Z"], utc=True
        ),
    }
)


def test_parquet_labels_are_read_and_filtered_by_time(tmp_path):
    (tmp_path / "labels" / "m").mkdir(parents=True)
    LABELS.to_parquet(tmp_path / "labels" / "m" / "part-0.parquet", index=False)
    source = LabelsSource(kind="parquet", path="labels/m", label="is_fraud", time_column="labeled_at")
    frame = LabelsSourceReader(tmp_path).read(source, START, END)
    assert sorted(frame["request_id"]) == ["a", "a", "b"]  # c was labelled after END
    assert set(frame.columns) == {"request_id", "row", "is_fraud", "labeled_at"}


def test_no_labels_yet_is_an_empty_frame_not_an_error(tmp_path):
    source = LabelsSource(kind="parquet", path="labels/none", label="is_fraud")
    assert LabelsSourceReader(tmp_path).read(source, START, END).empty


def test_parquet_labels_without_the_label_column_name_it(tmp_path):
    (tmp_path / "l").mkdir()
    LABELS.rename(columns={"is_fraud": "fraud"}).to_parquet(tmp_path / "l" / "p.parquet", index=False)
    source = LabelsSource(kind="parquet", path="l", label="is_fraud")
    with pytest.raises(DataError, match=r"has no column\(s\) \['is_fraud'\]"):
        LabelsSourceReader(tmp_path).read(source, START, END)


def test_sql_labels_with_bind_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine = sa.create_engine(url)
    LABELS.assign(labeled_at=LABELS["labeled_at"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_sql("labels", engine)
    engine.dispose()
    source = LabelsSource(
        kind="sql",
        url=url,
        query="SELECT request_id, row, is_fraud FROM labels WHERE labeled_at >= :start AND labeled_at < :end",
        label="is_fraud",
    )
    reader = LabelsSourceReader(tmp_path)
    frame = reader.read(source, START.replace(tzinfo=None), END.replace(tzinfo=None))
    assert sorted(zip(frame["request_id"], frame["row"], strict=True)) == [("a", 0), ("a", 1), ("b", 0)]
    missing_key = source.model_copy(update={"query": "SELECT row, is_fraud FROM labels"})
    with pytest.raises(DataError, match=r"no column\(s\) \['request_id'\]"):
        reader.read(missing_key, START, END)
    broken = source.model_copy(update={"query": "SELECT * FROM nowhere"})
    with pytest.raises(DataError, match="labels query on sqlite:///.*failed"):
        reader.read(broken, START, END)
