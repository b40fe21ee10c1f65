"""The constitution as configuration: a validated `PolicySet` loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from serve_app.governance.detectors import DETECTORS
from serve_app.governance.hazards import BENIGN_FPR_BUDGETS, SEMANTIC_DETECTORS

Action = Literal["block", "redact", "flag"]
Severity = Literal["low", "medium", "high", "critical"]
ComplianceMode = Literal["strict", "standard", "permissive"]

SEVERITY_WEIGHT: dict[str, float] = {"low": 0.1, "medium": 0.3, "high": 0.6, "critical": 0.9}

DEFAULT_POLICY_FILE = Path(__file__).resolve().parents[2] / "configs" / "policies" / "default.yaml"


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message names the field at fault."""


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    statement: str


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    principle: str
    category: str
    detector: str
    severity: Severity
    actions: dict[ComplianceMode, Action]

    @model_validator(mode="after")
    def _known_detector_and_all_modes(self) -> Policy:
        if self.detector not in DETECTORS and self.detector not in SEMANTIC_DETECTORS:
            known = sorted([*DETECTORS, *SEMANTIC_DETECTORS])
            raise ValueError(f"unknown detector {self.detector!r}; known: {known}")
        missing = {"strict", "standard", "permissive"} - set(self.actions)
        if missing:
            raise ValueError(f"actions lacks modes {sorted(missing)}")
        return self


class PolicySet(BaseModel):
    """Principles and the policies that enforce them."""

    model_config = ConfigDict(extra="forbid")
    version: str
    principles: list[Principle]
    policies: list[Policy]
    # The share of the dev split's benign items the hazard classifier may flag, which
    # places its threshold: one of BENIGN_FPR_BUDGETS (None: the build's default, 0.02).
    # Higher catches more harm and refuses more look-alikes (README, operating points).
    classifier_max_benign_fpr: float | None = None

    @field_validator("classifier_max_benign_fpr")
    @classmethod
    def _a_budget_the_build_chose_for(cls, value: float | None) -> float | None:
        if value is not None and value not in BENIGN_FPR_BUDGETS:
            raise ValueError(f"must be one of {list(BENIGN_FPR_BUDGETS)}, not {value}")
        return value

    @model_validator(mode="after")
    def _policies_name_known_principles(self) -> PolicySet:
        known = {p.id for p in self.principles}
        for i, policy in enumerate(self.policies):
            if policy.principle not in known:
                raise ValueError(f"policies[{i}].principle {policy.principle!r} is not a principle")
        seen: set[str] = set()
        for i, policy in enumerate(self.policies):
            if policy.id in seen:
                raise ValueError(f"policies[{i}].id {policy.id!r} is a duplicate")
            seen.add(policy.id)
        return self

    @property
    def needs_semantic(self) -> bool:
        """True when a policy uses the embedding classifier."""
        return any(p.detector in SEMANTIC_DETECTORS for p in self.policies)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_POLICY_FILE) -> PolicySet:
        """Read and validate a policy file; raises PolicyFileError naming the bad field."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise PolicyFileError(f"policy file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise PolicyFileError(f"policy file {path}: invalid YAML: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise PolicyFileError(f"policy file {path}: field {where}: {first['msg']}") from exc
