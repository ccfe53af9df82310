"""The variants of `--experiment ablations`: each takes one idea of the Transformer away.

Kept apart from `src/cli/experiment.py` (the runner) so that the argument parser can list the
names without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXPERIMENTS = ("ablations",)


@dataclass(frozen=True)
class Variant:
    """One idea taken away: the ModelConfig changes, and what the table says was removed (German)."""

    name: str
    changes: dict[str, Any]
    removed: str
    idea: str  # the half-sentence that frames the measured result


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", {}, "nichts (GPT-2 wie im Lesepfad)", "Der Vergleichsmaßstab"),
    Variant("no_position", {"pos_encoding": "none"}, "Positions-Embedding",
            "Ohne Positionsvektor kann ein kausales Modell Positionen nur indirekt erschließen"),
    Variant("sinusoidal", {"pos_encoding": "sinusoidal"}, "gelernte Positionen (dafür feste Sinus-Tabelle)",
            "Feste Sinus-Positionen statt gelernter"),
    Variant("no_mask", {"causal": False}, "kausale Maske",
            "Ohne Maske sieht jede Position die Zukunft und schreibt das nächste Zeichen einfach ab"),
    Variant("no_residual", {"residual": False}, "Residualverbindungen",
            "Ohne Residualpfad muss jeder Layer den ganzen Strom neu erzeugen"),
    Variant("no_layernorm", {"norm": "none"}, "LayerNorm (alle)", "Ohne Normalisierung"),
    Variant("rmsnorm", {"norm": "rmsnorm"}, "LayerNorm (dafür RMSNorm)", "RMSNorm statt LayerNorm"),
    Variant("post_norm", {"norm_position": "post"}, "Pre-LN (dafür Post-LN)",
            "Normalisieren nach der Addition (Post-LN, Vaswani 2017)"),
    Variant("one_head", {"n_head": 1}, "mehrere Heads (ein Head, gleiche Breite)", "Ein einziger breiter Head"),
    Variant("no_mlp", {"mlp": False}, "MLP in jedem Block", "Nur Attention, kein MLP"),
    Variant("untied", {"tie_weights": False}, "Weight Tying (eigener LM-Head)",
            "Ein eigener LM-Head statt der geteilten Embedding-Matrix"),
)}
