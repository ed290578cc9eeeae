"""Each data product's contract in the Open Data Contract Standard (v3, YAML), generated from what the code location
declares: the stored tables' column schemas, owners, SLA (freshness, latency, availability), engine topic and the
readers of resources/access.py. Committed under contracts/ (`nautilus contracts export`): a change to a product's
columns or promises is then a reviewed diff, and tests/unit/test_contracts.py fails on any difference."""

import difflib
import functools
import json
from collections import defaultdict
from importlib import resources as package_files
from pathlib import Path

import dagster as dg
import jsonschema
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from resources import access
from resources.clickhouse import ClickHouseResource
from resources.postgres import PostgresResource

API_VERSION = "v3.0.2"
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
# ClickHouse and PostgreSQL types -> ODCS logical types (the physical type is kept as declared)
LOGICAL = (
    ("LowCardinality(String", "string"),
    ("String", "string"),
    ("text", "string"),
    ("bytea", "string"),
    ("Float", "number"),
    ("double precision", "number"),
    ("Decimal", "number"),
    ("Int", "integer"),
    ("UInt", "integer"),
    ("bigint", "integer"),
    ("integer", "integer"),
    ("DateTime", "timestamp"),
    ("timestamptz", "timestamp"),
    ("Date", "date"),
    ("date", "date"),
    ("Bool", "boolean"),
    ("boolean", "boolean"),
)


def logical_type(physical: str) -> str:
    t = physical
    while t.startswith("Nullable("):
        t = t[len("Nullable(") : -1]
    return next((lt for prefix, lt in LOGICAL if t.startswith(prefix)), "string")


def _products(defs: dg.Definitions) -> dict[str, list[dg.AssetSpec]]:
    """The stored assets of each product (`nautilus/product`; an asset without it belongs to its group's product)."""
    specs = [s for s in defs.resolve_all_asset_specs() if "dagster/column_schema" in s.metadata]
    by_group = {s.group_name: s.metadata["nautilus/product"] for s in specs if "nautilus/product" in s.metadata}
    out = defaultdict(list)
    for s in sorted(specs, key=lambda s: s.key.to_user_string()):
        out[s.metadata.get("nautilus/product") or by_group[s.group_name]].append(s)
    return dict(out)


def _value(v):
    return v.value if hasattr(v, "value") else v


def contract(product: str, specs: list[dg.AssetSpec]) -> OpenDataContractStandard:
    meta = next(s.metadata for s in specs if "nautilus/product" in s.metadata)
    domain = specs[0].group_name
    owners = sorted({o for s in specs for o in s.owners})
    readers = sorted(access.readers(domain)) if domain in access.DECLARATION else []
    schema = [
        {
            "name": s.key.to_user_string(),
            "physicalName": s.metadata["dagster/table_name"],
            "physicalType": "table",
            "description": s.description or "",
            "properties": [
                {
                    "name": c.name,
                    "physicalType": c.type,
                    "logicalType": logical_type(c.type),
                    **({"description": c.description} if c.description else {}),
                }
                for c in _value(s.metadata["dagster/column_schema"]).columns
            ],
        }
        for s in specs
    ]
    sla = [
        {
            "property": "freshness",
            "value": _value(meta["nautilus/freshness_fail_after_s"]),
            "unit": "s",
            "description": "a stored table is older than this: the product's freshness policy fails",
        },
        {"property": "freshnessWarning", "value": _value(meta["nautilus/freshness_warn_after_s"]), "unit": "s"},
        {
            "property": "latency",
            "value": _value(meta["nautilus/latency_target_ms"]),
            "unit": "ms",
            "description": "p99 of the product API's reads",
        },
        {
            "property": "availability",
            "value": _value(meta["nautilus/availability_target"]),
            "description": "share of the product API's reads answered",
        },
    ]
    doc = {
        "apiVersion": API_VERSION,
        "kind": "DataContract",
        "id": f"urn:nautilus:product:{product}",
        "name": product,
        "version": "1.0.0",
        "status": "active",
        "domain": domain,
        "dataProduct": product,
        "description": {"purpose": f"The {product} data product of the {domain} domain."},
        "schema": schema,
        "team": [{"username": o, "role": "owner"} for o in owners],
        "roles": [
            {"role": r, "access": "read", "description": "declared reader (resources/access.py)"}
            for r in [*readers, access.GOVERNANCE]
        ],
        "slaProperties": sla,
        "customProperties": [
            {"property": "engineTopic", "value": _value(meta.get("nautilus/engine_topic")) or ""},
        ],
    }
    return OpenDataContractStandard.model_validate(doc)


def contracts(defs: dg.Definitions) -> dict[str, str]:
    """file name -> YAML text, for every product."""
    return {f"{p}.odcs.yaml": contract(p, specs).to_yaml() for p, specs in _products(defs).items()}


@functools.cache
def _odcs_schema() -> dict:
    return json.loads(package_files.files("open_data_contract_standard").joinpath("schema.json").read_text())


def validate(text: str) -> None:
    """Against the ODCS JSON schema the open-data-contract-standard package ships (jsonschema.ValidationError)."""
    jsonschema.validate(yaml.safe_load(text), _odcs_schema())


def diff(defs: dg.Definitions, out: Path = CONTRACTS_DIR) -> str:
    """The unified diff from the contract files under `out` to the generated ones (stale files included); empty when
    they agree."""
    generated = contracts(defs)
    lines = []
    for name in sorted(set(generated) | {p.name for p in out.glob("*.odcs.yaml")}):
        text = generated.get(name, "")
        if text:
            validate(text)
        old = (out / name).read_text() if (out / name).exists() else ""
        lines += difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(out / name), "generated")
    return "".join(lines)


def export(defs: dg.Definitions, out: Path = CONTRACTS_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in contracts(defs).items():
        validate(text)
        (out / name).write_text(text)
        written.append(out / name)
    return written


# --- The stored tables against their committed contracts (an asset check per stored asset) ---

CHECK_NAME = "matches_contract"


def committed_columns(out: Path = CONTRACTS_DIR) -> dict[str, list[tuple[str, str]]]:
    """Asset key -> the (column, physical type) list its committed contract promises."""
    cols = {}
    for path in sorted(out.glob("*.odcs.yaml")):
        for obj in yaml.safe_load(path.read_text()).get("schema") or []:
            cols[obj["name"]] = [(p["name"], p["physicalType"]) for p in obj.get("properties") or []]
    return cols


def conformance(promised: list[tuple[str, str]], stored: list[tuple[str, str]]) -> dict:
    """What a stored table lacks, adds or types otherwise than its contract (column order is not part of it)."""
    want, have = dict(promised), dict(stored)
    return {
        "missing": sorted(set(want) - set(have)),
        "unexpected": sorted(set(have) - set(want)),
        "retyped": sorted(f"{c}: {want[c]} -> {have[c]}" for c in set(want) & set(have) if want[c] != have[c]),
    }


def _clickhouse_columns(ch, table: str) -> list[tuple[str, str]]:
    db, name = table.split(".", 1)
    with ch.session() as c:
        return c.query(
            "SELECT name, type FROM system.columns WHERE database = %(d)s AND table = %(t)s ORDER BY position",
            parameters={"d": db, "t": name},
        ).result_rows


def _postgres_columns(pg, table: str, promised: list[tuple[str, str]]) -> tuple[list, list]:
    """The table's columns, and the promised ones with their types in PostgreSQL's own spelling (timestamptz is
    `timestamp with time zone`: both sides through format_type)."""
    schema, name = table.split(".", 1)
    with pg.connect() as conn:
        stored = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, name),
        ).fetchall()
        spelled = {t: conn.execute("SELECT format_type(%s::regtype, NULL)", (t,)).fetchone()[0] for _, t in promised}
    return stored, [(c, spelled[t]) for c, t in promised]


def contract_checks(assets: list) -> dg.AssetChecksDefinition:
    """One check per stored asset: its table (ClickHouse system.columns, or PostgreSQL's catalog for assets of kind
    postgres) has exactly the columns and types its committed contract promises. Runs on its own schedule, read
    through the governance role on PostgreSQL, never inside a product's runs."""
    specs = [
        s
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for s in a.specs
        if "dagster/table_name" in s.metadata and "dagster/column_schema" in s.metadata
    ]
    tables = {s.key: (s.metadata["dagster/table_name"], "postgres" in s.kinds) for s in specs}

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=s.key,
                blocking=False,
                description=f"{tables[s.key][0]} has the columns and types of its contract under contracts/",
            )
            for s in specs
        ],
        name="tables_match_contracts",
        can_subset=True,
    )
    def data_contracts(
        context: dg.AssetCheckExecutionContext, clickhouse: ClickHouseResource, postgres_governance: PostgresResource
    ):
        committed = committed_columns()
        for key in sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string()):
            table, on_postgres = tables[key.asset_key]
            promised = committed.get(key.asset_key.to_user_string(), [])
            if on_postgres:
                stored, promised = _postgres_columns(postgres_governance, table, promised)
            else:
                stored = _clickhouse_columns(clickhouse, table)
            found = conformance(promised, stored)
            yield dg.AssetCheckResult(
                asset_key=key.asset_key,
                check_name=CHECK_NAME,
                passed=bool(promised) and not any(found.values()),
                metadata={"table": table, "contract_columns": len(promised), "stored_columns": len(stored), **found},
            )

    return data_contracts
