"""What a fit returns: :class:`RefinementResult` (crystal, thickness, figure of merit, uncertainties,
stage log) and its figure (measured vs simulated, PNG).
"""

from __future__ import annotations
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np
import torch
from lacbed_refine.version import __version__
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.io.cif import write_cif
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.io.files import atomic_path
from lacbed_refine.refine.config import FitConfig

log = logging.getLogger(__name__)


@dataclass
class StageLog:
    """One stage: its name, figure of merit after it, wall time [s] and a note."""

    name: str
    fom: float | None
    seconds: float
    note: str = ""


@dataclass
class RefinementResult:
    """Everything a refinement produced (see :meth:`write`)."""

    crystal_start: Crystal
    crystal: Crystal
    names: list[str]
    start: list[float]
    refined: list[float]
    sigma: list[float]
    thickness_start_nm: float
    thickness_nm: float
    thickness_sigma_nm: float
    r: float
    stages: list[StageLog]
    measured: np.ndarray
    simulated: np.ndarray
    settings: SimulationSettings
    config: FitConfig
    extra: dict = field(default_factory=dict)

    @property
    def fom(self) -> float:
        return 1.0 - self.r

    def report(self) -> dict:
        """JSON-ready report: parameters with uncertainties, stages, settings, versions."""
        params = [
            {"name": n, "start": s, "refined": v, "sigma": e}
            for n, s, v, e in zip(self.names, self.start, self.refined, self.sigma)
        ]
        params.append(
            {"name": "thickness_nm", "start": self.thickness_start_nm, "refined": self.thickness_nm,
             "sigma": self.thickness_sigma_nm}
        )
        settings = asdict(self.settings)
        settings.pop("thicknesses", None)
        return {
            "crystal": self.crystal.name,
            "space_group": self.crystal.spacegroup_symbol,
            "a_angstrom": self.crystal.a,
            "figure_of_merit": "1 - Pearson r (bright field)",
            "r": self.r,
            "parameters": params,
            "stages": [asdict(s) for s in self.stages],
            "settings": settings,
            "config": asdict(self.config),
            "versions": {"lacbed_refine": __version__, "torch": torch.__version__},
            **self.extra,
        }

    def write(self, out_dir) -> dict[str, Path]:
        """Write ``refined.cif``, ``report.json`` and ``fit.png`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unc = {}
        for name, sig in zip(self.names, self.sigma):
            if not math.isfinite(sig):  # not computed (no polish): write the value without one
                continue
            label, kind = name.rsplit(".", 1)
            if kind == "B":
                unc[(label, "b_iso")] = sig
            elif kind == "occ":
                unc[(label, "occupancy")] = sig
        paths = {"cif": out / "refined.cif", "report": out / "report.json", "figure": out / "fit.png"}
        write_cif(self.crystal, paths["cif"], uncertainties=unc)
        with atomic_path(paths["report"]) as tmp:
            tmp.write_text(json.dumps(_json_safe(self.report()), indent=2, default=float, allow_nan=False))
        _fit_figure(self, paths["figure"])
        return paths


def _json_safe(value):
    """NaN and infinities become None (JSON has no NaN): an uncertainty that could not be computed."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _fit_figure(result: RefinementResult, path: Path) -> None:
    """measured | simulated | difference, and the projected potential before/after (paper Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lacbed_refine.physics.potential import projected_potential

    def norm(img):
        img = np.asarray(img, dtype=float)
        return (img - img.mean()) / (img.std() or 1.0)

    meas, sim = norm(result.measured), norm(result.simulated)
    with torch.no_grad():
        centring = result.crystal.spacegroup_symbol[0]
        before = projected_potential(result.crystal_start.atoms(), result.crystal_start.a, centring=centring).numpy()
        after = projected_potential(result.crystal.atoms(), result.crystal.a, centring=centring).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    panels = [
        (meas, "measured", "gray"),
        (sim, f"simulated (r = {result.r:.4f})", "gray"),
        (sim - meas, "difference", "RdBu_r"),
        (before, "potential, start", "viridis"),
        (after, "potential, refined", "viridis"),
    ]
    for ax, (img, title, cmap) in zip(axes, panels):
        if cmap == "RdBu_r":
            v = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap=cmap, vmin=-v, vmax=v)
        else:
            ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{result.crystal.name}  t = {result.thickness_nm:.1f} ± {result.thickness_sigma_nm:.2f} nm", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
