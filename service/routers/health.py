"""Liveness (the process answers)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """200 while the process serves HTTP at all."""
    return {"status": "live"}
