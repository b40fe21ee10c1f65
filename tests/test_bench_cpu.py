"""The bench's CPU accounting: roles from command lines, CPU ms per request from /proc."""

from __future__ import annotations

import os
import time

from bench import cpu


def test_roles_name_deployments_engine_processes_and_daemons() -> None:
    assert cpu.role_of("ray::ServeRepli ray::ServeReplica:promethios:GovernanceScorer") == (
        "GovernanceScorer"
    )
    assert cpu.role_of("VLLM::Worker VLLM::Worker") == "vLLM Worker"
    assert cpu.role_of("ray::ProxyActor ray::ProxyActor") == "ServeProxy"
    assert cpu.role_of("python -m vllm.entrypoints.openai.api_server --model m") == (
        "vLLM api_server"
    )
    assert cpu.role_of("bash -c sleep 1") == "other"


def test_cpu_spent_between_snapshots_is_counted_per_request() -> None:
    me = os.getpid()
    before = {me: cpu.snapshot()[me]}  # this process alone: others on the machine vary
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 300 ms of CPU in this process
        pass
    after = {me: cpu.snapshot()[me]}
    spent = cpu.per_request(before, after, requests=3)
    assert 90 <= spent[before[me][0]] <= 130  # ~100 ms per "request", 10 ms ticks
    assert spent["total"] == spent[before[me][0]]
