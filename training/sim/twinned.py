"""Multiply twinned Pt particles (decahedra, icosahedra) for the training world.

Why: the paper's world holds single-crystal fcc particles only (PtNp1-4, Sec. 5.1). Small Pt particles
are often five-fold twinned, and a user who builds a specimen with ``ase.cluster`` gets them in one line.
Engines trained on fcc particles alone were no better than a blur on such particles
(benchmarks/user_abtem.py: particle margin +0.1 to +2 dB at the paper's optics and below the blur
without vibration, against +5 to +7 dB on octahedra). This module turns a structure's seeded parameters
into the atom positions of a decahedron or icosahedron of the class's size, in one of the orientations
a microscopist meets (a five-, three- or two-fold axis along the beam, or the decahedron's axis lying
along the support), flattened where it wets the support.
"""

from __future__ import annotations

import math

import numpy as np

A_PT = 3.924
"""Pt lattice constant (A), as ``structures.A_PT`` (structures imports this module, so not imported back;
tests/unit/test_sim_twinned.py checks the two agree)."""
D_NN = A_PT / math.sqrt(2)
"""Pt nearest-neighbour distance (A)."""

_ICO_FIVE_FOLD = np.array([0.0, 0.526, 0.851]) / np.linalg.norm([0.0, 0.526, 0.851])
"""A vertex direction of ``ase.cluster.Icosahedron`` (its cartesian axes are two-fold axes)."""
_ICO_THREE_FOLD = np.ones(3) / math.sqrt(3)

DECAHEDRON_VIEWS = ("five-fold", "side")
ICOSAHEDRON_VIEWS = ("five-fold", "three-fold", "two-fold")


def _to_z(axis: np.ndarray) -> np.ndarray:
    """Rotation matrix (acting on column vectors) that takes the unit vector ``axis`` onto +z."""
    a = axis / np.linalg.norm(axis)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(a, z)
    c = float(a @ z)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def _about(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (rad) about cartesian axis 0, 1 or 2."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def twinned_positions(shape: str, radius_A: float, seed: int) -> tuple[np.ndarray, dict[str, object]]:
    """Centred positions (x along the support, y up, z along the beam) of a decahedron or icosahedron of
    about ``radius_A``, in a seeded orientation; and what was drawn (for the model's description)."""
    from ase.cluster import Decahedron, Icosahedron

    rng = np.random.default_rng([seed, 23])
    if shape == "icosahedron":
        shells = max(2, round(radius_A / D_NN) + 1)  # centre-to-vertex (shells - 1) nearest neighbours
        pos = Icosahedron("Pt", noshells=shells, latticeconstant=A_PT).get_positions()
        view = str(rng.choice(ICOSAHEDRON_VIEWS, p=[0.5, 0.25, 0.25]))
        axis = {"five-fold": _ICO_FIVE_FOLD, "three-fold": _ICO_THREE_FOLD, "two-fold": np.eye(3)[2]}[view]
        rot = _to_z(axis)
        info: dict[str, object] = {"shells": shells}
    elif shape == "decahedron":
        p = max(2, round(2 * radius_A / (2 * D_NN * 0.82)) + 1)  # in-plane diameter ~ 4.57 A (p - 1)
        marks = int(rng.integers(0, 2)) if p >= 4 else 0  # a Marks re-entrance widens it by one step
        p -= marks
        q = int(rng.integers(1, 4))  # length along the five-fold axis
        pos = Decahedron("Pt", p=p, q=q, r=marks, latticeconstant=A_PT).get_positions()  # axis along z
        view = str(rng.choice(DECAHEDRON_VIEWS, p=[0.6, 0.4]))
        # side view: the five-fold axis along x, lying on the support, turned about that axis
        rot = (
            np.eye(3) if view == "five-fold" else _about(0, rng.uniform(0, 2 * np.pi)) @ _about(1, np.pi / 2)
        )
        info = {"p": p, "q": q, "r": marks}
    else:
        raise ValueError(f"unknown twinned particle shape {shape!r}")
    pos = pos - pos.mean(0)
    turn = rng.uniform(0, 2 * np.pi)
    pos = pos @ (_about(2, turn) @ rot).T
    return pos, info | {"shape": shape, "view": view, "turn_deg": round(math.degrees(turn), 2)}


def twinned_particle(
    shape: str, radius_A: float, seed: int, base_ratio: float, x_A: float, y_base: float
) -> tuple[np.ndarray, dict[str, object]]:
    """The particle on the support: atoms below a wetting plane removed (``base_ratio`` 0.45-0.7 of the
    fcc classes maps to cutting 0-0.25 of the height), bottom at ``y_base``, centred at ``x_A``, and
    entering at z = 1 A (the beam-entrance side, as the fcc particles)."""
    pos, info = twinned_positions(shape, radius_A, seed)
    height = float(np.ptp(pos[:, 1]))
    cut = pos[:, 1].min() + (0.7 - base_ratio) * height  # base_ratio 0.7: no cut; 0.45: a quarter
    pos = pos[pos[:, 1] >= cut - 1e-6]
    pos[:, 1] += y_base - pos[:, 1].min()
    pos[:, 0] += x_A - 0.5 * (pos[:, 0].min() + pos[:, 0].max())
    pos[:, 2] += 1.0 - pos[:, 2].min()
    return pos, info
