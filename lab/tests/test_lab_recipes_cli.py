"""`python -m lab.toyworld.recipes` keeps its options after the argparse -> typer move."""

from __future__ import annotations

import pytest


def test_recipes_cli_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import lab.toyworld.recipes as r

    seen: dict = {}

    def fake(work, family, stages, device, limits, pack):
        seen.update(work=work, family=family, stages=stages, device=device, limits=limits, pack=pack)
        return {}

    monkeypatch.setattr(r, "run_recipe", fake)
    with pytest.raises(SystemExit) as e:
        r.main(["w", "--family", "mid", "--stages", "vae,text", "--limits", "vae=60", "--device", "cpu"])
    assert e.value.code == 0
    assert seen == {"work": "w", "family": "mid", "stages": ("vae", "text"), "device": "cpu",
                    "limits": {"vae": 60.0}, "pack": None}
