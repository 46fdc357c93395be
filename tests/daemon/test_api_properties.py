"""Property-based tests of virtkitd's API from its own OpenAPI document (Schemathesis builds Hypothesis
strategies from the schema: valid and invalid requests): no 500 on any of them, and every response
matches its schema. The app runs in-process on an empty inventory in private directories; starting VMs is
left out (a generated definition could name a real guest and boot it)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install schemathesis)")


def test_no_request_gets_a_500_and_every_answer_fits_the_schema(tmp_path, monkeypatch):
    for var, sub in (("VIRTKIT_RUN_DIR", "run"), ("VIRTKIT_CONTAINERS_DIR", "c"), ("VIRTKIT_POOLS_DIR", "p"),
                     ("VIRTKIT_NET_DIR", "n"), ("VIRTKIT_SNAPSHOTS", "s")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    try:
        _run(tmp_path)
    finally:  # generated names made real switches (each with its daemon): none outlives the test
        from virtkit.network import control as net

        for sw in net.list_switches():
            net.delete(sw["name"])


def _run(tmp_path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

    from virtkit.daemon.app import create_app
    from virtkit.daemon.db import Inventory

    app = create_app(Inventory(tmp_path / "inv.db"), trusted=True)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.endswith("/start") or op.path == "/events" or f"{op.method.upper()} {op.path}" == "POST /modes":
            continue  # (boots a guest; an endless stream; boots the default guest in every mode)

        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=True)  # (the same examples every run: CI never flips on luck)
            def check(case) -> None:
                # left out: "a request that fits the schema is accepted" (`config` is free-form in the schema
                # and checked against the machine's rules: a 422 naming the field) and "every request that
                # does not fit is refused" (FastAPI reads a repeated query parameter's last value, and "0.0"
                # as 0): neither is a failure of the API
                case.call_and_validate(excluded_checks=[positive_data_acceptance, negative_data_rejection])

            try:
                check()
            except Unsatisfiable:  # (an operation with nothing that can be made invalid)
                assert mode == schemathesis.GenerationMode.NEGATIVE, op.path
        tested.append(f"{op.method.upper()} {op.path}")
    assert "POST /vms" in tested and "PUT /vms/{name}" in tested and len(tested) >= 30, tested
