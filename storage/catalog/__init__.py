"""The SQL catalog: SAEs, their features, examples, vocabulary projections, labels, keys.

Typical use:

    upgrade(url)                                  # create or migrate the schema
    Session = make_sessionmaker(make_engine(url))
    with Session() as session:
        sae = register_sae(session, name=..., ...); session.commit()
        write_feature_index(session, sae.id, feature_index)
"""

# contrasts: its tables join Base.metadata wherever the catalog is imported (env.py, tests).
from saefeat.storage.catalog import contrasts  # noqa: F401
from saefeat.storage.catalog.db import (
    current_revision,
    downgrade,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from saefeat.storage.catalog.keys import create_api_key, has_scope, verify_api_key
from saefeat.storage.catalog.labels import add_label, label_history, pick_current_label
from saefeat.storage.catalog.registry import register_sae
from saefeat.storage.catalog.writer import IndexWriteSummary, write_feature_index

__all__ = [
    "IndexWriteSummary",
    "add_label",
    "create_api_key",
    "current_revision",
    "downgrade",
    "has_scope",
    "label_history",
    "make_engine",
    "make_sessionmaker",
    "pick_current_label",
    "register_sae",
    "upgrade",
    "verify_api_key",
    "write_feature_index",
]
