"""Policies: YAML label sets with thresholds and actions (schema, safe loading, compile)."""

from moderator.policy.load import LoadedPolicy, PolicyError, load_policies, load_policy, policy_version, validate_files
from moderator.policy.schema import ClassSpec, Mode, PolicySpec

__all__ = [
    "ClassSpec",
    "LoadedPolicy",
    "Mode",
    "PolicyError",
    "PolicySpec",
    "load_policies",
    "load_policy",
    "policy_version",
    "validate_files",
]
