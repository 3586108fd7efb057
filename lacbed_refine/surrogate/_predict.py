"""Inference: trained generators as differentiable physics-level modules, loading, shipped weights.

- :class:`ForwardSurrogate`: potential [V] (or atoms, a crystal, θ) and thickness → bright-field
  intensities, differentiable end to end: ``FreeParameters.atoms(θ)`` → ``projected_potential`` →
  normalisation → generator → ``lo + (hi − lo) · minmax(output)``.
- :class:`InverseSurrogate`: bright-field pattern (any units), thickness and a → normalised
  potential (defined up to its origin) and its scale max − min [V].

Shipped weights live in ``lacbed_refine/surrogate/weights/`` (``forward.pt``, ``inverse.pt``, each
with a ``.card.json``); :func:`load_pretrained` reads them offline with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from lacbed_refine.version import __version__
from lacbed_refine import metrics
from lacbed_refine.physics.potential import projected_potential
from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.runtime import resolve_device
from lacbed_refine.surrogate._config import TaskConfig
from lacbed_refine.surrogate._models import decode_scale, generator_predict, prepare_input
from lacbed_refine.surrogate._trainer import CheckpointError, build_model, load_checkpoint
from lacbed_refine.surrogate._transforms import condition_vector, dihedral_apply

__all__ = [
    "ForwardSurrogate",
    "InverseSurrogate",
    "load_surrogate",
    "load_pretrained",
    "read_card",
    "WEIGHTS_DIR",
    "file_sha256",
]

#: Folder of the shipped weights (package data).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"




def _as_batch(x, name: str, device, dim: int = 2) -> tuple[torch.Tensor, bool]:
    x = torch.as_tensor(x, device=device)
    if not x.is_floating_point():
        x = x.double()
    if x.dim() == dim:
        return x.unsqueeze(0), True
    if x.dim() != dim + 1:
        raise ValueError(f"{name} must have shape (n, n) or (B, n, n), got {tuple(x.shape)}")
    return x, False


def _per_item(v, b: int, name: str, device) -> torch.Tensor:
    v = torch.as_tensor(v, device=device, dtype=torch.float32)
    if v.dim() == 0:
        v = v.expand(b)
    if v.shape != (b,):
        raise ValueError(f"{name} must be a number or have shape ({b},), got {tuple(v.shape)}")
    return v


class _Surrogate(nn.Module):
    def __init__(self, generator: nn.Module, task: TaskConfig, *, arch: str, info: dict | None = None):
        super().__init__()
        self.generator = generator.eval()
        self.task = task
        self.arch = arch
        self.info = dict(info or {})

    @property
    def image_size(self) -> int:
        """Image edge n [pixels] the generator works at."""
        return self.task.image_size

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def n_parameters(self) -> int:
        """Number of generator parameters."""
        return sum(p.numel() for p in self.generator.parameters())

    def _check_size(self, x: torch.Tensor, name: str) -> None:
        n = self.image_size
        if tuple(x.shape[-2:]) != (n, n):
            raise ValueError(f"{name} must be {n}×{n} pixels for this model, got {tuple(x.shape[-2:])}")


class ForwardSurrogate(_Surrogate):
    """Forward surrogate G: projected potential, thickness, a → bright-field LACBED intensities.

    Differentiable in the potential (hence θ) and in the thickness. Call :meth:`forward` with a
    potential in volts, or use :meth:`from_atoms`, :meth:`from_crystal`, :meth:`from_theta`.
    """

    def forward(self, potential, thickness_nm, a_angstrom, *, potential_scale=None, symmetrise: bool = False) -> dict[str, torch.Tensor]:
        """Predict patterns.

        Parameters
        ----------
        potential : Tensor, shape (n, n) or (B, n, n)
            Projected potential [V] (``[row, col] = [y, x]``, one cell spanning the image). With
            ``potential_scale`` given, the min–max normalised image instead.
        thickness_nm : float or Tensor, shape (T,)
            Thicknesses [nm]; every potential is predicted at every thickness.
        a_angstrom : float or Tensor, shape (B,)
            Cubic cell edge [Å].
        potential_scale : float or Tensor, shape (B,), optional
            max − min of the potential [V] when ``potential`` is already normalised.
        symmetrise : bool
            Average the 8 predictions ``D⁻¹ G(D ρ)`` over the operations D of the square: exactly
            equivariant (a 4mm projection gives an exactly 4mm pattern), 8× the cost.

        Returns
        -------
        dict with ``intensity`` (B, T, n, n) — fractions of the incident beam —, ``normalised``
        (B, T, n, n) in [0, 1], ``lo`` and ``hi`` (B, T); the B axis is dropped for a 2-D input.
        """
        dev = self.device
        rho, single = _as_batch(potential, "potential", dev)
        self._check_size(rho, "potential")
        if potential_scale is None:
            lo = rho.amin(dim=(-2, -1), keepdim=True)
            span = rho.amax(dim=(-2, -1), keepdim=True) - lo
            if not torch.all(span > 0):
                raise ValueError("potential is constant; cannot normalise it")
            norm = (rho - lo) / span
            scale = span.reshape(-1)
        else:
            norm, scale = rho, _per_item(potential_scale, rho.shape[0], "potential_scale", dev)
        b = norm.shape[0]
        t = torch.as_tensor(thickness_nm, device=dev, dtype=torch.float32).reshape(-1)
        a = _per_item(a_angstrom, b, "a_angstrom", dev)
        nt = t.shape[0]
        x = norm.to(torch.float32).unsqueeze(1).repeat_interleave(nt, dim=0)  # (B*T, 1, n, n)
        values = {"thickness_nm": t.repeat(b), "a_angstrom": a.repeat_interleave(nt),
                  "potential_scale": scale.to(torch.float32).repeat_interleave(nt)}
        cond = condition_vector(values, self.task.condition_names)
        if symmetrise:
            out = _symmetrised(self, x, cond)
        else:
            out = generator_predict(self.generator, self.arch, prepare_input(self.task, x), cond)
        s = decode_scale(out["scale"], "forward")
        n = self.image_size
        normalised = out["normalised"].reshape(b, nt, n, n)
        lo_i, hi_i = s["lo"].reshape(b, nt), s["hi"].reshape(b, nt)
        intensity = lo_i[..., None, None] + (hi_i - lo_i)[..., None, None] * normalised
        res = {"intensity": intensity, "normalised": normalised, "lo": lo_i, "hi": hi_i}
        return {k: v[0] for k, v in res.items()} if single else res

    def from_atoms(self, atoms: Atoms | dict, a_angstrom: float, thickness_nm, *, centring: str = "P", table: str = "kirkland",
                   symmetrise: bool = False):
        """Predict from a cell's atoms (``frac``, ``Z``, ``occupancy``, ``b_iso``; tensors may carry
        gradients) through :func:`lacbed_refine.physics.potential.projected_potential`."""
        rho = projected_potential(atoms, a_angstrom, centring=centring, size=self.image_size, table=table)
        return self.forward(rho, thickness_nm, a_angstrom, symmetrise=symmetrise)

    def from_crystal(self, crystal, thickness_nm, *, table: str = "kirkland", symmetrise: bool = False):
        """Predict from a :class:`lacbed_refine.structure.crystal.Crystal` (cubic cells only)."""
        crystal.require_cubic("the [001] surrogates")
        return self.from_atoms(crystal.atoms(), crystal.a, thickness_nm, centring=crystal.spacegroup_symbol[0], table=table,
                               symmetrise=symmetrise)

    def from_theta(self, params, theta: torch.Tensor, thickness_nm, *, table: str = "kirkland", symmetrise: bool = False):
        """Predict from free parameters θ (:class:`lacbed_refine.structure.parameters.FreeParameters`),
        differentiable in ``theta`` and ``thickness_nm`` (cubic cells only)."""
        crystal = params.crystal
        crystal.require_cubic("the [001] surrogates")
        return self.from_atoms(params.atoms(theta), crystal.a, thickness_nm, centring=crystal.spacegroup_symbol[0], table=table,
                               symmetrise=symmetrise)


def _symmetrised(model: ForwardSurrogate, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean over the square's operations D of D⁻¹ G(D x) (and of the scalar head)."""
    m = x.shape[0]
    ops = torch.arange(8, device=x.device).repeat_interleave(m)
    xs = dihedral_apply(x.repeat(8, 1, 1, 1), ops)
    out = model.generator(prepare_input(model.task, xs), cond.repeat(8, 1))
    image = dihedral_apply(out["image"], ops, inverse=True).view(8, m, *x.shape[1:]).mean(dim=0)
    return {"normalised": metrics.minmax(image[:, 0]), "scale": out["scale"].view(8, m, -1).mean(dim=0)}


class InverseSurrogate(_Surrogate):
    """Inverse surrogate H: bright-field pattern, thickness, a → normalised projected potential
    (defined up to its origin: compare with the origin-insensitive metrics) and its scale [V]."""

    def forward(self, pattern, thickness_nm, a_angstrom) -> dict[str, torch.Tensor]:
        """Predict potentials.

        Parameters
        ----------
        pattern : Tensor, shape (n, n) or (B, n, n)
            Bright-field patterns, any units (each is min–max normalised).
        thickness_nm : float or Tensor, shape (B,)
            Thickness of each pattern [nm].
        a_angstrom : float or Tensor, shape (B,)
            Cubic cell edge [Å].

        Returns
        -------
        dict with ``normalised`` (B, n, n) in [0, 1] and ``potential_scale`` (B,) [V]; the B axis is
        dropped for a 2-D input.
        """
        dev = self.device
        pat, single = _as_batch(pattern, "pattern", dev)
        self._check_size(pat, "pattern")
        b = pat.shape[0]
        x = metrics.minmax(pat.to(torch.float32)).unsqueeze(1)
        values = {"thickness_nm": _per_item(thickness_nm, b, "thickness_nm", dev),
                  "a_angstrom": _per_item(a_angstrom, b, "a_angstrom", dev)}
        cond = condition_vector(values, self.task.condition_names)
        out = generator_predict(self.generator, self.arch, x, cond)
        res = {"normalised": out["normalised"], "potential_scale": decode_scale(out["scale"], "inverse")["potential_scale"]}
        return {k: v[0] for k, v in res.items()} if single else res


def _generator_state(state: dict, *, ema: bool, source: str) -> dict:
    if ema and state.get("ema") is not None:
        weights = state["ema"]
    elif state.get("model") is not None:
        weights = {k[len("generator."):]: v for k, v in state["model"].items() if k.startswith("generator.")}
    elif state.get("ema") is not None:
        weights = state["ema"]
    else:
        raise CheckpointError(f"{source}: holds no generator weights")
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def load_surrogate(path, *, device="cpu", ema: bool = True) -> ForwardSurrogate | InverseSurrogate:
    """Load a trained surrogate (training checkpoint or exported weights) for inference.

    Parameters
    ----------
    path : str or Path
    device : str or torch.device
    ema : bool
        Use the EMA weights when the file has them.

    Raises
    ------
    FileNotFoundError, CheckpointError
        One line naming the file (corrupt, not a surrogate, NaN or infinite weights, weights that
        do not fit the model).
    ValueError
        An unknown ``device``, or a CUDA one without a GPU (before the file is read).
    """
    device = resolve_device(device, option="device")
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(state["arch"], state["config"])
    weights = _generator_state(state, ema=ema, source=str(path))
    mine = model.generator.state_dict()
    missing = [k for k in mine if k not in weights]
    extra = [k for k in weights if k not in mine]
    wrong = [k for k in mine if k in weights and weights[k].shape != mine[k].shape]
    if missing or extra or wrong:
        what = "; ".join(f"{label} {keys[0]}{f' (+{len(keys) - 1})' if len(keys) > 1 else ''}"
                         for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({what}); "
                              f"written by lacbed-refine {state.get('version', '?')}, this is {__version__}")
    model.generator.load_state_dict(weights)
    cls = ForwardSurrogate if state["kind"] == "forward" else InverseSurrogate
    info = {"path": str(path), "step": state.get("step"), "card": state.get("card"), "version": state.get("version")}
    return cls(model.generator, model.task, arch=state["arch"], info=info).to(device).requires_grad_(False)


def load_pretrained(direction: str = "forward", *, device="cpu") -> ForwardSurrogate | InverseSurrogate:
    """The surrogate shipped with the package (offline, ``weights_only=True``).

    Parameters
    ----------
    direction : {"forward", "inverse"}

    Raises
    ------
    FileNotFoundError
        When no weights are shipped, with the commands that make them.
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
    path = WEIGHTS_DIR / f"{direction}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped {direction} surrogate weights ({path} is missing). Train one with "
            f"`lacbed-refine train {direction} --data data.h5 -o {direction}.pt` and pass it with --model "
            f"{direction}.pt, or ship it with lacbed_refine.surrogate.export_weights('{direction}.pt', "
            f"'{path}', report='REPORT_DIR/report.json')"
        )
    return load_surrogate(path, device=device)




def file_sha256(path, *, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_card(path) -> dict:
    """Read the card of a weights file (``X.pt`` → ``X.card.json``), or a card path itself."""
    path = Path(path)
    card = path if path.name.endswith(".card.json") else path.with_suffix(".card.json")
    try:
        return json.loads(card.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{card}: no model card") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card}: not a JSON model card ({exc})") from None




