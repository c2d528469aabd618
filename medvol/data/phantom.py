"""Procedural chest-CT phantoms in Hounsfield units: a population with known factors.

The phantom is the embedded default data: every CPU demo, test and study learns from it. It is a
*population*: each volume is rendered from factors drawn from documented distributions
(:func:`draw_factors`, the table in docs/data.md), recorded with the volume (:attr:`Phantom.factors`,
the ``phantom_NNNN.factors.json`` sidecar of :func:`write_phantoms`) and measurable back from the
voxels (:mod:`medvol.data.phantom_factors`), so a generated set can be scored against ground truth.

One phantom is an (S, S, S) = (z, y, x) volume in LPS orientation (z inferior -> superior, y
anterior -> posterior, x right -> left) with a 380 mm in-plane field of view and 340 mm along z, so
its voxels are anisotropic like a real chest CT. Painted in anatomical order with partial-volume
(soft) edges:

- scanner padding (-2048) outside the reconstruction circle, air (-1000) and the couch;
- the body (habitus: size, depth, fat): skin, subcutaneous fat (-100), a muscle wall (+45);
- the thoracic cavity: mediastinum, two lungs (-850 with a posterior gravity gradient) with apices
  and a diaphragm dome each (the right dome higher), branching pulmonary vessels (+40) that thin
  towards the periphery, a branching airway tree from the trachea, the heart (myocardium around a
  blood pool, pericardial fat) resting on the diaphragm, the aorta; under the domes the liver
  (right) and the upper abdomen (left);
- bone (300-1000): vertebrae (cortical shell, cancellous core, discs, canal, posterior arch), twelve
  pairs of ribs sloping down anteriorly, the sternum;
- optionally 1-3 lobulated solid nodules (10..45 HU), returned as a mask;
- acquisition: slice thickness (a Gaussian blur along z) and correlated noise.

Discrete factors with several modes: the body habitus class (slim / average / broad) and the
lung asymmetry class (none / a small left lung / a small right lung, with the heart and mediastinum
pulled towards the small side); their pair is the volume's *mode*.

A seed gives the same volume, and the same factors at every size; rendering is vectorised numpy
(about 0.2 s for a 64^3 volume on one core, docs/data.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvol.data.io import Volume, write_volume
from medvol.errors import MedvolError

FOV_XY_MM = 380.0
FOV_Z_MM = 340.0
PADDING_HU = -2048.0

#: Tissue labels of :func:`render_phantom`'s label map.
TISSUES = {
    "outside": 0, "air": 1, "couch": 2, "skin": 3, "fat": 4, "muscle": 5, "mediastinum": 6,
    "lung": 7, "vessel": 8, "airway": 9, "heart": 10, "blood": 11, "liver": 12, "bone": 13,
    "disc": 14, "canal": 15, "nodule": 16, "abdomen": 17,
}
#: Class names of :func:`phantom_labels`' label map: label i is ``MASK_LABELS[i - 1]``.
MASK_LABELS = ("lungs", "nodules")
#: Tissues that count as lung in the label map when they lie in the lung region: the parenchyma and
#: what runs through it (a lung segmentation includes its vessels and small airways).
_LUNG_TISSUES = ("lung", "vessel", "airway")

#: Body habitus classes: probability, half-width of the body at mid-thorax (mm, uniform range),
#: subcutaneous fat (mm, uniform range). The width ranges do not overlap, so the class is
#: measurable from the body width (:mod:`medvol.data.phantom_factors`).
HABITUS = {
    "slim": (0.30, (118.0, 132.0), (5.0, 10.0)),
    "average": (0.45, (141.0, 155.0), (10.0, 18.0)),
    "broad": (0.25, (164.0, 176.0), (18.0, 28.0)),
}
#: Lung asymmetry classes: probability, side of the small lung (x sign: -1 right, +1 left, 0 none).
#: A small lung has 50-65 % of its lateral extent and its dome 25-45 mm higher; the heart and the
#: mediastinum shift 8-18 mm towards it (volume loss pulls them over).
ASYMMETRY = {"none": (0.60, 0), "left_small": (0.20, 1), "right_small": (0.20, -1)}
#: Every mode (habitus, asymmetry) as ``"habitus/asymmetry"``.
MODES = tuple(f"{h}/{a}" for h in HABITUS for a in ASYMMETRY)
#: Continuous factors recorded for every volume and measured back (units in the names).
CONTINUOUS_FACTORS = ("body_width_mm", "body_depth_mm", "lung_ml", "lung_ratio", "heart_x_mm",
                      "heart_y_mm", "heart_z_mm", "nodule_count", "noise_hu", "slice_mm")
#: Discrete factors.
DISCRETE_FACTORS = ("habitus", "asymmetry", "mode")


@dataclasses.dataclass
class Phantom:
    """The rendered phantom.

    Attributes:
        hu: float32 (S, S, S) in HU.
        tissues: uint8 (S, S, S) tissue labels (:data:`TISSUES`), the last tissue painted with at
            least half a voxel of coverage.
        mask: uint8 (S, S, S) nodule mask, or None without nodules.
        spacing: (z, y, x) mm.
        origin: physical (x, y, z) LPS of voxel 0.
        lung_region: bool (S, S, S), the voxels at least half covered by the lungs' outline (which
            the trachea and main bronchi lie outside of).
        factors: the volume's factors (:func:`draw_factors`'s draw, plus the ground truth of every
            measurable factor: :data:`CONTINUOUS_FACTORS`, :data:`DISCRETE_FACTORS`).
    """

    hu: np.ndarray
    tissues: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lung_region: np.ndarray | None = None
    factors: dict | None = None


def _seed_rng(seed: int | Sequence[int], stream: int = 0) -> np.random.Generator:
    """The generator of one random stream of a seed (0 factors, 1 geometry detail, 2 noise)."""
    if isinstance(seed, (bool, float)) or (np.ndim(seed) == 0 and int(seed) < 0):
        raise MedvolError(f"invalid phantom seed {seed!r} (--seed): expected a non-negative integer")
    words = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
    if any(w < 0 for w in words):
        raise MedvolError(f"invalid phantom seed {seed!r} (--seed): expected non-negative integers")
    return np.random.default_rng(words + [0x9E37, stream])


def draw_factors(seed: int | Sequence[int] = 0, nodules: bool = False) -> dict[str, Any]:
    """The factors of the phantom with this seed (independent of the rendering size).

    Distributions (mm unless named; U = uniform):

    - ``habitus`` from :data:`HABITUS` (slim 0.30, average 0.45, broad 0.25): body half-width
      ``body_a`` U(118, 132) / U(141, 155) / U(164, 176), fat U(5, 10) / U(10, 18) / U(18, 28);
      depth ``body_b = body_a`` x U(0.66, 0.78); centre x U(-8, 8), y U(-12, 4); widening towards
      the shoulders U(0, 0.08).
    - ``asymmetry`` from :data:`ASYMMETRY` (none 0.60, left_small 0.20, right_small 0.20).
    - lungs: apex z U(105, 130); apex-to-right-dome height U(175, 215); left dome U(5, 20) below
      the right; dome depth (centre to rim) U(35, 55).
    - heart: size scale U(0.85, 1.2) of (52, 42, 48) half-axes; x offset U(15, 30) to the left of
      the midline, y U(0.15, 0.3) of the cavity depth in front of its centre, resting on the domes.
    - nodules: with ``nodules`` 1-3 (equally likely), each radius U(5, 14), else none.
    - acquisition: effective noise std ``noise_hu`` U(6, 24); slice thickness ``slice_mm`` (FWHM
      of the z blur) U(0.5, 10).

    Returns:
        A JSON-able dict of the drawn parameters (the measurable ground truth is added by
        :func:`render_phantom`, which also knows the voxel grid).
    """
    rng = _seed_rng(seed, 0)
    u = rng.uniform

    def choose(table: dict) -> str:
        names = list(table)
        return names[int(rng.choice(len(names), p=[table[n][0] for n in names]))]

    habitus = choose(HABITUS)
    asymmetry = choose(ASYMMETRY)
    _, width, fat = HABITUS[habitus]
    body_a = u(*width)
    f = {
        "habitus": habitus, "asymmetry": asymmetry, "mode": f"{habitus}/{asymmetry}",
        "body_a": body_a, "body_b": body_a * u(0.66, 0.78), "body_cx": u(-8, 8), "body_cy": u(-12, 4),
        "fat_mm": u(*fat), "muscle_mm": u(10, 16), "taper": u(0.0, 0.08),
        "apex_z": u(105, 130), "lung_height": u(175, 215), "left_dome_drop": u(5, 20),
        "dome_depth": u(35, 55), "small_lung_scale": u(0.50, 0.65), "small_dome_raise": u(25, 45),
        "shift_mm": u(8, 18), "heart_scale": u(0.85, 1.2), "heart_dx": u(15, 30), "heart_dy": u(0.15, 0.3),
        "heart_sit": u(0.45, 0.6), "noise_hu": u(6, 24), "slice_mm": u(0.5, 10.0),
        "hu_jitter": {k: u(-8, 8) for k in ("fat", "muscle", "lung", "blood", "liver", "bone")},
    }
    count = int(rng.integers(1, 4)) if nodules else 0
    f["nodules"] = [{"side": int(rng.integers(2)), "where": [float(v) for v in u(-0.6, 0.6, size=3)],
                     "radius_mm": u(5.0, 14.0), "hu": u(10.0, 45.0)} for _ in range(count)]
    return f


class _Canvas:
    """An HU volume with mm coordinates, painted layer by layer with soft edges."""

    def __init__(self, size: int):
        self.size = size
        self.spacing = (FOV_Z_MM / size, FOV_XY_MM / size, FOV_XY_MM / size)
        # Voxel-centre coordinates in mm, centred on the volume (x left+, y posterior+, z superior+).
        self.z = ((np.arange(size) + 0.5) * self.spacing[0] - FOV_Z_MM / 2).astype(np.float32)
        self.y = ((np.arange(size) + 0.5) * self.spacing[1] - FOV_XY_MM / 2).astype(np.float32)
        self.x = ((np.arange(size) + 0.5) * self.spacing[2] - FOV_XY_MM / 2).astype(np.float32)
        self.Z = self.z[:, None, None]
        self.Y = self.y[None, :, None]
        self.X = self.x[None, None, :]
        self.hu = np.full((size,) * 3, -1000.0, dtype=np.float32)
        self.tissues = np.full((size,) * 3, TISSUES["air"], dtype=np.uint8)
        # Soft edges span about one voxel (the coarsest axis), like partial-volume blur.
        self.edge = float(max(self.spacing))

    def alpha(self, signed_distance: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] from a signed distance in mm (negative inside)."""
        return np.clip(0.5 - signed_distance / self.edge, 0.0, 1.0)

    def paint(self, alpha: np.ndarray, value, tissue: str, region=np.s_[...]) -> None:
        """Blend ``value`` (scalar or array) into ``region`` with coverage ``alpha``."""
        hu = self.hu[region]  # a view: basic slicing only
        alpha = np.broadcast_to(alpha, hu.shape)
        hu += alpha * (np.asarray(value, dtype=np.float32) - hu)
        np.copyto(self.tissues[region], np.uint8(TISSUES[tissue]), where=alpha >= 0.5)

    def paint_ellipsoid(self, center, axes, value, tissue: str, within=None) -> None:
        """Paint an ellipsoid (center/axes in mm, x, y, z), only over its bounding box.

        Args:
            within: optional coverage broadcastable to (S, S, S) multiplying the ellipsoid's.
        """
        center, axes = np.asarray(center, dtype=np.float64), np.asarray(axes, dtype=np.float64)
        region = self.box(center - axes - self.edge, center + axes + self.edge)
        if any(s.stop <= s.start for s in region):
            return
        z, y, x = (self.z[region[0]][:, None, None], self.y[region[1]][None, :, None],
                   self.x[region[2]][None, None, :])
        rho = np.sqrt(((x - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2
                      + ((z - center[2]) / axes[2]) ** 2)
        alpha = self.alpha((rho - 1.0) * axes.min())
        if within is not None:
            alpha = alpha * np.broadcast_to(within, self.hu.shape)[region]
        self.paint(alpha, value, tissue, region)

    def box(self, low: np.ndarray, high: np.ndarray):
        """Index slices (z, y, x) of voxels whose centres lie in the mm box [low, high] (x,y,z)."""
        bounds = []
        for axis, coords in ((2, self.z), (1, self.y), (0, self.x)):
            start = int(np.searchsorted(coords, low[axis], side="left"))
            stop = int(np.searchsorted(coords, high[axis], side="right"))
            bounds.append(slice(start, max(start, stop)))
        return tuple(bounds)

    def grid(self, region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid coordinates (Z, Y, X) in mm of the voxels in ``region`` (z, y, x slices)."""
        return (self.z[region[0]][:, None, None], self.y[region[1]][None, :, None],
                self.x[region[2]][None, None, :])

    def paint_tubes(self, segments: list[tuple], value: float, tissue: str, radius_scale: float = 1.0,
                    mask: np.ndarray | None = None, extra: float = 0.0) -> None:
        """Paint capsules (segments with a radius): ``(p0, p1, radius)`` with p in mm (x, y, z).

        Args:
            radius_scale, extra: the painted radius is ``radius * radius_scale + extra`` (walls).
            mask: optional float coverage (S, S, S) limiting where paint lands (e.g. inside lungs).
        """
        for p0, p1, radius in segments:
            r = radius * radius_scale + extra
            if r < 0.2 * self.edge:
                continue  # far below a voxel: would change no voxel by more than a few HU
            low = np.minimum(p0, p1) - r - self.edge
            high = np.maximum(p0, p1) + r + self.edge
            region = self.box(low, high)
            if any(s.stop <= s.start for s in region):
                continue
            zz = self.z[region[0]][:, None, None]
            yy = self.y[region[1]][None, :, None]
            xx = self.x[region[2]][None, None, :]
            axis = p1 - p0
            length2 = float(axis @ axis) or 1e-6
            t = ((xx - p0[0]) * axis[0] + (yy - p0[1]) * axis[1] + (zz - p0[2]) * axis[2]) / length2
            t = np.clip(t, 0.0, 1.0)
            dist = np.sqrt((xx - p0[0] - t * axis[0]) ** 2 + (yy - p0[1] - t * axis[1]) ** 2
                           + (zz - p0[2] - t * axis[2]) ** 2)
            # The soft edge spreads a thin tube over its neighbours: scale it so that its
            # cross-section holds pi r^2 of tissue, as a real partial-volume average would.
            e = self.edge
            spread = 3.0 * e * r * r / (r + e / 2) ** 3 if r < e / 2 else r * r / (r * r + e * e / 12)
            alpha = self.alpha(dist - r) * np.float32(spread)
            if mask is not None:
                alpha = alpha * mask[region]
            self.paint(alpha, value, tissue, region)


def _ellipsoid_sd(grid, center, axes, power: float = 2.0) -> np.ndarray:
    """Approximate signed distance (mm) to a (super)ellipsoid.

    Args:
        grid: open-grid coordinates (X, Y, Z) in mm; center/axes in (x, y, z) mm.
    """
    X, Y, Z = grid
    rho = (np.abs((X - center[0]) / axes[0]) ** power
           + np.abs((Y - center[1]) / axes[1]) ** power
           + np.abs((Z - center[2]) / axes[2]) ** power) ** (1.0 / power)
    return (rho - 1.0) * min(axes)


def _ellipse_rho(canvas: _Canvas, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised elliptical radius in-plane, (1, H, W)."""
    return np.sqrt(((canvas.X - cx) / ax) ** 2 + ((canvas.Y - cy) / ay) ** 2)


def _cross(a, b) -> np.ndarray:
    # np.cross costs ~100 us per call on 3-vectors; trees need thousands of them.
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return (vector * np.cos(angle) + _cross(axis, vector) * np.sin(angle)
            + axis * (axis @ vector) * (1 - np.cos(angle)))


def _tree(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float, radius: float,
          depth: int, inside, shrink=(0.78, 0.72)) -> list[tuple]:
    """A random bifurcating tree of capsules, pruned where a branch would leave ``inside``."""
    segments: list[tuple] = []
    stack = [(start, direction / np.linalg.norm(direction), length, radius, depth)]
    while stack:
        p0, d, length, radius, level = stack.pop()
        p1 = p0 + d * length
        if not inside(p1):
            continue
        segments.append((p0, p1, radius))
        if level == 0:
            continue
        # Children split around a random axis perpendicular to the parent, at 20-45 degrees each.
        perp = _cross(d, rng.normal(size=3))
        perp /= np.linalg.norm(perp) + 1e-9
        for sign in (-1.0, 1.0):
            angle = sign * rng.uniform(0.35, 0.8)
            child = _rotate(d, perp, angle) + rng.normal(scale=0.1, size=3)
            child /= np.linalg.norm(child)
            stack.append((p1, child, length * shrink[0] * rng.uniform(0.85, 1.15),
                          max(radius * shrink[1], 0.6), level - 1))
    return segments


def _z_kernel(slice_mm: float, spacing_z: float) -> np.ndarray:
    """The normalised z blur of a slice thickness (FWHM, mm) on a grid of ``spacing_z`` mm."""
    sigma = slice_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing_z  # in voxels
    if sigma < 1e-3:
        return np.ones(1)
    half = max(1, int(math.ceil(4.0 * sigma)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_z(array: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``array`` convolved with ``kernel`` along axis 0, edges replicated."""
    if kernel.size == 1:
        return array
    half = kernel.size // 2
    padded = np.pad(array, ((half, half), (0, 0), (0, 0)), mode="edge")
    out = np.zeros_like(array)
    for i, weight in enumerate(kernel.astype(np.float32)):
        out += weight * padded[i:i + array.shape[0]]
    return out


class _Lungs:
    """The two lungs' outlines as signed distances (mm, negative inside), from the factors."""

    POWER = 2.4

    def __init__(self, f: dict, cav_a: float, cav_b: float, cav_cy: float, med_cx: float, med_half: float):
        small = ASYMMETRY[f["asymmetry"]][1]
        self.med_cx, self.med_half = med_cx, med_half
        self.sides = []
        cx = f["body_cx"]
        for side in (-1, 1):  # -1: patient right (x negative), +1: left
            medial = med_cx + side * med_half
            full = abs(cx + side * cav_a - medial) / 2.0  # half-width filling the hemithorax
            a = full * (f["small_lung_scale"] if side == small else 1.0)
            dome = f["apex_z"] - f["lung_height"] - (f["left_dome_drop"] if side == 1 else 0.0)
            if side == small:
                dome += f["small_dome_raise"]
            self.sides.append({
                "side": side, "a": a, "b": cav_b * 0.88, "full": full,
                "x": medial + side * a, "full_x": medial + side * full, "y": cav_cy + cav_b * 0.05,
                "apex": f["apex_z"], "dome": dome, "dome_depth": f["dome_depth"],
            })

    def diaphragm(self, s: dict, X, Y):
        """z (mm) of the diaphragm under lung ``s``: a dome, highest in front of the centre."""
        r2 = ((X - s["full_x"]) / s["full"]) ** 2 + ((Y - s["y"] + 0.15 * s["b"]) / s["b"]) ** 2
        return s["dome"] - s["dome_depth"] * r2

    def sd(self, s: dict, X, Y, Z):
        """Signed distance (approximate, mm) to lung ``s``: a superellipsoid whose upper half rounds
        into the apex, cut from below by the diaphragm dome."""
        h_up = 0.55 * (s["apex"] - s["dome"])
        z_mid = s["apex"] - h_up
        p = self.POWER
        dx = (X - s["x"]) / s["a"]
        # The medial face is flatter (power 4) than the lateral curve: a D-shaped cross-section.
        flat = np.abs(dx) ** np.where(dx * s["side"] < 0, 4.0, p)
        rho = (flat + np.abs((Y - s["y"]) / s["b"]) ** p
               + (np.maximum(Z - z_mid, 0.0) / h_up) ** p) ** (1.0 / p)
        return np.maximum((rho - 1.0) * min(s["a"], s["b"]), self.diaphragm(s, X, Y) - Z)

    def inside(self, point: np.ndarray, margin: float = 2.0) -> bool:
        if abs(point[0] - self.med_cx) <= self.med_half + 4:
            return False
        return any(float(self.sd(s, *point)) < -margin for s in self.sides)


def render_phantom(size: int = 64, seed: int | Sequence[int] = 0, nodules: bool = False) -> Phantom:
    """Render one phantom with its tissue labels and factors (see the module docstring).

    Args:
        size: cube edge S (16..1024).
        seed: an integer, or a sequence of integers (e.g. ``(dataset_seed, index)``).
        nodules: add 1-3 nodules and return their mask. A nodule smaller than a voxel is
            rendered one voxel edge in radius so that it shows (its drawn radius is recorded).

    Returns:
        A :class:`Phantom`.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise MedvolError(f"unsupported phantom size {size!r} (--size): expected an integer in 16..1024")
    f = draw_factors(seed, nodules)
    rng = _seed_rng(seed, 1)
    u = rng.uniform
    c = _Canvas(int(size))
    jitter = f["hu_jitter"]

    outside = np.sqrt(c.X ** 2 + c.Y ** 2) > FOV_XY_MM / 2  # the reconstruction circle
    cx, cy, body_a, body_b = f["body_cx"], f["body_cy"], f["body_a"], f["body_b"]
    skin, fat_t, muscle_t = 2.0, f["fat_mm"], f["muscle_mm"]
    scale_z = 1.0 + f["taper"] * c.Z / (FOV_Z_MM / 2)  # slightly wider towards the shoulders

    couch_y = cy + body_b + u(20, 32)
    couch = c.alpha(np.abs(c.Y - couch_y - 4.0 - 0.0008 * c.X ** 2) - 4.0)
    c.paint(np.broadcast_to(couch, c.hu.shape), 120.0, "couch")

    def body_layer(inset: float) -> np.ndarray:
        ax, ay = body_a * scale_z - inset, body_b * scale_z - inset
        rho = _ellipse_rho(c, cx, cy, ax, ay)
        return c.alpha((rho - 1.0) * np.minimum(ax, ay))

    c.paint(body_layer(0.0), 30.0, "skin")
    c.paint(body_layer(skin), -100.0 + jitter["fat"], "fat")
    c.paint(body_layer(skin + fat_t), 45.0 + jitter["muscle"], "muscle")
    cav_inset = skin + fat_t + muscle_t
    cav_a, cav_b = body_a - cav_inset, body_b - cav_inset
    cav_cy = cy - 4.0
    cavity = body_layer(cav_inset)
    c.paint(cavity, 35.0, "mediastinum")

    small = ASYMMETRY[f["asymmetry"]][1]
    med_cx = cx + small * f["shift_mm"]  # volume loss pulls the mediastinum to the small side
    lungs = _Lungs(f, cav_a, cav_b, cav_cy, med_cx, u(10, 14))
    right, left = lungs.sides

    # Under the domes: the liver (right, across the midline) and the upper abdomen (left).
    Zf, Yf, Xf = c.Z, c.Y, c.X
    dia = np.where(Xf < med_cx, lungs.diaphragm(right, Xf, Yf), lungs.diaphragm(left, Xf, Yf))
    below = c.alpha(Zf - dia) * cavity
    liver_side = c.alpha(Xf - (med_cx + 35.0))
    c.paint(below * liver_side, 58.0 + jitter["liver"], "liver")
    c.paint(below * (1.0 - liver_side), 42.0, "abdomen")

    heart_axes = np.array([52.0, 42.0, 48.0]) * f["heart_scale"]
    heart_c = np.array([med_cx + f["heart_dx"], cav_cy - cav_b * f["heart_dy"],
                        left["dome"] + heart_axes[2] * f["heart_sit"]])

    # Lungs, computed over their bounding box only.
    low = np.array([cx - cav_a, cav_cy - cav_b, min(right["dome"], left["dome"]) - 80.0]) - c.edge
    high = np.array([cx + cav_a, cav_cy + cav_b, f["apex_z"]]) + c.edge
    lung_box = c.box(low, high)
    Z, Y, X = c.grid(lung_box)
    keep = c.alpha(lungs.med_half - np.abs(X - med_cx))
    keep = keep * np.broadcast_to(body_layer(cav_inset + 3.0), c.hu.shape)[lung_box]
    keep = keep * (1.0 - c.alpha(_ellipsoid_sd((X, Y, Z), heart_c, heart_axes + 8.0)))
    covers = [c.alpha(lungs.sd(s, X, Y, Z)) * keep for s in lungs.sides]
    cover = np.maximum(covers[0], covers[1])
    gravity = 25.0 * (Y - cav_cy) / cav_b  # dependent (posterior) lung is denser
    c.paint(cover, -850.0 + jitter["lung"] + gravity, "lung", lung_box)
    lung_cover = np.zeros_like(c.hu)
    lung_cover[lung_box] = cover

    # Airways: trachea from the top, carina, main bronchi, then trees inside each lung; vessel
    # trees from each hilum. Both thin by a constant factor per generation.
    carina = np.array([med_cx + u(-4, 4), cav_cy - cav_b * 0.05,
                       f["apex_z"] - (f["apex_z"] - right["dome"]) * u(0.3, 0.4)])
    top = np.array([carina[0] - small * f["shift_mm"] * 0.5, carina[1] - u(0, 8), FOV_Z_MM / 2 + 5])
    trachea_r = u(8, 10)
    airway_segments = [(top, carina, trachea_r)]
    vessel_segments, vessel_roots, hila = [], [], []
    for s in lungs.sides:
        side = s["side"]
        hilum = np.array([s["x"] - side * s["a"] * 0.6, s["y"], carina[2] - u(5, 20)])
        airway_segments.append((carina, hilum, trachea_r * 0.7))
        vessel_hilum = hilum + np.array([0.0, u(4, 10), u(-12, -4)])
        # The pulmonary artery: from the mediastinum to the hilum, where the tree starts.
        root = np.array([med_cx + side * 5.0, vessel_hilum[1] - 10.0, vessel_hilum[2]])
        vessel_roots.append((root, vessel_hilum, u(7.0, 9.0)))
        hila.append(vessel_hilum)
        for kind in ("airway", "vessel"):
            for lobe in ((side * 0.5, 0.1, 1.0), (side * 1.0, 0.3, -0.8), (side * 0.6, -0.8, 0.1),
                         (side * 0.6, 0.9, -0.1), (side * 1.0, -0.3, -0.6), (side * 0.7, 0.6, 0.7),
                         (side * 0.4, 0.5, -1.0)):
                d = np.array(lobe) + rng.normal(scale=0.15, size=3)
                if kind == "airway":
                    airway_segments += _tree(rng, hilum, d, u(20, 28), u(3.5, 4.5), 4, lungs.inside)
                else:
                    vessel_segments += _tree(rng, vessel_hilum, d, u(22, 30), u(4.5, 6.0), 5, lungs.inside)
    # Vessels only show inside the lungs (in the mediastinum they merge with soft tissue).
    c.paint_tubes(vessel_segments, 40.0 + jitter["blood"], "vessel", mask=np.minimum(lung_cover * 1.5, 1.0))
    c.paint_tubes(vessel_roots, 40.0 + jitter["blood"], "vessel")
    # An airway much thinner than a voxel averages into the lung (wall and lumen cancel): skip it.
    airway_segments = [seg for seg in airway_segments if seg[2] >= 0.4 * c.edge]
    c.paint_tubes(airway_segments, 10.0, "mediastinum", extra=1.5)  # wall
    c.paint_tubes(airway_segments, -1000.0, "airway")

    # Heart with a blood pool and pericardial fat, resting on the diaphragm; the aorta.
    c.paint_ellipsoid(heart_c, heart_axes + 4.0, -90.0, "fat")
    c.paint_ellipsoid(heart_c, heart_axes, 42.0 + jitter["muscle"], "heart")
    c.paint_ellipsoid(heart_c, heart_axes * 0.65, 38.0 + jitter["blood"], "blood")
    spine_y = cy + body_b - skin - fat_t - u(75, 85)  # spinous tip 10-20 mm under the back's fat
    aorta_r = u(11, 14)
    arch_top = np.array([med_cx + 5, cav_cy - cav_b * 0.05, carina[2] + u(15, 30)])
    ascending = np.array([heart_c[0] - 20, heart_c[1] + 5, heart_c[2] + heart_axes[2] * 0.6])
    descending_top = np.array([cx + u(18, 26), spine_y - u(22, 28), arch_top[2] - 10])
    descending_bottom = descending_top + np.array([u(-5, 5), u(-3, 3), -FOV_Z_MM])
    c.paint_tubes([(ascending, arch_top, aorta_r), (arch_top, descending_top, aorta_r),
                   (descending_top, descending_bottom, aorta_r)], 40.0 + jitter["blood"], "blood")

    _paint_spine(c, rng, cx, spine_y, jitter["bone"])
    _paint_ribs(c, rng, cx, cav_cy, cav_a, cav_b, muscle_t, f["apex_z"], heart_c, heart_axes, jitter["bone"])

    mask, nodule_truth = None, []
    if nodules:
        mask = np.zeros(c.hu.shape, dtype=np.uint8)
        for nodule in f["nodules"]:
            s = lungs.sides[nodule["side"]]
            radius = nodule["radius_mm"]
            drawn = max(radius, c.edge)  # at least a voxel: a nodule that shows
            half_height = (s["apex"] - s["dome"]) / 2
            centre = np.array([s["x"], s["y"], s["dome"] + half_height])
            extent = np.array([s["a"], s["b"], half_height])
            where = np.asarray(nodule["where"])
            # Pulled towards the lung centre until it lies in the lung, clear of its wall, the
            # heart and the hilum (where the big vessels would swallow it).
            for shrink in np.linspace(1.0, 0.0, 11):
                point = centre + where * extent * shrink
                if lungs.inside(point, margin=drawn + max(4.0, c.edge)) and \
                        _ellipsoid_sd(point, heart_c, heart_axes + 8.0 + drawn) > 0 and \
                        min(np.linalg.norm(point - h) for h in hila) > drawn + 25.0:
                    break
            region = c.box(point - drawn * 1.4 - c.edge, point + drawn * 1.4 + c.edge)
            zz, yy, xx = c.grid(region)
            dx, dy, dz = xx - point[0], yy - point[1], zz - point[2]
            r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
            # Lobulated outline: the radius varies with direction.
            lobes = 1.0 + 0.15 * np.sin(3 * np.arctan2(dy, dx) + u(0, 6.3)) * np.cos(2 * np.arccos(
                np.clip(dz / np.maximum(r, 1e-6), -1, 1)))
            alpha = c.alpha(r - drawn * lobes)
            c.paint(alpha, nodule["hu"], "nodule", region)
            mask[region] |= (alpha >= 0.5).astype(np.uint8)
            nodule_truth.append({"centre_mm": [float(v) for v in point], "rendered_radius_mm": float(drawn)})

    # Acquisition: correlated noise, then the slice thickness blurs image and noise along z (a
    # thick slice averages thin ones); the noise is scaled so its std after the blur is noise_hu.
    kernel = _z_kernel(f["slice_mm"], c.spacing[0])
    noise = _seed_rng(seed, 2).standard_normal(c.hu.shape, dtype=np.float32)
    for axis in (1, 2):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / np.sqrt(3.0)
    c.hu += noise * np.float32(f["noise_hu"] / np.sqrt(np.sum(kernel ** 2)))
    c.hu = _blur_z(c.hu, kernel)
    c.hu[np.broadcast_to(outside, c.hu.shape)] = PADDING_HU
    c.tissues[np.broadcast_to(outside, c.hu.shape)] = TISSUES["outside"]
    origin = (-FOV_XY_MM / 2 + c.spacing[2] / 2, -FOV_XY_MM / 2 + c.spacing[1] / 2,
              -FOV_Z_MM / 2 + c.spacing[0] / 2)

    voxel_ml = float(np.prod(c.spacing)) / 1000.0
    side_ml = [float(cv.sum(dtype=np.float64)) * voxel_ml for cv in covers]  # right, left
    truth = {
        "body_width_mm": 2.0 * body_a, "body_depth_mm": 2.0 * body_b,
        "lung_ml": side_ml[0] + side_ml[1], "lung_ratio": side_ml[1] / max(side_ml[0], 1e-6),
        "heart_x_mm": float(heart_c[0]), "heart_y_mm": float(heart_c[1]), "heart_z_mm": float(heart_c[2]),
        "nodule_count": len(f["nodules"]), "noise_hu": f["noise_hu"], "slice_mm": f["slice_mm"],
        "lung_right_ml": side_ml[0], "lung_left_ml": side_ml[1], "nodule_detail": nodule_truth,
        "size": int(size), "spacing_mm": [float(s) for s in c.spacing],
    }
    factors = {**f, **truth}
    return Phantom(hu=c.hu, tissues=c.tissues, mask=mask, spacing=c.spacing, origin=origin,
                   lung_region=lung_cover >= 0.5, factors=_jsonable(factors))


def _jsonable(value):
    """``value`` with numpy scalars turned into Python numbers (for the JSON sidecar)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _paint_spine(c: _Canvas, rng, cx: float, spine_y: float, jitter: float) -> None:
    """Vertebrae (cortical shell, cancellous core) separated by discs, the canal and the arch."""
    u = rng.uniform
    body_r = u(15, 19)
    period = u(22, 27)
    phase = u(0, period)
    canal_y = spine_y + body_r + 9.0
    spine_box = c.box(np.array([cx - 36.0, spine_y - body_r, -FOV_Z_MM]) - c.edge,
                      np.array([cx + 36.0, canal_y + 41.0, FOV_Z_MM]) + c.edge)
    Z, Y, X = c.grid(spine_box)
    disc = c.alpha(np.abs(np.mod(Z - phase, period) - period / 2) - 2.5)
    r_spine = np.sqrt((X - cx) ** 2 + (Y - spine_y) ** 2)
    cortical = 900.0 + jitter * 5
    body_cover = c.alpha(r_spine - body_r)
    c.paint(body_cover * (1 - disc), cortical, "bone", spine_box)
    c.paint(c.alpha(r_spine - (body_r - 2.5)) * (1 - disc), 430.0 + jitter * 3, "bone", spine_box)
    c.paint(body_cover * disc, 80.0, "disc", spine_box)
    r_canal = np.sqrt((X - cx) ** 2 + (Y - canal_y) ** 2)
    arch = c.alpha(np.abs(r_canal - 10.5) - 3.0) * (Y > canal_y - 6)
    spinous = c.alpha(np.maximum(np.abs(X - cx) - 4.0, np.abs(Y - canal_y - 26.0) - 13.0))
    transverse = c.alpha(np.maximum(np.abs(np.abs(X - cx) - 22.0) - 12.0, np.abs(Y - canal_y) - 4.0))
    posterior_bone = np.maximum(np.maximum(arch, spinous), transverse) * (1 - disc)
    c.paint(posterior_bone, cortical * 0.8, "bone", spine_box)
    c.paint(c.alpha(r_canal - 7.5), 30.0, "canal", spine_box)


def _paint_ribs(c: _Canvas, rng, cx, cav_cy, cav_a, cav_b, muscle_t, apex_z, heart_c, heart_axes,
                jitter: float) -> None:
    """Twelve pairs of ribs at the inner chest wall sloping down to the front; the sternum."""
    u = rng.uniform
    rib_a, rib_b = cav_a + muscle_t * 0.3, cav_b + muscle_t * 0.3
    rho_rib = _ellipse_rho(c, cx, cav_cy, rib_a, rib_b)
    radial = (rho_rib - 1.0) * min(rib_a, rib_b)  # mm from the rib ellipse
    theta = np.arctan2(np.abs(c.X - cx), c.Y - cav_cy)  # from the posterior midline (0) to the front (pi)
    theta_band = (theta > 0.35) & (theta < 2.55)
    rib_spacing = u(21, 25)
    drop = u(35, 55)
    rib_half_h, rib_half_w = u(5.0, 7.0), u(3.5, 5.0)
    top_rib = apex_z + 5.0
    for k in range(12):
        z_post = top_rib - k * rib_spacing
        zs = slice(int(np.searchsorted(c.z, z_post - drop - rib_half_h - c.edge)),
                   int(np.searchsorted(c.z, z_post + rib_half_h + c.edge)))
        if zs.stop <= zs.start:
            continue
        zc = z_post - drop * (theta / np.pi)
        shape = np.sqrt((radial / rib_half_w) ** 2 + ((c.Z[zs] - zc) / rib_half_h) ** 2)
        c.paint(c.alpha((shape - 1.0) * rib_half_w) * theta_band, 780.0 + jitter * 5, "bone", np.s_[zs])
        c.paint(c.alpha((shape - 0.55) * rib_half_w) * theta_band, 450.0 + jitter * 3, "bone", np.s_[zs])
    sternum_y = cav_cy - cav_b - muscle_t * 0.2
    sternum = c.alpha(np.maximum(np.abs(c.X - cx) - 16.0, np.abs(c.Y - sternum_y) - 5.5))
    sternum = sternum * (c.Z > heart_c[2] - heart_axes[2] * 0.6) * (c.Z < top_rib)
    c.paint(sternum, 520.0 + jitter * 3, "bone")


def phantom_labels(phantom: Phantom) -> np.ndarray:
    """The segmentation label map of a rendered phantom: 0 background, 1 lungs, 2 nodules.

    Lungs are the voxels of lung tissue, vessel or airway inside the lung region (so the trachea
    and main bronchi are not lung); nodules are painted over them, exactly where the nodule mask
    is set.

    Returns:
        uint8 (S, S, S), labels named by :data:`MASK_LABELS`.
    """
    lung_codes = [TISSUES[name] for name in _LUNG_TISSUES]
    labels = (np.isin(phantom.tissues, lung_codes) & phantom.lung_region).astype(np.uint8)
    if phantom.mask is not None:
        labels[phantom.mask > 0] = 2
    return labels


def make_phantom(size: int = 64, seed: int | Sequence[int] = 0,
                 nodules: bool = False) -> tuple[Volume, np.ndarray | None]:
    """A chest-CT-like phantom volume in HU.

    Args:
        size: cube edge S (16..1024); spacing is (340/S, 380/S, 380/S) mm.
        seed: an integer or a sequence of integers; the same seed gives the same volume.
        nodules: add 1-3 lung nodules.

    Returns:
        ``(volume, mask)``: the :class:`Volume` (float32 (S, S, S) HU, LPS identity direction) and
        the uint8 (S, S, S) nodule mask, or None without nodules. :func:`render_phantom` also
        gives the tissues and the factors.

    Example:
        >>> vol, mask = make_phantom(64, seed=3, nodules=True)
        >>> vol.array.shape, mask.shape
        ((64, 64, 64), (64, 64, 64))
    """
    phantom = render_phantom(size, seed, nodules)
    volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
    return volume, phantom.mask


PHANTOM_FORMATS = ("nii.gz", "nii", "mhd", "nrrd")
#: Suffix of the factor sidecar beside each written phantom: ``phantom_0000.factors.json``.
FACTORS_SUFFIX = ".factors.json"


def factors_path(path: str | os.PathLike) -> Path:
    """The factor sidecar ``DIR/NAME.factors.json`` of the volume ``DIR/NAME.<suffix>``."""
    from medvol.data.io import volume_stem

    path = Path(path)
    return path.with_name(volume_stem(path) + FACTORS_SUFFIX)


def read_factors(path: str | os.PathLike) -> dict[str, Any] | None:
    """The phantom factors recorded beside the volume ``path`` (its sidecar), or None without one.

    Raises:
        MedvolError: a sidecar that is not a JSON object holding ``"phantom_factors"``.
    """
    side = factors_path(path)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedvolError(f"{side}: unreadable phantom factor sidecar ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("phantom_factors"), dict):
        raise MedvolError(f"{side}: not a phantom factor sidecar (no 'phantom_factors' object)")
    return record["phantom_factors"]


def write_phantoms(n: int, size: int, out: str | os.PathLike, *, fmt: str = "nii.gz", seed: int = 0,
                   nodules: bool = False, overwrite: bool = False) -> list[Path]:
    """Write ``n`` phantoms as CT files (int16 HU): ``phantom_0000.<fmt>`` ...

    Volume i uses the seed ``(seed, i)``, the same as item i of
    ``PhantomVolumeDataset(size, n, seed)``. Beside it go its label map (uint8: lungs 1, nodules 2,
    see :func:`phantom_labels`) as ``phantom_0000_mask.<fmt>`` and its factors as
    ``phantom_0000.factors.json`` (``{"phantom_factors": {...}, "seed": [seed, i]}``).

    ``out`` is claimed with :func:`medvol.outputs.owned_output`: the same call again continues
    (rewrites the same files); a folder holding anything else (a user's files, another medvol
    job's) is refused unless ``overwrite``, which removes only what medvol wrote there and never
    replaces a file medvol did not write.

    Returns:
        The image paths written (label maps not included).

    Raises:
        MedvolError: a bad argument, a refused folder, or a failed write (a full disk); the
            volume being written then has no file under its name (nor its label map or factors),
            the ones before it are complete.
    """
    from medvol.outputs import MARKER, owned_output
    from medvol.utils import checked_write, optional_import

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MedvolError(f"invalid count {n!r} (--n): expected a positive integer")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise MedvolError(f"unsupported phantom size {size!r} (--size): expected an integer in 16..1024")
    fmt = fmt.lstrip(".")
    if fmt not in PHANTOM_FORMATS:
        raise MedvolError(f"unknown format {fmt!r} (--format): choose one of {', '.join(PHANTOM_FORMATS)}")
    _seed_rng(seed)
    identity = {"n": int(n), "size": int(size), "seed": int(seed), "format": fmt, "nodules": bool(nodules)}
    optional_import("SimpleITK", "writing volume files")  # before the folder is claimed
    written = []
    with owned_output(out, "data phantom", identity, overwrite=overwrite) as folder:
        for index in range(n):
            stem = f"phantom_{index:04d}"
            names = [f"{stem}.{fmt}", f"{stem}_mask.{fmt}", stem + FACTORS_SUFFIX]
            if fmt == "mhd":
                names += [f"{stem}.raw", f"{stem}_mask.raw"]
            paths = [folder.path(name) for name in names]  # refused before writing anything
            phantom = render_phantom(size, (seed, index), nodules)
            volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
            try:
                path = write_volume(volume, paths[0], dtype=np.int16)
                write_volume(dataclasses.replace(volume, array=phantom_labels(phantom)), paths[1], dtype=np.uint8)
                record = {"phantom_factors": phantom.factors, "seed": [int(seed), index],
                          "nodules": bool(nodules)}
                with checked_write(paths[2], "phantom factor sidecar") as tmp:
                    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            except MedvolError:
                # A volume whose label map or factors are missing would pass for a complete one.
                for file in paths:
                    file.unlink(missing_ok=True)
                if not written and not folder.continued:  # nothing written: leave no marker either
                    (folder.folder / MARKER).unlink(missing_ok=True)
                raise
            written.append(path)
    return written
