"""The base of every boundary model, in a module of its own so that both `warmpool.models` and
the models it embeds from elsewhere (`warmpool.environment`) can derive from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Base for every boundary model: unknown fields are rejected, values validated."""

    model_config = ConfigDict(extra="forbid")
