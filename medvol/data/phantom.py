"""Procedural chest-CT-like phantoms in Hounsfield units: the embedded default data.

One phantom is an (S, S, S) = (z, y, x) volume in LPS orientation (z inferior -> superior, y
anterior -> posterior, x right -> left) with a 380 mm in-plane field of view and 340 mm along z, so
its voxels are anisotropic like a real chest CT. It holds, painted in anatomical order with
partial-volume (soft) edges:

- scanner padding (-2048) outside the reconstruction circle, air (-1000) and the couch;
- the body: skin, subcutaneous fat (-100), a muscle wall (+40..55);
- the thoracic cavity: mediastinum, two lungs (-850 with a posterior gravity gradient) carrying a
  branching pulmonary vessel tree (blood +40) and a branching airway tree (air lumen with a wall)
  from the trachea, the heart (myocardium +40 around a blood pool +40, pericardial fat) with the
  aorta, and the liver dome under the right lung;
- bone (400-1000): vertebrae (cortical shell, cancellous core, discs, spinal canal, posterior arch),
  twelve pairs of ribs sloping down anteriorly, the sternum;
- optionally 1-3 lobulated solid nodules (0..50 HU) in the lungs, returned as a mask;
- correlated Gaussian noise.

Beside the tissue labels, :func:`phantom_labels` gives the segmentation label map that paired
image + mask generation trains on: lungs 1 (parenchyma with its vessels and small airways), nodules 2
(:data:`MASK_LABELS`).

Body size and position, organ sizes, the branching, intensities and noise vary with the seed; a
given seed always gives the same volume. Rendering is vectorised numpy (a 64^3 volume takes tens of
milliseconds).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medvol.data.io import Volume, write_volume
from medvol.errors import MedvolError
from medvol.utils import write_failure

FOV_XY_MM = 380.0
FOV_Z_MM = 340.0
PADDING_HU = -2048.0

#: Tissue labels of :func:`render_phantom`'s label map.
TISSUES = {
    "outside": 0, "air": 1, "couch": 2, "skin": 3, "fat": 4, "muscle": 5, "mediastinum": 6,
    "lung": 7, "vessel": 8, "airway": 9, "heart": 10, "blood": 11, "liver": 12, "bone": 13,
    "disc": 14, "canal": 15, "nodule": 16,
}
#: Class names of :func:`phantom_labels`' label map: label i is ``MASK_LABELS[i - 1]``.
MASK_LABELS = ("lungs", "nodules")
#: Tissues that count as lung in the label map when they lie in the lung region: the parenchyma and
#: what runs through it (a lung segmentation includes its vessels and small airways).
_LUNG_TISSUES = ("lung", "vessel", "airway")


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
    """

    hu: np.ndarray
    tissues: np.ndarray
    mask: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lung_region: np.ndarray | None = None


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
            alpha = self.alpha(dist - r)
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


def _seed_rng(seed: int | Sequence[int]) -> np.random.Generator:
    if isinstance(seed, (bool, float)) or (np.ndim(seed) == 0 and int(seed) < 0):
        raise MedvolError(f"invalid phantom seed {seed!r} (--seed): expected a non-negative integer")
    return np.random.default_rng(seed if np.ndim(seed) == 0 else [int(s) for s in seed])


def render_phantom(size: int = 64, seed: int | Sequence[int] = 0, nodules: bool = False) -> Phantom:
    """Render one phantom with its tissue labels (see the module docstring).

    Args:
        size: cube edge S (16..1024).
        seed: an integer, or a sequence of integers (e.g. ``(dataset_seed, index)``).
        nodules: add 1-3 nodules and return their mask.

    Returns:
        A :class:`Phantom`.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise MedvolError(f"unsupported phantom size {size!r} (--size): expected an integer in 16..1024")
    rng = _seed_rng(seed)
    c = _Canvas(int(size))
    u = rng.uniform

    # Reconstruction circle: scanner padding outside, as many real CTs store it.
    radius_fov = FOV_XY_MM / 2
    outside = np.sqrt(c.X ** 2 + c.Y ** 2) > radius_fov
    # Body geometry (mm, x left+, y posterior+).
    cx, cy = u(-12, 12), u(-15, 5)
    body_a, body_b = u(135, 162), u(95, 118)
    skin, fat_t, muscle_t = 2.0, u(8, 24), u(10, 17)
    taper = u(0.0, 0.08)
    scale_z = 1.0 + taper * c.Z / (FOV_Z_MM / 2)  # slightly wider towards the shoulders
    hu_jitter = {k: u(-8, 8) for k in ("fat", "muscle", "lung", "blood", "liver", "bone")}

    # Couch under the back.
    couch_y = cy + body_b + u(6, 14)
    couch = c.alpha(np.abs(c.Y - couch_y - 4.0 - 0.0008 * c.X ** 2) - 4.0)
    c.paint(np.broadcast_to(couch, c.hu.shape), 120.0, "couch")

    def body_layer(inset: float) -> np.ndarray:
        ax, ay = body_a * scale_z - inset, body_b * scale_z - inset
        rho = _ellipse_rho(c, cx, cy, ax, ay)
        return c.alpha((rho - 1.0) * np.minimum(ax, ay))

    c.paint(body_layer(0.0), 30.0, "skin")
    c.paint(body_layer(skin), -100.0 + hu_jitter["fat"], "fat")
    c.paint(body_layer(skin + fat_t), 45.0 + hu_jitter["muscle"], "muscle")
    cav_inset = skin + fat_t + muscle_t
    cav_a, cav_b = body_a - cav_inset, body_b - cav_inset
    cav_cy = cy - 4.0
    c.paint(body_layer(cav_inset), 35.0, "mediastinum")

    # Lungs: boxy superellipsoids either side of the mediastinum, apex near the top.
    lung_zc = u(10, 45)
    lung_axes = [cav_a * u(0.47, 0.52), cav_b * u(0.86, 0.95), u(120, 140)]
    mediastinum_half = u(10, 16)
    heart_c = np.array([cx + u(15, 35), cav_cy - cav_b * u(0.15, 0.3), lung_zc - lung_axes[2] * u(0.35, 0.55)])
    heart_axes = np.array([u(46, 58), u(38, 48), u(42, 54)])
    # Lungs live inside the cavity: compute them over its bounding box only.
    lung_box = c.box(np.array([cx - cav_a, cav_cy - cav_b, lung_zc - lung_axes[2]]) - c.edge,
                     np.array([cx + cav_a, cav_cy + cav_b, lung_zc + lung_axes[2]]) + c.edge)
    Z, Y, X = c.grid(lung_box)
    cover = np.zeros(tuple(s.stop - s.start for s in lung_box), dtype=np.float32)
    lung_centers = []
    for side in (-1.0, 1.0):
        center = np.array([cx + side * (mediastinum_half + lung_axes[0] * 0.95), cav_cy + cav_b * 0.05, lung_zc])
        lung_centers.append(center)
        cover = np.maximum(cover, c.alpha(_ellipsoid_sd((X, Y, Z), center, lung_axes, power=2.6)))
    # Keep lungs off the midline, inside the cavity, and out of the heart (cardiac notch).
    cover *= c.alpha(mediastinum_half - np.abs(X - cx))
    cover *= np.broadcast_to(body_layer(cav_inset + 3.0), c.hu.shape)[lung_box]
    cover *= 1.0 - c.alpha(_ellipsoid_sd((X, Y, Z), heart_c, heart_axes + 8.0))
    gravity = 25.0 * (Y - cav_cy) / cav_b  # dependent (posterior) lung is denser
    c.paint(cover, -850.0 + hu_jitter["lung"] + gravity, "lung", lung_box)
    lung_cover = np.zeros_like(c.hu)
    lung_cover[lung_box] = cover

    def in_lung(point: np.ndarray) -> bool:
        for center in lung_centers:
            q = np.abs((point - center) / lung_axes) ** 2.6
            if q.sum() <= 0.95 and abs(point[0] - cx) > mediastinum_half + 4:
                return True
        return False

    # Airways: trachea from the top, carina, main bronchi, then trees inside each lung.
    carina = np.array([cx + u(-4, 4), cav_cy - cav_b * 0.05, lung_zc + lung_axes[2] * u(0.05, 0.2)])
    top = np.array([carina[0], carina[1] - u(0, 8), FOV_Z_MM / 2 + 5])
    trachea_r = u(8, 10)
    airway_segments = [(top, carina, trachea_r)]
    vessel_segments = []
    for side, center in zip((-1.0, 1.0), lung_centers):
        hilum = np.array([center[0] - side * lung_axes[0] * 0.55, center[1], lung_zc + u(-5, 10)])
        airway_segments.append((carina, hilum, trachea_r * 0.7))
        vessel_hilum = hilum + np.array([0.0, u(4, 10), u(-12, -4)])
        for tree_kind in ("airway", "vessel"):
            for lobe_dir in ((side * 0.8, 0.1, 1.0), (side * 1.0, 0.3, -0.8), (side * 0.6, -0.8, 0.1),
                             (side * 0.6, 0.9, -0.1), (side * 1.0, -0.3, -0.5), (side * 0.7, 0.6, 0.7)):
                d = np.array(lobe_dir) + rng.normal(scale=0.15, size=3)
                if tree_kind == "airway":
                    airway_segments += _tree(rng, hilum, d, u(22, 30), u(4.0, 5.0), 4, in_lung)
                else:
                    vessel_segments += _tree(rng, vessel_hilum, d, u(24, 32), u(4.5, 6.0), 5, in_lung)
    # Vessels only show inside the lungs (in the mediastinum they merge with soft tissue).
    c.paint_tubes(vessel_segments, 40.0 + hu_jitter["blood"], "vessel", mask=np.minimum(lung_cover * 1.5, 1.0))
    c.paint_tubes(airway_segments, 10.0, "mediastinum", extra=1.5)  # wall
    c.paint_tubes(airway_segments, -1000.0, "airway")

    # Heart with a blood pool and pericardial fat; aorta arching back along the spine.
    c.paint_ellipsoid(heart_c, heart_axes + 4.0, -90.0, "fat")
    c.paint_ellipsoid(heart_c, heart_axes, 42.0 + hu_jitter["muscle"], "heart")
    c.paint_ellipsoid(heart_c, heart_axes * 0.65, 38.0 + hu_jitter["blood"], "blood")
    # The spinous process tip stays 10-20 mm under the back's fat layer.
    spine_y = cy + body_b - skin - fat_t - u(75, 85)
    aorta_r = u(11, 14)
    arch_top = np.array([cx + 5, cav_cy - cav_b * 0.05, carina[2] + u(15, 30)])
    ascending = np.array([heart_c[0] - 20, heart_c[1] + 5, heart_c[2] + heart_axes[2] * 0.6])
    descending_top = np.array([cx + u(18, 26), spine_y - u(22, 28), arch_top[2] - 10])
    descending_bottom = descending_top + np.array([u(-5, 5), u(-3, 3), -FOV_Z_MM])
    c.paint_tubes([(ascending, arch_top, aorta_r), (arch_top, descending_top, aorta_r),
                   (descending_top, descending_bottom, aorta_r)], 40.0 + hu_jitter["blood"], "blood")

    # Liver dome under the right lung (x negative = patient right).
    liver_c = np.array([cx - cav_a * 0.35, cav_cy, lung_zc - lung_axes[2] * u(1.0, 1.15)])
    liver_axes = np.array([cav_a * 0.75, cav_b * 0.9, u(80, 100)])
    c.paint_ellipsoid(liver_c, liver_axes, 58.0 + hu_jitter["liver"], "liver", within=body_layer(cav_inset + 1.0))

    # Spine: vertebral bodies (cortical shell, cancellous core) separated by discs, canal, arch.
    body_r = u(15, 19)
    period = u(22, 27)
    phase = u(0, period)
    canal_y = spine_y + body_r + 9.0
    # Everything of the spine lies in a column around the midline: work in its bounding box.
    spine_box = c.box(np.array([cx - 36.0, spine_y - body_r, -FOV_Z_MM]) - c.edge,
                      np.array([cx + 36.0, canal_y + 41.0, FOV_Z_MM]) + c.edge)
    Z, Y, X = c.grid(spine_box)
    disc = c.alpha(np.abs(np.mod(Z - phase, period) - period / 2) - 2.5)
    r_spine = np.sqrt((X - cx) ** 2 + (Y - spine_y) ** 2)
    cortical = 900.0 + hu_jitter["bone"] * 5
    cancellous = 430.0 + hu_jitter["bone"] * 3
    body_cover = c.alpha(r_spine - body_r)
    c.paint(body_cover * (1 - disc), cortical, "bone", spine_box)
    c.paint(c.alpha(r_spine - (body_r - 2.5)) * (1 - disc), cancellous, "bone", spine_box)
    c.paint(body_cover * disc, 80.0, "disc", spine_box)
    r_canal = np.sqrt((X - cx) ** 2 + (Y - canal_y) ** 2)
    arch = c.alpha(np.abs(r_canal - 10.5) - 3.0) * (Y > canal_y - 6)
    spinous = c.alpha(np.maximum(np.abs(X - cx) - 4.0, np.abs(Y - canal_y - 26.0) - 13.0))
    transverse = c.alpha(np.maximum(np.abs(np.abs(X - cx) - 22.0) - 12.0, np.abs(Y - canal_y) - 4.0))
    posterior_bone = np.maximum(np.maximum(arch, spinous), transverse) * (1 - disc)
    c.paint(posterior_bone, cortical * 0.8, "bone", spine_box)
    c.paint(c.alpha(r_canal - 7.5), 30.0, "canal", spine_box)

    # Ribs: twelve pairs at the inner chest wall, sloping down towards the front.
    rib_a, rib_b = cav_a + muscle_t * 0.3, cav_b + muscle_t * 0.3
    rho_rib = _ellipse_rho(c, cx, cav_cy, rib_a, rib_b)
    radial = (rho_rib - 1.0) * min(rib_a, rib_b)  # mm from the rib ellipse
    # Angle from the posterior midline (0) round to the front (pi), either side.
    theta = np.arctan2(np.abs(c.X - cx), c.Y - cav_cy)
    theta_band = (theta > 0.35) & (theta < 2.55)
    rib_spacing = u(22, 27)
    drop = u(35, 55)
    rib_half_h, rib_half_w = u(5.0, 7.0), u(3.5, 5.0)
    top_rib = lung_zc + lung_axes[2] * 0.9
    for k in range(12):
        z_post = top_rib - k * rib_spacing
        z_lo = z_post - drop - rib_half_h - c.edge
        z_hi = z_post + rib_half_h + c.edge
        zs = slice(int(np.searchsorted(c.z, z_lo)), int(np.searchsorted(c.z, z_hi)))
        if zs.stop <= zs.start:
            continue
        zc = z_post - drop * (theta / np.pi)
        shape = np.sqrt((radial / rib_half_w) ** 2 + ((c.Z[zs] - zc) / rib_half_h) ** 2)
        cover = c.alpha((shape - 1.0) * rib_half_w) * theta_band
        inner = c.alpha((shape - 0.55) * rib_half_w) * theta_band
        c.paint(cover, 780.0 + hu_jitter["bone"] * 5, "bone", np.s_[zs])
        c.paint(inner, 450.0 + hu_jitter["bone"] * 3, "bone", np.s_[zs])
    # Sternum: a plate at the front midline, down to the heart.
    sternum_y = cav_cy - cav_b - muscle_t * 0.2
    sternum = c.alpha(np.maximum(np.abs(c.X - cx) - 16.0, np.abs(c.Y - sternum_y) - 5.5))
    sternum = sternum * (c.Z > heart_c[2] - heart_axes[2] * 0.6) * (c.Z < top_rib)
    c.paint(sternum, 520.0 + hu_jitter["bone"] * 3, "bone")

    mask = None
    if nodules:
        mask = np.zeros(c.hu.shape, dtype=np.uint8)
        count = int(rng.integers(1, 4))
        placed = 0
        for _ in range(200):
            if placed == count:
                break
            center = lung_centers[int(rng.integers(2))]
            point = center + rng.uniform(-0.7, 0.7, size=3) * lung_axes
            if not in_lung(point):
                continue
            radius = max(u(3.0, 12.0), 1.5 * c.edge)  # at least a voxel of solid core
            region = c.box(point - radius * 1.4 - c.edge, point + radius * 1.4 + c.edge)
            zz, yy, xx = c.z[region[0]][:, None, None], c.y[region[1]][None, :, None], c.x[region[2]][None, None, :]
            dx, dy, dz = xx - point[0], yy - point[1], zz - point[2]
            r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
            # Lobulated outline: the radius varies with direction.
            lobes = 1.0 + 0.18 * np.sin(3 * np.arctan2(dy, dx) + u(0, 6.3)) * np.cos(2 * np.arccos(
                np.clip(dz / np.maximum(r, 1e-6), -1, 1)))
            alpha = c.alpha(r - radius * lobes)
            c.paint(alpha, u(10.0, 45.0), "nodule", region)
            mask[region] |= (alpha >= 0.5).astype(np.uint8)
            placed += 1

    # Correlated noise: white noise blurred over neighbours, rescaled to the target sigma.
    sigma = u(8.0, 20.0)
    noise = rng.standard_normal(c.hu.shape, dtype=np.float32)
    for axis in (1, 2):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / np.sqrt(3.0)
    c.hu += noise * sigma
    c.hu[np.broadcast_to(outside, c.hu.shape)] = PADDING_HU
    c.tissues[np.broadcast_to(outside, c.hu.shape)] = TISSUES["outside"]
    origin = (-FOV_XY_MM / 2 + c.spacing[2] / 2, -FOV_XY_MM / 2 + c.spacing[1] / 2,
              -FOV_Z_MM / 2 + c.spacing[0] / 2)
    return Phantom(hu=c.hu, tissues=c.tissues, mask=mask, spacing=c.spacing, origin=origin,
                   lung_region=lung_cover >= 0.5)


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
        the uint8 (S, S, S) nodule mask, or None without nodules.

    Example:
        >>> vol, mask = make_phantom(64, seed=3, nodules=True)
        >>> vol.array.shape, mask.shape
        ((64, 64, 64), (64, 64, 64))
    """
    phantom = render_phantom(size, seed, nodules)
    volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
    return volume, phantom.mask


PHANTOM_FORMATS = ("nii.gz", "nii", "mhd", "nrrd")


def write_phantoms(n: int, size: int, out: str | os.PathLike, *, fmt: str = "nii.gz", seed: int = 0,
                   nodules: bool = False) -> list[Path]:
    """Write ``n`` phantoms as CT files (int16 HU): ``phantom_0000.<fmt>`` ...

    Volume i uses the seed ``(seed, i)``, the same as item i of
    ``PhantomVolumeDataset(size, n, seed)``. Its label map (uint8: lungs 1, nodules 2, see
    :func:`phantom_labels`) goes beside as ``phantom_0000_mask.<fmt>``.

    Returns:
        The image paths written (label maps not included).

    Raises:
        MedvolError: a bad argument, or a failed write (a full disk); the volume being written
            then has no file under its name (nor its label map), the ones before it are complete.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MedvolError(f"invalid count {n!r} (--n): expected a positive integer")
    fmt = fmt.lstrip(".")
    if fmt not in PHANTOM_FORMATS:
        raise MedvolError(f"unknown format {fmt!r} (--format): choose one of {', '.join(PHANTOM_FORMATS)}")
    _seed_rng(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedvolError(f"{out}: exists and is not a folder (--out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(f"{out}: cannot create the folder (--out: {write_failure(error, out.parent)})") from None
    written = []
    for index in range(n):
        phantom = render_phantom(size, (seed, index), nodules)
        volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
        path = write_volume(volume, out / f"phantom_{index:04d}.{fmt}", dtype=np.int16)
        try:
            write_volume(dataclasses.replace(volume, array=phantom_labels(phantom)),
                         out / f"phantom_{index:04d}_mask.{fmt}", dtype=np.uint8)
        except MedvolError:
            # A volume whose label map is missing would pass for one without labels.
            for file in [path, path.with_suffix(".raw")] if fmt == "mhd" else [path]:
                file.unlink(missing_ok=True)
            raise
        written.append(path)
    return written
