"""Tests for lacbed_refine.structure.parameters: allowed directions and the differentiable θ → atoms map."""

import math

import numpy as np
import pytest
import torch

from lacbed_refine.structure.crystal import Crystal, Site
from lacbed_refine.structure.parameters import FreeParameters, allowed_directions, free_parameters

SQ2, SQ3 = math.sqrt(2.0), math.sqrt(3.0)


def spinel() -> Crystal:
    """MgAl2O4, Fd-3m origin choice 2: Mg 8a, Al 16d, O 32e (x,x,x)."""
    sites = (
        Site("Mg1", "Mg", (0.125, 0.125, 0.125), b_iso=0.4),
        Site("Al1", "Al", (0.5, 0.5, 0.5), b_iso=0.35),
        Site("O1", "O", (0.2624, 0.2624, 0.2624), b_iso=0.6),
    )
    return Crystal(name="MgAl2O4", a=8.08, hall="-F 4vw 2vw 3", sites=sites)


def garnet() -> Crystal:
    """Y3Al5O12 (YAG), Ia-3d: Y 24c, Al 16a, Al 24d, O 96h (general)."""
    sites = (
        Site("Y1", "Y", (0.125, 0.0, 0.25)),
        Site("Al1", "Al", (0.0, 0.0, 0.0)),
        Site("Al2", "Al", (0.375, 0.0, 0.25)),
        Site("O1", "O", (0.9720, 0.0533, 0.1501)),
    )
    return Crystal(name="Y3Al5O12", a=12.00, hall="-I 4bd 2c 3", sites=sites)


def pyrochlore() -> Crystal:
    """Gd2Ti2O7, Fd-3m origin choice 2: Gd 16d, Ti 16c, O 48f (x,1/8,1/8), O' 8b."""
    sites = (
        Site("Gd1", "Gd", (0.5, 0.5, 0.5)),
        Site("Ti1", "Ti", (0.0, 0.0, 0.0)),
        Site("O1", "O", (0.3247, 0.125, 0.125)),
        Site("O2", "O", (0.375, 0.375, 0.375)),
    )
    return Crystal(name="Gd2Ti2O7", a=10.18, hall="-F 4vw 2vw 3", sites=sites)


def rocksalt_extra() -> Crystal:
    """Fm-3m with a general position (192l) and an x,x,z position (96k)."""
    sites = (
        Site("Na1", "Na", (0.0, 0.0, 0.0)),
        Site("X1", "O", (0.11, 0.23, 0.37), occupancy=0.1),
        Site("X2", "O", (0.19, 0.19, 0.07), occupancy=0.2),
    )
    return Crystal(name="test", a=5.64, hall="-F 4 2 3", sites=sites)


def mixed_spinel() -> Crystal:
    """Spinel with Mg/Fe sharing the tetrahedral site."""
    sites = (
        Site("Mg1", "Mg", (0.125, 0.125, 0.125), occupancy=0.7),
        Site("Fe1", "Fe", (0.125, 0.125, 0.125), occupancy=0.3),
        Site("Al1", "Al", (0.5, 0.5, 0.5)),
        Site("O1", "O", (0.2624, 0.2624, 0.2624)),
    )
    return Crystal(name="mixed", a=8.1, hall="-F 4vw 2vw 3", sites=sites)


def index(crystal, label):
    return [s.label for s in crystal.sites].index(label)


# -- allowed directions -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "label", "expected"),
    [
        (spinel, "O1", [[1 / SQ3, 1 / SQ3, 1 / SQ3]]),
        (spinel, "Mg1", []),
        (spinel, "Al1", []),
        (garnet, "O1", np.eye(3)),
        (garnet, "Y1", []),
        (garnet, "Al1", []),
        (garnet, "Al2", []),
        (pyrochlore, "O1", [[1.0, 0.0, 0.0]]),
        (pyrochlore, "O2", []),
        (pyrochlore, "Gd1", []),
        (rocksalt_extra, "X1", np.eye(3)),
        (rocksalt_extra, "X2", [[1 / SQ2, 1 / SQ2, 0.0], [0.0, 0.0, 1.0]]),
    ],
)
def test_allowed_directions(make, label, expected):
    crystal = make()
    got = allowed_directions(crystal, index(crystal, label))
    np.testing.assert_allclose(got, np.asarray(expected, dtype=float).reshape(-1, 3), atol=1e-12)


def test_multiplicities_of_test_structures():
    assert [o.multiplicity for o in spinel().orbits()] == [8, 16, 32]
    assert [o.multiplicity for o in garnet().orbits()] == [24, 16, 24, 96]
    assert [o.multiplicity for o in pyrochlore().orbits()] == [16, 16, 48, 8]
    assert [o.multiplicity for o in rocksalt_extra().orbits()] == [4, 192, 96]


def test_directions_satisfy_site_symmetry():
    for crystal in (spinel(), garnet(), pyrochlore(), rocksalt_extra()):
        for i in range(len(crystal.sites)):
            rot, _ = crystal.site_symmetry(i)
            dirs = allowed_directions(crystal, i)
            for d in dirs:
                moved = np.einsum("sij,j->si", rot, d)
                np.testing.assert_allclose(moved, np.broadcast_to(d, moved.shape), atol=1e-12)
            np.testing.assert_allclose(dirs @ dirs.T, np.eye(len(dirs)), atol=1e-12)
            # the fixed space has no more dimensions than those found
            proj = np.mean(rot, axis=0)
            assert np.linalg.matrix_rank(proj, tol=1e-9) == len(dirs)


# -- symmetry is preserved by displacements ---------------------------------------------------
def _orbit_is_invariant(positions: np.ndarray, crystal: Crystal) -> bool:
    rot, tra = crystal.operations()
    for r, t in zip(rot, tra):
        image = positions @ r.T + t
        d = image[:, None, :] - positions[None, :, :]
        close = np.all(np.abs(d - np.rint(d)) < 1e-9, axis=-1)
        if not np.all(close.sum(axis=1) == 1):
            return False
    return True


@pytest.mark.parametrize("make", [spinel, garnet, pyrochlore, rocksalt_extra])
def test_displacements_keep_space_group_symmetry(make):
    crystal = make()
    params = free_parameters(crystal)
    rng = np.random.default_rng(0)
    theta = params.initial()
    xyz = [k == "xyz" for k in params.kinds]
    theta[xyz] = torch.as_tensor(rng.uniform(params.lower[xyz], params.upper[xyz]))
    moved = params.to_crystal(theta)
    atoms = params.atoms(theta)
    for i, (orb0, orb1) in enumerate(zip(crystal.orbits(), moved.orbits())):
        assert orb1.multiplicity == orb0.multiplicity
        pos = atoms.frac[atoms.site == i].numpy()
        assert len(pos) == orb0.multiplicity
        assert _orbit_is_invariant(pos, crystal)
        # atoms(θ) and the regenerated crystal agree
        ref = moved.atoms()
        np.testing.assert_allclose(np.mod(pos, 1.0), ref.frac[ref.site == i], atol=1e-12)
    moved_any = [i for i in range(len(crystal.sites)) if len(params.directions[i])]
    assert any(moved.sites[i].frac != crystal.sites[i].frac for i in moved_any)


def test_displacement_units_are_angstrom():
    crystal = spinel()
    params = free_parameters(crystal, refine=("xyz",))
    assert params.names == ("O1.dx0",)
    theta = torch.tensor([0.1], dtype=torch.float64)
    moved = params.to_crystal(theta)
    shift = (np.asarray(moved.sites[2].frac) - np.asarray(crystal.sites[2].frac)) * crystal.a
    np.testing.assert_allclose(shift, 0.1 / SQ3 * np.ones(3), atol=1e-12)
    assert np.linalg.norm(shift) == pytest.approx(0.1)


# -- the parameter vector ---------------------------------------------------------------------
def test_names_kinds_bounds_and_initial():
    crystal = spinel()
    params = free_parameters(crystal)
    assert isinstance(params, FreeParameters)
    assert params.names == ("Mg1.B", "Mg1.occ", "Al1.B", "Al1.occ", "O1.dx0", "O1.B", "O1.occ")
    assert params.kinds == ("b", "occ", "b", "occ", "xyz", "b", "occ")
    assert params.site_of == (0, 0, 1, 1, 2, 2, 2)
    assert len(params) == 7
    np.testing.assert_array_equal(params.lower, [0, 0, 0, 0, -0.5, 0, 0])
    np.testing.assert_array_equal(params.upper, [10, 1, 10, 1, 0.5, 10, 1])
    theta0 = params.initial()
    assert theta0.dtype == torch.float64
    expected = torch.tensor([0.4, 1.0, 0.35, 1.0, 0.0, 0.6, 1.0], dtype=torch.float64)
    torch.testing.assert_close(theta0, expected)
    assert params.initial(dtype=torch.float32).dtype == torch.float32


def test_initial_reproduces_crystal_atoms():
    for make in (spinel, garnet, pyrochlore, rocksalt_extra, mixed_spinel):
        crystal = make()
        params = free_parameters(crystal)
        got = params.atoms(params.initial())
        ref = crystal.atoms()
        np.testing.assert_allclose(np.mod(got.frac.numpy(), 1.0), ref.frac, atol=1e-12)
        assert got.Z.dtype == torch.long
        np.testing.assert_array_equal(got.Z.numpy(), ref.Z)
        np.testing.assert_allclose(got.occupancy.numpy(), ref.occupancy)
        np.testing.assert_allclose(got.b_iso.numpy(), ref.b_iso)
        assert params.to_crystal(params.initial()).sites == crystal.sites


def test_refine_and_fix_options():
    crystal = garnet()
    params = free_parameters(crystal, refine=("xyz",), fix=("Y1",))
    assert params.names == ("O1.dx0", "O1.dx1", "O1.dx2")
    np.testing.assert_allclose(params.upper, 0.5)
    params = free_parameters(crystal, refine="b", fix=("O1", "Al2"))
    assert params.names == ("Y1.B", "Al1.B")
    b = params.atoms(torch.tensor([1.0, 2.0], dtype=torch.float64)).b_iso.numpy()
    mult = [o.multiplicity for o in crystal.orbits()]
    np.testing.assert_allclose(b[: mult[0]], 1.0)
    np.testing.assert_allclose(b[mult[0] : mult[0] + mult[1]], 2.0)
    np.testing.assert_allclose(b[mult[0] + mult[1] :], 0.5)  # fixed: the crystal's own B


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"refine": ("xyz", "adp")}, "unknown \\['adp'\\]"), ({"fix": ("Zz1",)}, "unknown site label")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        free_parameters(spinel(), **kwargs)


def test_theta_shape_checked():
    params = free_parameters(spinel())
    with pytest.raises(ValueError, match=r"theta must have shape \(7,\)"):
        params.atoms(torch.zeros(3, dtype=torch.float64))


def test_to_crystal_checks_bounds():
    crystal = pyrochlore()
    params = free_parameters(crystal, refine=("xyz", "occ"))
    theta = params.initial()
    theta[params.names.index("O1.dx0")] = params.upper[params.names.index("O1.dx0")]
    moved = params.to_crystal(theta)
    assert all(0.0 <= x < 1.0 for s in moved.sites for x in s.frac)
    theta[params.names.index("Gd1.occ")] = 1.2
    with pytest.raises(ValueError, match="occupancy of site 'Gd1'"):
        params.to_crystal(theta)


def test_to_crystal_wraps_negative_coordinates():
    sites = (Site("O1", "O", (0.01, 0.2, 0.3)),)
    crystal = Crystal(name="p", a=4.0, hall="P 2ac 2ab 3", sites=sites)  # P 21 3, general position
    params = free_parameters(crystal, refine=("xyz",))
    moved = params.to_crystal(torch.tensor([-0.2, 0.0, 0.0], dtype=torch.float64))
    assert moved.sites[0].frac[0] == pytest.approx(0.96)


def test_shared_position_sites_are_tied_and_grouped():
    crystal = mixed_spinel()
    params = free_parameters(crystal)
    assert params.occupancy_groups() == [[0, 1]]
    assert params.names == (
        "Mg1.B", "Mg1.occ", "Fe1.occ", "Al1.B", "Al1.occ", "O1.dx0", "O1.B", "O1.occ"
    )
    assert params.targets[0] == (0, 1)
    theta = params.initial()
    theta[0] = 0.9
    b = params.atoms(theta).b_iso
    site = params.atoms(theta).site
    assert torch.all(b[site <= 1] == 0.9)
    untied = free_parameters(crystal, tie_shared=False)
    assert "Fe1.B" in untied.names
    assert untied.occupancy_groups() == [[0, 1]]


def test_fixing_one_site_of_a_tied_group_fixes_its_shared_parameters():
    params = free_parameters(mixed_spinel(), fix=("Fe1",))
    assert "Mg1.B" not in params.names
    assert "Mg1.occ" in params.names and "Fe1.occ" not in params.names


# -- differentiability ------------------------------------------------------------------------
def _kinematic_sum(params, g):
    def f(theta):
        atoms = params.atoms(theta)
        phase = 2 * math.pi * atoms.frac @ g.T  # (N, G)
        s2 = (g * g).sum(dim=1) / params.crystal.a**2 / 4
        dw = torch.exp(-atoms.b_iso[:, None] * s2)
        return (atoms.occupancy[:, None] * dw * torch.cos(phase)).sum(dim=0)

    return f


@pytest.mark.parametrize("make", [spinel, garnet, mixed_spinel])
def test_gradcheck(make):
    params = free_parameters(make())
    hkl = [[1, 1, 1], [2, 2, 2], [3, 1, 1], [4, 4, 0], [5, 3, 1]]
    g = torch.tensor(hkl, dtype=torch.float64)
    theta = params.initial().clone()
    xyz = torch.tensor([k == "xyz" for k in params.kinds])
    theta[xyz] = 0.03
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(_kinematic_sum(params, g), (theta,), eps=1e-6, atol=1e-6)


def test_gradient_of_displacement_is_nonzero():
    params = free_parameters(spinel(), refine=("xyz",))
    theta = params.initial().requires_grad_(True)
    g = torch.tensor([[2.0, 2.0, 2.0]], dtype=torch.float64)  # 222: sensitive to the O x parameter
    _kinematic_sum(params, g)(theta).sum().backward()
    assert theta.grad.abs().item() > 1e-3
