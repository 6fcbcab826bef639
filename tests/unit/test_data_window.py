from datetime import UTC, date, datetime

import pandas as pd
import pytest

from ct_pipeline.adapters.data_sources import SourceReader
from ct_pipeline.demo_data import FEATURES, generate_transactions, write_partitioned
from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import parse_spec
from ct_pipeline.domain.window import content_hash, split_holdout
from ct_pipeline.errors import DataError
from ct_pipeline.steps.pull import pull
from ct_pipeline.testing import make_context


def pull_window(spec, end, settings, window=None):
    """The pull step with the real data sources and fakes for every other port."""
    reader = SourceReader(settings.paths.data_root)
    return pull(make_context(spec, settings=settings, data=reader, request=RunRequest(end=end, window=window)))


END = datetime(2026, 3, 1, tzinfo=UTC)


def spec_for(source: dict, window: str = "7d", features=None):
    return parse_spec(
        {
            "name": "fraud",
            "data": {
                "source": source,
                "time_column": "event_time",
                "window": window,
                "target": "is_fraud",
                "features": features or FEATURES,
            },
            "candidates": [{"name": "lgbm", "kind": "lightgbm"}],
            "metric": {"name": "roc_auc"},
        }
    )


@pytest.fixture
def transactions():
    return generate_transactions(date(2026, 2, 1), date(2026, 3, 5), rows_per_day=200, seed=1)


@pytest.fixture
def parquet_dir(settings, transactions):
    path = settings.paths.data_root / "tx"
    write_partitioned(transactions, path)
    return path


def test_parquet_window_is_exact_and_reproducible(settings, parquet_dir, transactions):
    spec = spec_for({"kind": "parquet", "path": "tx"})
    snap = pull_window(spec, END, settings)
    expected = transactions[(transactions.event_time >= "2026-02-22") & (transactions.event_time < "2026-03-01")]
    assert snap.rows == len(expected) > 0
    assert snap.start == datetime(2026, 2, 22, tzinfo=UTC) and snap.end == END
    frame = pd.read_parquet(snap.path)
    assert frame.event_time.min() >= pd.Timestamp("2026-02-22", tz="UTC")
    assert frame.event_time.max() < pd.Timestamp("2026-03-01", tz="UTC")
    # Same end, same rows, same hash: reruns and backfills are reproducible.
    assert pull_window(spec, END, settings).content_hash == snap.content_hash
    assert pull_window(spec, END, settings, window="3d").content_hash != snap.content_hash


def test_csv_and_parquet_windows_agree(settings, parquet_dir, transactions, tmp_path):
    csv = tmp_path / "tx.csv"
    transactions.to_csv(csv, index=False)
    a = pull_window(spec_for({"kind": "parquet", "path": "tx"}), END, settings)
    b = pull_window(spec_for({"kind": "csv", "path": str(csv)}), END, settings)
    assert a.rows == b.rows
    assert a.content_hash == b.content_hash


def test_sql_window_sqlite(settings, transactions, tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'tx.db'}"
    engine = sa.create_engine(url)
    transactions.to_sql("tx", engine, index=False)
    engine.dispose()
    query = "SELECT * FROM tx WHERE event_time >= :start AND event_time < :end"
    snap = pull_window(spec_for({"kind": "sql", "url": url, "query": query}), END, settings)
    assert snap.rows == int(
        ((transactions.event_time >= "2026-02-22") & (transactions.event_time < "2026-03-01")).sum()
    )


def test_empty_window_is_a_clear_error(settings, parquet_dir):
    spec = spec_for({"kind": "parquet", "path": "tx"})
    with pytest.raises(DataError, match=r"empty data window: no rows with event_time in \[2025-12-"):
        pull_window(spec, datetime(2026, 1, 1, tzinfo=UTC), settings)


def test_missing_column_is_named(settings, parquet_dir):
    spec = spec_for({"kind": "parquet", "path": "tx"}, features=["amount", "not_there"])
    with pytest.raises(DataError, match=r"column\(s\) \['not_there'\] not found"):
        pull_window(spec, END, settings)


def test_missing_source_is_named(settings):
    with pytest.raises(DataError, match="does not exist"):
        pull_window(spec_for({"kind": "parquet", "path": "nowhere"}), END, settings)


def test_content_hash_ignores_row_order(transactions):
    shuffled = transactions.sample(frac=1.0, random_state=3)
    assert content_hash(transactions) == content_hash(shuffled)
    changed = transactions.copy()
    changed.loc[0, "amount"] += 0.01
    assert content_hash(changed) != content_hash(transactions)


def test_holdout_is_most_recent(transactions):
    train, holdout = split_holdout(transactions, "event_time", 0.25)
    assert train.event_time.max() <= holdout.event_time.min()
    assert abs(len(holdout) - 0.25 * len(transactions)) <= 1
