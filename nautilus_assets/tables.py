"""A product's stored table, declared once: its typed columns make the DDL, the Dagster column schema and the column
lineage, so the three cannot drift apart (market_data/schema.py::Feed does the same for the feeds)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import dagster as dg


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # ClickHouse or PostgreSQL type
    description: str | None = None
    lineage: tuple = ()  # (asset key, column) pairs the column is computed from
    extra: str = ""  # what follows the type in the DDL: NOT NULL, CHECK (...), ALIAS run_id
    added: bool = False  # added after the table was first released: an ALTER brings older stores up to date

    @property
    def sql(self) -> str:
        return f"{self.name} {self.type} {self.extra}".rstrip()


@dataclass(frozen=True)
class Table:
    name: str  # database.table (ClickHouse) or schema.table (PostgreSQL)
    columns: tuple[Column, ...]
    options: str = ""  # after the column list: ENGINE, PARTITION BY, ORDER BY (ClickHouse)
    key: str = ""  # a table constraint inside the column list: PRIMARY KEY (...) (PostgreSQL)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self) -> list[str]:
        """CREATE TABLE IF NOT EXISTS, then ADD COLUMN IF NOT EXISTS for each added column (a no-op on a new table)."""
        body = ", ".join([c.sql for c in self.columns] + ([self.key] if self.key else []))
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name} ({body}) {self.options}".rstrip(),
            *(f"ALTER TABLE {self.name} ADD COLUMN IF NOT EXISTS {c.sql}" for c in self.columns if c.added),
        ]

    @cached_property
    def schema(self) -> dg.TableSchema:
        return dg.TableSchema(columns=[dg.TableColumn(c.name, c.type, description=c.description) for c in self.columns])

    @cached_property
    def lineage(self) -> dg.TableColumnLineage:
        return dg.TableColumnLineage(
            deps_by_column={
                c.name: [dg.TableColumnDep(asset_key=k, column_name=n) for k, n in c.lineage]
                for c in self.columns
                if c.lineage
            }
        )
