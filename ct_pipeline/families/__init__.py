"""The model families, one module each; the spec's candidate kinds are the keys of :data:`FAMILIES`.

Adding a family is adding a module with a :class:`~ct_pipeline.families.base.ModelFamily` subclass and listing
it here. Heavy libraries (lightgbm, sklearn, ...) are imported inside ``fit``, never at import time.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from ct_pipeline.families.base import CandidateSpec, ModelFamily
from ct_pipeline.families.function import FunctionCandidate, FunctionFamily
from ct_pipeline.families.lightgbm import LightGBMCandidate, LightGBMFamily
from ct_pipeline.families.sklearn import SklearnCandidate, SklearnFamily

FAMILIES: dict[str, ModelFamily] = {f.kind: f for f in (LightGBMFamily(), SklearnFamily(), FunctionFamily())}


def family_for(candidate: Any) -> ModelFamily:
    try:
        return FAMILIES[candidate.kind]
    except KeyError:
        raise KeyError(f"no model family for candidate kind {candidate.kind!r} (known: {sorted(FAMILIES)})") from None


def candidate_union() -> Any:
    """The spec's ``candidates`` item type: one config class per family, discriminated by ``kind``."""
    members = tuple(f.candidate for f in FAMILIES.values())
    return Annotated[Union[members], Field(discriminator="kind")]  # noqa: UP007 (built at run time)


__all__ = [
    "FAMILIES",
    "CandidateSpec",
    "FunctionCandidate",
    "LightGBMCandidate",
    "ModelFamily",
    "SklearnCandidate",
    "candidate_union",
    "family_for",
]
