"""A released migration stays as it was released, to the byte, in both dialects: a store that an
older jitproxy migrated and one migrated today have the same schema. The statements are written
once over each dialect's types (proxy.store.migrations.Types), so an edit there could reach a
released migration unseen; these digests would see it."""

from __future__ import annotations

import hashlib

import pytest

from proxy.store.migrations import MIGRATIONS, POSTGRES_TYPES, SQLITE_TYPES, Migration

# SHA-256 of each migration's statements joined by NUL, as released. A new migration adds a line;
# none of these ever changes.
RELEASED = {
    (1, "sqlite"): "dcf21e160cff58b2dcaa8b064e02dfbaf641b5b2d23f7f6091fd17dff736b098",
    (1, "postgres"): "fd4841957db3dc86b8110b9ab8c5037683540a5a7064865fe3830898a8e15ba4",
    (2, "sqlite"): "0210da9628290b4f28abe74c7f8059c81a2ae2b8e305f0d162ba73400810898f",
    (2, "postgres"): "ae91335cfa5a98da3a5be9047e2061102d47487cf01463828adeef422451a64e",
    (3, "sqlite"): "1e00f553a292068f1b431191b1953ef1930e9bd955d5c218a5fd4426a3129d6d",
    (3, "postgres"): "eb3c0a906f1efc4178ebb28553cc11eead5c045bb42676b3c33c4c50036b7ce9",
    (4, "sqlite"): "6ee59a09c305631411e94201fb7d92f907ef06144e0d93d14772ec0c7c5fae15",
    (4, "postgres"): "06fe7db810488bc87450506cba177e210643170fb237e437aeb936ba9f026d17",
    (5, "sqlite"): "e2e71b87819ad310d29fcf362f1585847f79bb3edfe59026f4b16bc5a9824f66",
    (5, "postgres"): "e1beebdf7101f9de069058ec5907c722a7cc1d416b45c6d0802bef50a0aa89cb",
    (6, "sqlite"): "b27653a53f5192fcad2c869bcba82e000da00940e162a6180e05374f21f79b3d",
    (6, "postgres"): "0ce63d27271b1a62e603a114723f07c4d5591bce2724414634cbd73f550e8a55",
}


@pytest.mark.parametrize(("version", "dialect"), sorted(RELEASED))
def test_a_released_migration_is_never_edited(version: int, dialect: str) -> None:
    (migration,) = [m for m in MIGRATIONS if m.version == version]
    statements: tuple[str, ...] = getattr(migration, dialect)
    assert hashlib.sha256("\0".join(statements).encode()).hexdigest() == RELEASED[version, dialect]


def test_versions_count_up_from_1() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_one_text_gives_each_dialect_its_types() -> None:
    migration = Migration.written_once(9, "example", lambda t: (f"ALTER TABLE t ADD COLUMN at {t.time}",))
    assert migration.sqlite == ("ALTER TABLE t ADD COLUMN at TEXT",)
    assert migration.postgres == ("ALTER TABLE t ADD COLUMN at timestamptz",)
    assert SQLITE_TYPES.flag("x") == "INTEGER NOT NULL DEFAULT 0 CHECK (x IN (0, 1))"
    assert POSTGRES_TYPES.flag("x") == "boolean NOT NULL DEFAULT false"
