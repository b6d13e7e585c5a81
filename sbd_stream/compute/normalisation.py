"""Count normalisation shared by training and inference.

The network sees counts divided by the vacuum dose (so vacuum reads ~1 whatever the exposure) and
predicts the clean image in the same units. Inference multiplies back to counts per pixel. Using the
dose rather than per-tile statistics matters: per-tile means or standard deviations differ from tile to
tile and would print the tile grid into the output as seams.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sbd_stream.config_merge import no_bool


class Normalisation(BaseModel):
    """How raw counts become network input and how network output becomes counts again.

    ``input = (counts / dose - offset) / scale``; ``counts = (output * scale + offset) * dose``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _numbers_not_bools = model_validator(mode="before")(no_bool)  # a card's "dose": true was 1.0

    kind: Literal["dose"] = "dose"
    dose: float = Field(0.45, gt=0, description="expected counts per pixel in vacuum per frame")
    offset: float = Field(0.0, description="subtracted after dividing by the dose")
    scale: float = Field(1.0, gt=0, description="divides after the offset")

    def to_input(self, counts: torch.Tensor, dose: float | torch.Tensor | None = None) -> torch.Tensor:
        d = self.dose if dose is None else dose
        return (counts.to(torch.float32) / d - self.offset) / self.scale

    def to_counts(self, output: torch.Tensor, dose: float | None = None) -> torch.Tensor:
        d = self.dose if dose is None else dose
        return (output * self.scale + self.offset) * d

    def to_clean_units(self, output: torch.Tensor) -> torch.Tensor:
        """Network output in clean-image units (vacuum = 1), as the simulator writes them."""
        return output * self.scale + self.offset
