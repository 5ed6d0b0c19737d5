"""Two QA walkthrough findings:

- ``--record`` without ``--cassettes DIR`` used to write into the kit's own cassette directory,
  inside the installed package (overwriting the shipped cassettes); it is now a usage error
  (exit code 2) before anything runs, and nothing is written;
- an ``inputs`` key of a sandbox profile no scenario asks for (a typo) used to be ignored, the
  scenario then running with a default card or skipped; the profile now does not load, and the
  error names the key, the file and what is allowed (with a "did you mean").
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import pytest

from conformance import environment
from conformance.cli import main
from conformance.environment import Mode, RunConfig, SetupError
from conformance.inputs import DECLINE_CODES, INPUT_KEYS, OPTIONAL_DECLINE_CODES, input_problems
from conformance.runner import ConformanceRun
from conformance.sandboxes import SandboxProfileError, load_sandbox_profile
from conformance.scenarios import CATALOGUE, expand
from gateway.cli import main as tessera
from sdk import Category, load_connectors
from tests.conformance.conftest import write_profile

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "sdk" / "templates"

# -- --record without --cassettes ----------------------------------------------------------------


@pytest.fixture
def kit_cassettes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in for the kit's packaged cassette directory, so a regression writes here instead
    of over the shipped cassettes."""
    packaged = tmp_path / "installed" / "conformance" / "cassettes"
    monkeypatch.setattr(environment, "BUILTIN_CASSETTES", packaged)
    return packaged


def _written(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*")) if directory.exists() else []


@pytest.mark.parametrize("cli", ["python -m conformance", "tessera"])
def test_record_without_cassettes_is_a_usage_error_and_writes_nothing(
    cli: str, kit_cassettes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--connector", "sandbox", "--record", "--select", "card.authorize.approved"]
    code = main(args) if cli == "python -m conformance" else tessera(["conformance", *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("conformance: error: --record needs --cassettes DIR")
    assert "Traceback" not in captured.err
    assert captured.out == ""  # refused before any scenario ran
    assert _written(kit_cassettes) == []


def test_record_without_cassettes_is_refused_from_the_api(kit_cassettes: Path) -> None:
    with pytest.raises(SetupError, match=r"--record needs --cassettes DIR"):
        ConformanceRun(RunConfig(connector="sandbox", mode=Mode.SIMULATOR, record=True))
    assert _written(kit_cassettes) == []


# -- unknown inputs keys -----------------------------------------------------------------------


def _profile(tmp_path: Path, inputs: dict[str, object]) -> Path:
    return write_profile(
        tmp_path, {"connector": "sandbox", "environment": "simulator", "inputs": inputs}
    )


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (
            {"decline_card_nubmer": {"number": "4000000000009995"}},
            ["unknown input 'decline_card_nubmer'", "card.declined.insufficient_funds"],
        ),
        (
            {"card.declined.insuficient_funds": {"number": "4000000000009995"}},
            [
                "unknown input 'card.declined.insuficient_funds' "
                "(did you mean 'card.declined.insufficient_funds'?)",
                "the inputs scenarios ask for are: bank.account.invalid",
            ],
        ),
        (
            {"card.declined.do_not_honor": {"nubmer": "4000000000000002"}},
            [
                "input 'card.declined.do_not_honor' has unknown key 'nubmer' "
                "(did you mean 'number'?)",
                "it takes: amount, currency, cvc, exp_month, exp_year, holder_name, number",
            ],
        ),
        (
            {"card.requires_3ds": {"number": "4000000000003220", "challenge": {"from": {}}}},
            ["unknown key 'challenge.from' (did you mean 'form'?)", "form, method, query"],
        ),
        (
            {"bank.account.returned": {"ibn": "DE89370400440532013000"}},
            ["unknown key 'ibn' (did you mean 'iban'?)", "routing_number"],
        ),
        (
            {"consent.approve": {"method": "GET", "qurey": {"decision": "approve"}}},
            ["unknown key 'qurey' (did you mean 'query'?)"],
        ),
    ],
)
def test_unknown_inputs_keys_are_refused_naming_the_key_the_file_and_what_is_allowed(
    tmp_path: Path, inputs: dict[str, object], expected: list[str]
) -> None:
    path = _profile(tmp_path, inputs)
    with pytest.raises(SandboxProfileError) as raised:
        load_sandbox_profile("sandbox", "simulator", [path], builtin=False)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message
    assert "4000000000" not in message  # the magic value is not echoed


def test_a_toml_profile_typo_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text(
        'connector = "sandbox"\nenvironment = "live"\n'
        '[inputs."card.declined.expired_crad"]\nnumber = "4000000000000069"\n'
    )
    with pytest.raises(SandboxProfileError, match=r"did you mean 'card\.declined\.expired_card'"):
        load_sandbox_profile("sandbox", "live", [path], builtin=False)


def test_a_pan_pasted_as_a_key_is_masked_in_the_error() -> None:
    pan = "4000000000009995"
    problems = input_problems({"card.approved": {pan: "number"}, pan: {}})
    assert len(problems) == 2
    assert all(pan not in problem for problem in problems)


def test_the_cli_refuses_a_typo_in_an_override_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _profile(tmp_path, {"decline_card_nubmer": {"number": "4000000000009995"}})
    code = main(["run", "--connector", "sandbox", "--quiet", "--overrides", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith(f"conformance: error: {path}: unknown input")
    assert "'decline_card_nubmer'" in captured.err


def test_every_input_a_scenario_declares_is_in_the_vocabulary() -> None:
    """``INPUT_KEYS`` keeps up with the catalogue: a scenario asking for an input a profile
    could not give would always be skipped."""
    manifest = load_connectors()["sandbox"].manifest
    declared = {
        name
        for scenarios in CATALOGUE.values()
        for instance in expand(scenarios, manifest)
        for name in instance.inputs
    }
    assert declared and declared <= set(INPUT_KEYS)


def test_a_profile_opts_into_further_decline_codes_by_naming_their_cards() -> None:
    """The baseline four decline codes always run (skipped without their inputs); any other
    card decline code runs when the sandbox profile names a card for it, once."""
    manifest = load_connectors()["sandbox"].manifest
    card = CATALOGUE[Category.CARD_ACQUIRER]

    def declined(provided: set[str]) -> list[str]:
        return [
            instance.id
            for instance in expand(card, manifest, provided)
            if instance.scenario.id == "card.authorize.declined"
        ]

    baseline = [f"card.authorize.declined[{code}]" for code in DECLINE_CODES]
    assert declined(set()) == baseline
    provided = {
        "card.declined.insufficient_funds",
        "card.declined.fraud_suspected",
        "card.approved",
    }
    assert declined(provided) == [*baseline, "card.authorize.declined[fraud_suspected]"]
    assert "lost_or_stolen" in OPTIONAL_DECLINE_CODES
    assert input_problems({"card.declined.lost_or_stolen": {"number": "4000000000009987"}}) == []
    # Bank and open-banking codes are no card declines: a typo-like name is refused.
    [problem] = input_problems({"card.declined.consent_rejected": {"number": "4000000000009987"}})
    assert problem.startswith("unknown input 'card.declined.consent_rejected'")


@pytest.mark.parametrize("template", sorted(TEMPLATES_DIR.glob("*.sandbox.json.tmpl")))
def test_the_generator_templates_map_only_known_inputs(template: Path) -> None:
    text = Template(template.read_text()).substitute(slug="acme", package="acme_connector")
    assert input_problems(json.loads(text)["inputs"]) == []
