"""Issue 12 item 6: every data product's contract (ODCS v3) is generated from the code location, committed under
contracts/, valid against the standard's JSON schema, and any difference between the two fails here."""

import difflib
import subprocess
import sys

import jsonschema
import pytest
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from nautilus_assets import contracts
from nautilus_assets.definitions import defs
from resources import access
from tests.helpers import ROOT

PRODUCTS = {
    "market_data_feed",
    "market_analytics",
    "market_microstructure",
    "portfolio_states",
    "risk_metrics",
    "ml_predictions",
}


def test_the_committed_contracts_are_the_generated_ones():
    generated = contracts.contracts(defs)
    assert {n.removesuffix(".odcs.yaml") for n in generated} == PRODUCTS
    committed = {p.name for p in contracts.CONTRACTS_DIR.glob("*.odcs.yaml")}
    assert committed == set(generated), "stale or missing contract files (`nautilus contracts export`)"
    for name, text in generated.items():
        old = (contracts.CONTRACTS_DIR / name).read_text()
        diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), name, "generated"))
        assert not diff, f"{name} differs from the code location (review, then `nautilus contracts export`):\n{diff}"


def test_each_contract_is_valid_odcs_and_says_what_the_product_promises():
    for path in sorted(contracts.CONTRACTS_DIR.glob("*.odcs.yaml")):
        text = path.read_text()
        contracts.validate(text)  # the standard's JSON schema
        c = OpenDataContractStandard.from_string(text)  # and its pydantic model
        assert c.kind == "DataContract" and c.apiVersion == contracts.API_VERSION and c.id.endswith(c.name)
        assert c.schema_ and all(o.physicalName and o.properties for o in c.schema_), path.name
        sla = {p.property: p.value for p in c.slaProperties}
        assert {"freshness", "latency", "availability"} <= set(sla) and sla["freshness"] > 0, path.name
        readers = {r.role for r in c.roles}
        assert access.GOVERNANCE in readers and readers - {access.GOVERNANCE} == access.readers(c.domain), path.name
    trades = yaml.safe_load((contracts.CONTRACTS_DIR / "market_data_feed.odcs.yaml").read_text())
    table = next(o for o in trades["schema"] if o["physicalName"] == "market_data.trades")
    price = next(p for p in table["properties"] if p["name"] == "price")
    assert (price["physicalType"], price["logicalType"]) == ("Float64", "number")


@pytest.mark.parametrize(
    "broken", [{"kind": "Contract"}, {"apiVersion": "v9"}, {"id": None}, {"schema": [{"properties": []}]}]
)
def test_the_validator_refuses_a_broken_contract(broken):
    doc = yaml.safe_load((contracts.CONTRACTS_DIR / "ml_predictions.odcs.yaml").read_text())
    doc.update(broken)
    with pytest.raises(jsonschema.ValidationError):
        contracts.validate(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))


def test_logical_types():
    assert [
        contracts.logical_type(t)
        for t in (
            "LowCardinality(String)",
            "Nullable(Float64)",
            "UInt64",
            "bigint",
            "DateTime64(9, 'UTC')",
            "timestamptz",
            "Date",
            "date",
            "text",
        )
    ] == ["string", "number", "integer", "integer", "timestamp", "timestamp", "date", "date", "string"]


def test_the_cli_check_fails_on_a_difference(tmp_path):
    for p in contracts.CONTRACTS_DIR.glob("*.odcs.yaml"):
        (tmp_path / p.name).write_text(p.read_text().replace("physicalType: Float64", "physicalType: Float32", 1))
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "scripts.cli", "contracts", "export", "--check", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "-    physicalType: Float32" in out.stderr and "Traceback" not in out.stderr


def test_conformance_names_what_a_stored_table_lacks_adds_or_retypes():
    promised = [("a", "Int64"), ("b", "String"), ("c", "Float64")]
    assert contracts.conformance(promised, list(reversed(promised))) == {"missing": [], "unexpected": [], "retyped": []}
    assert contracts.conformance(promised, [("a", "Int32"), ("c", "Float64"), ("d", "Date")]) == {
        "missing": ["b"],
        "unexpected": ["d"],
        "retyped": ["a: Int64 -> Int32"],
    }


def test_every_stored_asset_has_a_contract_check_reading_the_committed_columns():
    from nautilus_assets.definitions import CONTRACTS

    committed = contracts.committed_columns()
    checked = {k.asset_key.to_user_string() for k in CONTRACTS.check_keys}
    assert checked == set(committed) and len(checked) >= 12
    assert ("price", "Float64") in committed["market_data_feed/trades"]
