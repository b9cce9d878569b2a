"""Agreement between two runs of the same computation: the yardsticks of benchmarks/gpu_check.py.

Each function takes plain tensors (any device; compared in fp64 on the CPU) and returns a dict of
numbers and `ok`, so the report shows how far apart the runs were, not only whether they passed.
"""

from __future__ import annotations

import math

import torch

# A key bias shifts every attention score of a row by the same amount, which softmax ignores: its
# gradient is zero in exact arithmetic, so both runs hold rounding noise there and no comparison of
# that noise means anything. Left out of gradient and update comparisons, and said so in the report.
ZERO_GRADIENT_NAMES = (".key.bias",)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((_f64(a) - _f64(b)).abs().max()) if a.numel() else 0.0


def close_abs(a: torch.Tensor, ref: torch.Tensor, atol: float) -> dict:
    """Every element within `atol` of the reference."""
    if a.shape != ref.shape:
        return {"ok": False, "why": f"shape {tuple(a.shape)} against {tuple(ref.shape)}"}
    d = max_abs(a, ref)
    return {"max_abs_diff": d, "atol": atol, "ok": math.isfinite(d) and d <= atol}


def close_rel(a: torch.Tensor, ref: torch.Tensor, rtol: float, by: str = "l2") -> dict:
    """Relative difference of a whole tensor, judged `by` "l2" (||a - ref|| / ||ref||) or "max"
    (the largest difference over the reference's largest magnitude). Both are reported; unlike an
    element-wise relative error neither blows up at elements near zero."""
    if a.shape != ref.shape:
        return {"ok": False, "why": f"shape {tuple(a.shape)} against {tuple(ref.shape)}"}
    scale = float(_f64(ref).abs().max()) if ref.numel() else 0.0
    out = {"rel_l2": rel_l2(a, ref), "max_rel_diff": max_abs(a, ref) / scale if scale > 0 else max_abs(a, ref)}
    value = out["rel_l2" if by == "l2" else "max_rel_diff"]
    return {**out, "by": by, "rtol": rtol, "ok": math.isfinite(value) and value <= rtol}


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, 0 when both are zero, inf when only the reference is."""
    a, ref = _f64(a), _f64(ref)
    num, den = float((a - ref).norm()), float(ref.norm())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = _f64(a).flatten(), _f64(b).flatten()
    den = float(a.norm() * b.norm())
    if den == 0.0:
        return 1.0 if float(a.norm()) == float(b.norm()) == 0.0 else 0.0
    return float(a @ b) / den


def _compared(ref: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    names = sorted(ref)
    left_out = [n for n in names if n.endswith(ZERO_GRADIENT_NAMES)]
    return [n for n in names if n not in left_out], left_out


def tensors_rel_l2(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float) -> dict:
    """Per-tensor relative L2 difference; ok when the worst is within `rtol` and the names match."""
    if set(got) != set(ref):
        return {"ok": False, "why": f"tensor names differ: {sorted(set(got) ^ set(ref))[:5]}"}
    names, left_out = _compared(ref)
    diffs = {n: rel_l2(got[n], ref[n]) for n in names}
    worst = max(diffs, key=lambda n: diffs[n]) if diffs else None
    value = diffs[worst] if worst else 0.0
    return {"worst_rel_l2": value, "worst_tensor": worst, "rtol": rtol, "tensors": len(names),
            "left_out": left_out, "ok": bool(names) and math.isfinite(value) and value <= rtol}


def tensors_cosine(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], min_cos: float) -> dict:
    """Per-tensor cosine similarity; ok when the lowest is at least `min_cos`."""
    if set(got) != set(ref):
        return {"ok": False, "why": f"tensor names differ: {sorted(set(got) ^ set(ref))[:5]}"}
    names, left_out = _compared(ref)
    cos = {n: cosine(got[n], ref[n]) for n in names}
    worst = min(cos, key=lambda n: cos[n]) if cos else None
    value = cos[worst] if worst else 1.0
    return {"min_cosine": value, "worst_tensor": worst, "mean_cosine": sum(cos.values()) / max(len(cos), 1),
            "min_cos": min_cos, "tensors": len(names), "left_out": left_out,
            "ok": bool(names) and math.isfinite(value) and value >= min_cos}


def scalars_close(a: float, ref: float, rtol: float) -> dict:
    rel = abs(a - ref) / abs(ref) if ref else abs(a - ref)
    return {"value": a, "reference": ref, "rel_diff": rel, "rtol": rtol, "ok": math.isfinite(rel) and rel <= rtol}


def all_ok(*results: dict) -> bool:
    return all(r.get("ok") is True for r in results)
