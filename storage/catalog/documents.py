"""A feature's examples, projection and neighbours as JSON text, assembled by the database.

The feature page and `GET /v1/saes/{id}/features/{i}` show ~70 rows from three tables.
Reading them as rows cost a database round trip and Python work per row; here one query
per page has the database aggregate them into three JSON arrays (json_group_array on
SQLite, json_agg on PostgreSQL) that go into the response as they are. bench/catalog.py
measures the difference. The SQL is per dialect, so both run in tests/catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# One row of ordered rows per array. SQLite before 3.44 has no ORDER BY inside aggregates:
# it aggregates in the order of an ordered subquery, and LIMIT -1 keeps that subquery
# from being flattened into the aggregate (which would drop its order).
_SQLITE = text("""
SELECT
  (SELECT json_group_array(json_object(
      'kind', e.kind, 'rank', e.rank, 'activation', e.activation,
      'context_index', e.context_index, 'position', e.position, 'focus', e.focus,
      'tokens', json(e.token_strs), 'token_ids', json(e.token_ids),
      'values', json(e."values")))
   FROM (SELECT * FROM feature_examples WHERE feature_id = :feature_id
         ORDER BY kind != 'top', kind, rank LIMIT -1) AS e),
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
""")

_POSTGRESQL = text("""
SELECT
  COALESCE((SELECT json_agg(json_build_object(
      'kind', kind, 'rank', rank, 'activation', activation,
      'context_index', context_index, 'position', position, 'focus', focus,
      'tokens', token_strs, 'token_ids', token_ids, 'values', "values")
      ORDER BY kind != 'top', kind, rank)
   FROM feature_examples WHERE feature_id = :feature_id), '[]')::text,
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
""")


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
