"""``--openapi`` against every official provider spec (``TESSERA_SPECS_DIR``): each loads,
its known authoring defects reported as one-line warnings (UK Open Banking repeats an enum
value, Berlin Group a parameter), and a real contract violation is still caught while the
conforming request passes. What the kit cannot tolerate is refused in one line naming the
file and the JSON pointer: a remote ``$ref`` (Moov's raw spec), an unknown defect, a file that
is not an OpenAPI description."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance import cli as conformance_cli
from conformance.contract import ContractValidator, SpecLoadError
from conformance.results import Verdict
from conformance.traffic import TappedExchange
from tests.conformance.conftest import by_id, run_kit, specs_dir

BASE = "http://127.0.0.1:9"
JSON = ("content-type", "application/json")
FORM = ("content-type", "application/x-www-form-urlencoded")


def post(path: str, headers: list[tuple[str, str]], body: Any, **response: Any) -> TappedExchange:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return TappedExchange("POST", httpx.URL(f"{BASE}{path}"), headers, content, **response)


@dataclass
class Official:
    """One official spec: the defects it is known for, a request that conforms, and one that
    breaks the contract with the violations the kit must name."""

    file: str
    defects: list[str]
    good: TappedExchange
    bad: TappedExchange
    violations: list[tuple[str, str, str]]
    base_url: str = BASE
    notes: list[str] = field(default_factory=list)


ADYEN_PAYMENT = {
    "amount": {"value": 1003, "currency": "EUR"},
    "reference": "order-1",
    "merchantAccount": "TesseraConformance",
    "paymentMethod": {
        "type": "scheme",
        "number": "4111111111111111",
        "expiryMonth": "03",
        "expiryYear": "2030",
        "cvc": "737",
    },
    "returnUrl": "https://merchant.example/return",
}
OBUK_CONSENT = {
    "Data": {
        "Initiation": {
            "InstructionIdentification": "ACME412",
            "EndToEndIdentification": "FRESCO.21302.GFX.20",
            "InstructedAmount": {"Amount": "165.88", "Currency": "GBP"},
            "CreditorAccount": {
                "SchemeName": "UK.OBIE.SortCodeAccountNumber",
                "Identification": "08080021325698",
                "Name": "ACME Inc",
            },
        }
    },
    "Risk": {},
}
OBUK_HEADERS = [
    JSON,
    ("authorization", "Bearer token"),
    ("x-idempotency-key", "key-1"),
    ("x-jws-signature", "signature"),
]
BERLIN_FUNDS = {
    "account": {"iban": "DE40100100103307118608"},
    "instructedAmount": {"currency": "EUR", "amount": "123.50"},
}
BERLIN_HEADERS = [
    JSON,
    ("x-request-id", "99391c7e-ad88-49ec-a2ad-99ddcb1f7721"),
    ("consent-id", "consent-1"),
]


def _with(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return changed


OFFICIAL = [
    Official(
        "adyen-CheckoutService-v71.json",
        [],
        post("/v71/payments", [JSON, ("x-api-key", "k")], ADYEN_PAYMENT),
        post(
            "/v71/payments",
            [JSON, ("x-api-key", "k")],
            {k: v for k, v in ADYEN_PAYMENT.items() if k != "returnUrl"},
        ),
        [("request", "$", "'returnUrl' is a required property")],
        base_url=f"{BASE}/v71",
    ),
    Official(
        "stripe-spec3-2023-09.json",
        [],
        post(
            "/v1/payment_intents",
            [FORM, ("authorization", "Bearer k")],
            b"amount=1050&currency=eur&capture_method=manual&confirm=true",
        ),
        post(
            "/v1/payment_intents",
            [FORM, ("authorization", "Bearer k")],
            b"amount=10.50&currency=eur",
        ),
        [("request", "$.amount", 'violates type "integer"')],
    ),
    Official(
        "obuk-payment-initiation-openapi.json",
        [
            "obuk-payment-initiation-openapi.json: /components/schemas/OBFrequency6Code/enum: "
            'enum repeats "WEEK"; repeat ignored'
        ],
        post("/domestic-payment-consents", OBUK_HEADERS, OBUK_CONSENT),
        # A decimal amount as a JSON number: OBUK carries it as a string ("165.88").
        post(
            "/domestic-payment-consents",
            OBUK_HEADERS,
            _with(OBUK_CONSENT, ["Data", "Initiation", "InstructedAmount", "Amount"], 165.88),
        ),
        [("request", "$.Data.Initiation.InstructedAmount.Amount", 'violates type "string"')],
    ),
    Official(
        "berlingroup-psd2-api-1.3.9-2021-05-04.json",
        [
            "berlingroup-psd2-api-1.3.9-2021-05-04.json: "
            "/paths/~1v1~1funds-confirmations/post/parameters/3: repeats parameter "
            "'Consent-ID' (in header) of parameters/1; the first is used"
        ],
        # The very operation whose parameters were repaired.
        post("/v1/funds-confirmations", BERLIN_HEADERS, BERLIN_FUNDS),
        post(
            "/v1/funds-confirmations",
            BERLIN_HEADERS[:1],
            _with(BERLIN_FUNDS, ["instructedAmount", "amount"], 123.5),
        ),
        [
            ("request", "parameter:X-Request-ID", "MissingRequiredParameter: X-Request-ID"),
            ("request", "$.instructedAmount.amount", 'violates type "string"'),
        ],
    ),
    Official(
        "moov-ach-openapi.local.yaml",
        [],
        # The reply's schema lives in moov-base-common.yaml, beside the spec.
        post(
            "/files/f1/validate",
            [JSON],
            {"requireABAOrigin": True},
            status_code=200,
            response_headers=[JSON],
            response_body=b'{"error": "none"}',
        ),
        post(
            "/files/f1/validate",
            [JSON],
            {"requireABAOrigin": "yes"},
            status_code=200,
            response_headers=[JSON],
            response_body=b'{"error": 5}',
        ),
        [
            ("request", "$.requireABAOrigin", 'violates type "boolean"'),
            ("response", "$.error", 'violates type "string"'),
        ],
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", OFFICIAL, ids=[s.file for s in OFFICIAL])
def test_each_official_spec_loads_and_still_catches_a_contract_violation(spec: Official) -> None:
    validator = ContractValidator.load(specs_dir() / spec.file)
    assert [str(defect) for defect in validator.defects] == spec.defects
    assert validator.validate(spec.good, spec.base_url) == []
    found = [
        (v.direction, v.json_path, v.message) for v in validator.validate(spec.bad, spec.base_url)
    ]
    assert sorted(found) == sorted(spec.violations)


def test_every_official_spec_in_the_folder_is_covered() -> None:
    """A spec added to TESSERA_SPECS_DIR gets a case here (or a reason it cannot load)."""
    present = {p.name for p in specs_dir().iterdir() if p.suffix in (".json", ".yaml", ".yml")}
    covered = {s.file for s in OFFICIAL} | {"moov-ach-openapi.yaml", "moov-base-common.yaml"}
    assert present == covered


def test_a_spec_with_a_remote_reference_is_refused_in_one_line() -> None:
    """Moov's raw spec points its error schema at GitHub's master branch: the kit never
    fetches it (the ``.local.yaml`` copy points at the file beside it)."""
    path = specs_dir() / "moov-ach-openapi.yaml"
    with pytest.raises(SpecLoadError) as refused:
        ContractValidator(path)
    assert str(refused.value) == (
        f"{path}: /paths/~1files~1{{fileID}}/post/responses/400/content/application~1json/"
        "schema/$ref: remote $ref "
        "'https://raw.githubusercontent.com/moov-io/base/master/api/common.yaml#/components/"
        "schemas/Error' (the kit reads local files only: use a copy of the spec whose "
        "references point to local files)"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "file", ["obuk-payment-initiation-openapi.json", "berlingroup-psd2-api-1.3.9-2021-05-04.json"]
)
async def test_the_kit_runs_against_the_open_banking_specs(file: str) -> None:
    """Refused before (exit 2, a 25-line dump of the spec validator's error); now the run
    starts and judges the traffic: the sandbox's card calls are not in these specs."""
    report = await run_kit(
        "sandbox", openapi=specs_dir() / file, select=("card.authorize.approved",)
    )
    result = by_id(report)["card.authorize.approved"]
    assert result.verdict is Verdict.FAILED
    assert {v.json_path for v in result.violations} == {"path"}
    assert all(v.message.endswith("is not in the spec") for v in result.violations)
    # The defects it tolerated are in the report (JSON, HTML, JUnit), one line each.
    expected = "OBFrequency6Code" if file.startswith("obuk") else "Consent-ID"
    assert any(expected in d and d.startswith(file) for d in report.openapi_defects)
    assert report.to_dict()["openapi_defects"] == report.openapi_defects


@pytest.mark.slow
def test_the_cli_warns_of_each_tolerated_defect(capsys: pytest.CaptureFixture[str]) -> None:
    spec = specs_dir() / "obuk-payment-initiation-openapi.json"
    argv = ["run", "--connector", "sandbox", "--openapi", str(spec), "--quiet"]
    assert conformance_cli.main([*argv, "--select", "card.authorize.approved"]) == 1
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "OpenAPI spec defect tolerated" in line]
    assert warnings and all(line.startswith("warning: ") for line in warnings)
    assert any("OBFrequency6Code" in line for line in warnings)


def test_the_cli_prints_a_refused_spec_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    spec = specs_dir() / "moov-ach-openapi.yaml"
    argv = ["run", "--connector", "sandbox", "--openapi", str(spec), "--quiet"]
    assert conformance_cli.main(argv) == 2
    err = capsys.readouterr().err
    # The file as the kit read it (a symlinked specs folder, as CI's, is resolved).
    assert err.startswith(f"conformance: error: {spec.resolve()}: /paths/~1files~1{{fileID}}/post/")
    assert err.count("\n") == 1


# -- defects and errors, on small specs of our own -------------------------------------------------

SMALL: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Small acquirer", "version": "1"},
    "paths": {
        "/pay": {
            "post": {
                "operationId": "pay",
                "parameters": [
                    {
                        "name": "X-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Pay"}}
                    },
                },
                "responses": {"200": {"description": "paid"}},
            }
        }
    },
    "components": {
        "schemas": {
            "Pay": {
                "type": "object",
                "required": ["amount"],
                "properties": {
                    "amount": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["card", "bank"]},
                },
            }
        }
    },
}


def _write(tmp_path: Path, document: Any, name: str = "small.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_known_defects_are_repaired_reported_and_validation_goes_on(tmp_path: Path) -> None:
    spec = copy.deepcopy(SMALL)
    operation = spec["paths"]["/pay"]["post"]
    operation["parameters"].append({"name": "X-Key", "in": "header", "schema": {"type": "integer"}})
    spec["paths"]["/pay"]["get"] = {
        "operationId": "pay",
        "responses": {"200": {"description": "ok"}},
    }
    spec["components"]["schemas"]["Pay"]["properties"]["kind"]["enum"] = ["card", "bank", "card"]
    validator = ContractValidator(_write(tmp_path, spec))
    assert [str(defect) for defect in validator.defects] == [
        'small.json: /components/schemas/Pay/properties/kind/enum: enum repeats "card"; '
        "repeat ignored",
        "small.json: /paths/~1pay/post/parameters/1: repeats parameter 'X-Key' (in header) of "
        "parameters/0; the first is used",
        "small.json: /paths/~1pay/post/operationId: operationId 'pay' is also "
        "/paths/~1pay/get/operationId; ignored",
    ]
    assert all("\n" not in str(defect) for defect in validator.defects)
    headers = [JSON, ("x-key", "k")]
    assert validator.validate(post("/pay", headers, {"amount": 5, "kind": "card"}), BASE) == []
    # The first X-Key (a required string) is the one enforced; the enum still holds.
    bad = post("/pay", [JSON], {"amount": 5, "kind": "cash"})
    assert sorted((v.json_path, v.message) for v in validator.validate(bad, BASE)) == [
        ("$.kind", 'violates enum ["card", "bank"]'),
        ("parameter:X-Key", "MissingRequiredParameter: X-Key"),
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s["components"]["schemas"]["Pay"]["properties"]["kind"].update(
                {"$ref": "#/components/schemas/Nope"}
            ),
            "/components/schemas/Pay/properties/kind/$ref: "
            "$ref '#/components/schemas/Nope' points to nothing",
        ),
        (
            lambda s: s["paths"]["/pay"]["post"].update({"responses": "none"}),
            '/paths/~1pay/post/responses: "none" is not of type "object"',
        ),
        (
            lambda s: s["components"]["schemas"]["Pay"]["properties"]["amount"].update(
                {"type": "integr"}
            ),
            "/components/schemas/Pay: is not valid under any of the schemas listed in the "
            "'oneOf' keyword",
        ),
    ],
    ids=["dangling-ref", "wrong-type", "unknown-schema-type"],
)
def test_any_other_spec_error_is_one_line_naming_the_file_and_the_pointer(
    tmp_path: Path, change: Any, problem: str
) -> None:
    spec = copy.deepcopy(SMALL)
    change(spec)
    path = _write(tmp_path, spec)
    with pytest.raises(SpecLoadError) as refused:
        ContractValidator(path)
    assert str(refused.value) == f"{path}: {problem}"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "broken.json",
            '{"openapi": "3.0.3",\n "info": {',
            "not valid JSON (line 2, column 11: Expecting property name enclosed in double quotes)",
        ),
        ("broken.yaml", "openapi: 3.0.3\ninfo: [\n", "not valid YAML (line 3, column 1)"),
        (
            "swagger.json",
            '{"swagger": "2.0", "paths": {}}',
            "/openapi: not an OpenAPI 3.0 or 3.1 description (no openapi field)",
        ),
        (
            "old.json",
            '{"openapi": "2.0"}',
            "/openapi: not an OpenAPI 3.0 or 3.1 description (openapi '2.0')",
        ),
    ],
)
def test_a_file_that_is_no_openapi_description_is_one_line(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = _write(tmp_path, content, name)
    with pytest.raises(SpecLoadError) as refused:
        ContractValidator(path)
    assert str(refused.value) == f"{path}: {problem}"
    with pytest.raises(SpecLoadError, match=r"cannot read the OpenAPI file \(No such file"):
        ContractValidator(tmp_path / "missing.json")
