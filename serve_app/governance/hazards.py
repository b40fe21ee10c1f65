"""The MLCommons hazard taxonomy (AILuminate v1.0 / Llama Guard 3 codes), the label set
of the harmful-content classifier. Plain constants: importing this loads no model."""

from __future__ import annotations

HAZARDS: dict[str, str] = {
    "violent_crimes": "S1",
    "non_violent_crimes": "S2",
    "sex_related_crimes": "S3",
    "child_sexual_exploitation": "S4",
    "defamation": "S5",
    "specialized_advice": "S6",
    "privacy": "S7",
    "intellectual_property": "S8",
    "indiscriminate_weapons": "S9",
    "hate": "S10",
    "suicide_self_harm": "S11",
    "sexual_content": "S12",
    "elections": "S13",
    "code_interpreter_abuse": "S14",
}
# The classifier also learns these two classes: prompt injection (beside its rules)
# and benign (including prompts that only sound risky).
INJECTION_CLASS = "prompt_injection"
BENIGN = "benign"
CLASSES: list[str] = [*HAZARDS, INJECTION_CLASS, BENIGN]

# The shares of dev benign items the classifier's threshold may flag that a policy file may
# choose (`classifier_max_benign_fpr`); the build chooses a threshold on dev for each.
BENIGN_FPR_BUDGETS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.10)

# Detector names the policy file may use for the classifier's verdicts.
SEMANTIC_DETECTORS: dict[str, str] = {f"harm.{h}": h for h in HAZARDS}
SEMANTIC_DETECTORS["semantic_injection"] = INJECTION_CLASS
