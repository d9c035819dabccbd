"""A feature's examples, projection and neighbours as JSON text, assembled by the database.

The feature page and `GET /v1/saes/{id}/features/{i}` show ~70 rows from three tables.
Reading them as rows cost a database round trip and Python work per row; here one query
per page has the database aggregate them into three JSON arrays (json_group_array on
SQLite, json_agg on PostgreSQL) that go into the response as they are. bench/catalog.py
measures the difference. The SQL is per dialect, so both run in tests/catalog. Each
example's JSON object has the fields of `FeatureExample`, by name, built from its field
list: the API declares that record as its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import JSON, text
from sqlalchemy.orm import Session

from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.models import FeatureExampleRow


def _example_object(json_column: str) -> str:
    """The key/value list of one example's JSON object over `e` (a feature_examples row
    joined with its feature's "index" as feature_index); `json_column` wraps a JSON column
    so it nests as JSON, not as a string ("json({})" on SQLite, "{}" on PostgreSQL)."""
    table = FeatureExampleRow.__table__
    parts = []
    for f in fields(FeatureExample):
        value = f'e."{f.name}"'
        if f.name in table.c and isinstance(table.c[f.name].type, JSON):
            value = json_column.format(value)
        parts.append(f"'{f.name}', {value}")
    return ", ".join(parts)


# One row of ordered rows per array. SQLite before 3.44 has no ORDER BY inside aggregates:
# it aggregates in the order of an ordered subquery, and LIMIT -1 keeps that subquery
# from being flattened into the aggregate (which would drop its order).
_SQLITE_SQL = """
SELECT
  (SELECT json_group_array(json_object(EXAMPLE))
   FROM (SELECT x.*, f."index" AS feature_index
         FROM feature_examples AS x JOIN features AS f ON f.id = x.feature_id
         WHERE x.feature_id = :feature_id
         ORDER BY x.kind != 'top', x.kind, x.rank LIMIT -1) AS e),
  (SELECT json_group_array(json_object(
      'rank', v.rank, 'token_id', v.token_id, 'token', v.token_str, 'value', v.value))
   FROM (SELECT * FROM vocab_tokens WHERE feature_id = :feature_id AND side = 'top'
         ORDER BY rank LIMIT -1) AS v),
  (SELECT json_group_array(json_object(
      'rank', v.rank, 'token_id', v.token_id, 'token', v.token_str, 'value', v.value))
   FROM (SELECT * FROM vocab_tokens WHERE feature_id = :feature_id AND side = 'bottom'
         ORDER BY rank LIMIT -1) AS v),
  (SELECT json_group_array(json_object(
      'feature_id', n.id, 'sae_id', n.sae_id, 'index', n."index", 'rank', n.rank,
      'cosine', n.cosine, 'density', n.density))
   FROM (SELECT f.id, f.sae_id, f."index", f.density, nb.rank, nb.cosine
         FROM neighbours AS nb JOIN features AS f ON f.id = nb.neighbour_feature_id
         WHERE nb.feature_id = :feature_id ORDER BY nb.rank LIMIT -1) AS n)
"""

_POSTGRESQL_SQL = """
SELECT
  COALESCE((SELECT json_agg(json_build_object(EXAMPLE) ORDER BY e.kind != 'top', e.kind, e.rank)
   FROM (SELECT x.*, f."index" AS feature_index
         FROM feature_examples AS x JOIN features AS f ON f.id = x.feature_id
         WHERE x.feature_id = :feature_id) AS e), '[]')::text,
  COALESCE((SELECT json_agg(json_build_object(
      'rank', rank, 'token_id', token_id, 'token', token_str, 'value', value) ORDER BY rank)
   FROM vocab_tokens WHERE feature_id = :feature_id AND side = 'top'), '[]')::text,
  COALESCE((SELECT json_agg(json_build_object(
      'rank', rank, 'token_id', token_id, 'token', token_str, 'value', value) ORDER BY rank)
   FROM vocab_tokens WHERE feature_id = :feature_id AND side = 'bottom'), '[]')::text,
  COALESCE((SELECT json_agg(json_build_object(
      'feature_id', f.id, 'sae_id', f.sae_id, 'index', f."index", 'rank', nb.rank,
      'cosine', nb.cosine, 'density', f.density) ORDER BY nb.rank)
   FROM neighbours AS nb JOIN features AS f ON f.id = nb.neighbour_feature_id
   WHERE nb.feature_id = :feature_id), '[]')::text
"""
_SQLITE = text(_SQLITE_SQL.replace("EXAMPLE", _example_object("json({})")))
_POSTGRESQL = text(_POSTGRESQL_SQL.replace("EXAMPLE", _example_object("{}")))


@dataclass(frozen=True)
class FeatureDocument:
    """JSON arrays, each as text: examples (top first, then quantile samples, by rank),
    projection top and bottom (by rank), neighbours (nearest first)."""

    examples: str
    projection_top: str
    projection_bottom: str
    neighbours: str


def feature_document(session: Session, feature_id: int) -> FeatureDocument:
    connection = session.connection()
    statement = _SQLITE if connection.dialect.name == "sqlite" else _POSTGRESQL
    row = connection.execute(statement, {"feature_id": feature_id}).one()
    return FeatureDocument(*row)
