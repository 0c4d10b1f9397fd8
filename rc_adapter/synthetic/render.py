"""Procedural indoor scenes rendered by vectorised numpy ray casting.

A scene is a closed room (floor, ceiling, four walls) holding a few rigid
objects (spheres, boxes, vertical cylinders) and articulated "figures" built
from capsules and spheres (head, torso, upper/lower arms with hands, upper/
lower legs with feet). Every primary ray of a pinhole camera placed inside the
room hits something, so every pixel carries a valid depth, normal and label.

Conventions:
    * World frame: x right, y up, z forward (the floor is ``y = 0``).
    * Camera frame (labels): OpenCV, x right, y down, z forward. Normals are
      expressed in it, unit length, facing the camera (``n . ray < 0``).
    * Depth is the z-depth in metres (distance along the optical axis).

Colour and texture are drawn independently of the object type, so only shape
and shading tell the classes apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Surface types (indices into the label mapping tables of the writers).
T_FLOOR, T_WALL, T_CEILING, T_SPHERE, T_BOX, T_CYLINDER, T_FIGURE = range(1, 8)
TYPE_NAMES = {T_FLOOR: 'floor', T_WALL: 'wall', T_CEILING: 'ceiling',
              T_SPHERE: 'sphere', T_BOX: 'box', T_CYLINDER: 'cylinder',
              T_FIGURE: 'figure'}
OBJECT_TYPES = (T_SPHERE, T_BOX, T_CYLINDER, T_FIGURE)

# Figure primitives in PASCAL-Part naming (index 1.. in this tuple is the
# per-pixel ``part_code``), and their coarse part ids (docs/datasets.md).
PART_NAMES = ('head', 'torso', 'luarm', 'ruarm', 'llarm', 'rlarm', 'lhand',
              'rhand', 'luleg', 'ruleg', 'llleg', 'rlleg', 'lfoot', 'rfoot')
PART_NAME_TO_ID = {'head': 1, 'torso': 2, 'luarm': 3, 'ruarm': 3, 'llarm': 4,
                   'rlarm': 4, 'lhand': 4, 'rhand': 4, 'luleg': 5, 'ruleg': 5,
                   'llleg': 6, 'rlleg': 6, 'lfoot': 6, 'rfoot': 6}
_PART_CODE = {n: i + 1 for i, n in enumerate(PART_NAMES)}
PART_CODE_TO_ID = np.array([0] + [PART_NAME_TO_ID[n] for n in PART_NAMES],
                           dtype=np.uint8)

_INF = np.float32(np.inf)


@dataclass
class Camera:
    """Pinhole camera inside the room (world coordinates)."""
    origin: np.ndarray
    right: np.ndarray
    down: np.ndarray
    forward: np.ndarray
    focal: float
    height: int
    width: int


@dataclass
class Prim:
    """One ray-castable primitive.

    ``kind`` is 'sphere', 'box', 'cylinder' or 'capsule'; ``params`` holds
    its geometry; ``bound`` is a bounding sphere (centre, radius).
    """
    kind: str
    params: dict
    bound: tuple


@dataclass
class SceneObject:
    """A foreground object made of primitives (one for rigid objects)."""
    otype: int
    prims: list
    part_codes: list  # per prim: 0, or an index into PART_NAMES (+1)
    bound: tuple
    annotated: bool = True  # figures only: written with part annotations


@dataclass
class Scene:
    """A sampled scene: room extents, camera, light, objects, materials."""
    room: dict
    camera: Camera
    light: np.ndarray
    ambient: float
    objects: list
    materials: list = field(default_factory=list)  # per surface id


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rand_material(rng):
    """Colour/texture drawn independently of the surface type."""
    hsv = np.array([rng.uniform(0, 180), rng.uniform(0.15, 0.9),
                    rng.uniform(0.35, 1.0)], dtype=np.float32)
    import cv2
    rgb = cv2.cvtColor((hsv[None, None] * [1, 255, 255]).astype(np.uint8),
                       cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    return dict(color=rgb, tex=int(rng.integers(0, 4)),
                freq=rng.normal(0, 1, 3) * rng.uniform(3, 14),
                freq2=rng.normal(0, 1, 3) * rng.uniform(3, 14),
                amp=float(rng.uniform(0.1, 0.35)))


def sample_scene(rng, height, width, max_figures=2, max_objects=5,
                 p_no_figure=0.3, p_unannotated_figure=0.0):
    """Draw a random scene.

    Args:
        rng (np.random.Generator): Source of randomness.
        height (int): Image height in pixels.
        width (int): Image width in pixels.
        max_figures (int): At most this many figures.
        max_objects (int): At most this many rigid objects (at least 1).
        p_no_figure (float): Probability that a scene has no figure.
        p_unannotated_figure (float): Probability that a figure is written
            without part annotations (PASCAL layout only).

    Returns:
        Scene: The scene description.
    """
    room_w = rng.uniform(4.0, 7.0)
    room = dict(x0=-room_w * rng.uniform(0.35, 0.65), y0=0.0,
                z0=-rng.uniform(0.5, 1.5), ceil=rng.uniform(2.5, 3.2),
                depth=rng.uniform(5.0, 9.0))
    room['x1'] = room['x0'] + room_w
    room['z1'] = room['depth']
    cam_h = rng.uniform(1.0, 1.7)
    yaw = rng.uniform(-0.25, 0.25)
    pitch = rng.uniform(0.08, 0.4)  # looking down
    roll = rng.uniform(-0.05, 0.05)
    fwd = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch),
                    np.cos(yaw) * np.cos(pitch)])
    up = np.array([0.0, 1.0, 0.0])
    right = _unit(np.cross(up, fwd))
    down = _unit(np.cross(right, fwd))
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    fov = rng.uniform(np.deg2rad(50), np.deg2rad(70))
    focal = 0.5 * width / np.tan(0.5 * fov)
    cam = Camera(origin=np.array([0.0, cam_h, 0.0]), right=right, down=down,
                 forward=fwd, focal=focal, height=height, width=width)

    # Ground positions visible from the camera: sample the image plane,
    # intersect with the floor, keep points inside the room.
    def ground_point(margin):
        for _ in range(50):
            u = rng.uniform(0.1, 0.9) * width
            v = rng.uniform(0.45, 0.98) * height
            d = ((u - width / 2) / focal) * right + \
                ((v - height / 2) / focal) * down + fwd
            if d[1] >= -1e-3:
                continue
            t = -cam_h / d[1]
            p = cam.origin + t * d
            if (room['x0'] + margin < p[0] < room['x1'] - margin
                    and 1.0 < p[2] < room['z1'] - margin):
                return p
        return np.array([0.0, 0.0, 3.0])

    objects = []
    placed = []

    def free(p, r):
        return all(np.hypot(p[0] - q[0], p[2] - q[2]) > r + rq
                   for q, rq in placed)

    n_fig = 0 if rng.random() < p_no_figure else int(
        rng.integers(1, max_figures + 1))
    n_obj = int(rng.integers(1, max_objects + 1))
    kinds = [T_FIGURE] * n_fig + list(
        rng.choice([T_SPHERE, T_BOX, T_CYLINDER], size=n_obj))
    for otype in kinds:
        for _ in range(10):
            if otype == T_FIGURE:
                scale = rng.uniform(1.45, 1.9)
                p = ground_point(0.4)
                if not free(p, 0.35):
                    continue
                obj = _make_figure(rng, p, scale)
                obj.annotated = bool(rng.random() >= p_unannotated_figure)
                placed.append((p, 0.35))
            elif otype == T_SPHERE:
                r = rng.uniform(0.15, 0.5)
                p = ground_point(r)
                if not free(p, r):
                    continue
                lift = r if rng.random() < 0.7 else r + rng.uniform(0.2, 0.8)
                ctr = np.array([p[0], lift, p[2]])
                obj = SceneObject(T_SPHERE, [Prim('sphere', dict(c=ctr, r=r),
                                                  (ctr, r))], [0], (ctr, r))
                placed.append((p, r))
            elif otype == T_BOX:
                h = rng.uniform(0.15, 0.6, 3)
                h[1] = rng.uniform(0.15, 0.8)
                p = ground_point(max(h[0], h[2]))
                rad = float(np.hypot(h[0], h[2]))
                if not free(p, rad):
                    continue
                ctr = np.array([p[0], h[1], p[2]])
                th = rng.uniform(0, np.pi)
                br = float(np.linalg.norm(h))
                obj = SceneObject(T_BOX, [Prim('box', dict(c=ctr, h=h,
                                                           yaw=th),
                                               (ctr, br))], [0], (ctr, br))
                placed.append((p, rad))
            else:
                r = rng.uniform(0.1, 0.4)
                hh = rng.uniform(0.3, 1.4)
                p = ground_point(r)
                if not free(p, r):
                    continue
                base = np.array([p[0], 0.0, p[2]])
                ctr = base + [0, hh / 2, 0]
                br = float(np.hypot(r, hh / 2))
                obj = SceneObject(T_CYLINDER, [Prim('cylinder', dict(
                    c=base, r=r, h=hh), (ctr, br))], [0], (ctr, br))
                placed.append((p, r))
            objects.append(obj)
            break
    light = np.array([rng.uniform(room['x0'] + 0.5, room['x1'] - 0.5),
                      room['ceil'] - 0.2, rng.uniform(0.5, room['z1'] - 1)])
    n_surf = 6 + sum(len(o.prims) for o in objects)
    materials = [_rand_material(rng) for _ in range(n_surf)]
    # A figure's parts share a material: clothes, not part colours.
    k = 6
    for o in objects:
        m = materials[k]
        for j in range(len(o.prims)):
            materials[k + j] = m
        k += len(o.prims)
    return Scene(room=room, camera=cam, light=light,
                 ambient=float(rng.uniform(0.15, 0.4)), objects=objects,
                 materials=materials)


def _make_figure(rng, foot, scale):
    """An articulated figure standing at ``foot`` (a floor point)."""
    yaw = rng.uniform(-np.pi, np.pi)
    fx = np.array([np.cos(yaw), 0, -np.sin(yaw)])  # figure's left->right
    fz = np.array([np.sin(yaw), 0, np.cos(yaw)])   # figure's front
    up = np.array([0.0, 1.0, 0.0])
    s = scale / 1.75
    base = np.array([foot[0], 0.0, foot[2]])

    def limb(origin, length, swing, spread):
        d = -np.cos(swing) * np.cos(spread) * up + np.sin(swing) * fz + \
            np.sin(spread) * np.cos(swing) * fx
        return origin + length * d

    hip_y, shoulder_y = 0.9 * s, 1.42 * s
    prims, codes = [], []

    def add(kind, name, **p):
        if kind == 'sphere':
            bound = (p['c'], p['r'])
        else:
            bound = ((p['a'] + p['b']) / 2,
                     np.linalg.norm(p['b'] - p['a']) / 2 + p['r'])
        prims.append(Prim(kind, p, bound))
        codes.append(_PART_CODE[name])

    neck = base + up * (shoulder_y + 0.05 * s)
    add('sphere', 'head', c=neck + up * 0.16 * s + fz * rng.uniform(
        -0.03, 0.03), r=0.11 * s)
    add('capsule', 'torso', a=base + up * (hip_y + 0.08 * s),
        b=base + up * (shoulder_y - 0.06 * s), r=0.16 * s)
    for side, sgn in (('l', -1.0), ('r', 1.0)):
        sh = base + up * shoulder_y + sgn * 0.21 * s * fx
        el = limb(sh, 0.3 * s, rng.uniform(-0.8, 1.6),
                  sgn * rng.uniform(0.05, 0.9))
        ha = limb(el, 0.27 * s, rng.uniform(-0.3, 2.2),
                  sgn * rng.uniform(0.0, 0.6))
        add('capsule', side + 'uarm', a=sh, b=el, r=0.055 * s)
        add('capsule', side + 'larm', a=el, b=ha, r=0.045 * s)
        add('sphere', side + 'hand', c=ha + (ha - el) / np.linalg.norm(
            ha - el) * 0.05 * s, r=0.055 * s)
    for side, sgn in (('l', -1.0), ('r', 1.0)):
        hp = base + up * hip_y + sgn * 0.1 * s * fx
        sw = rng.uniform(-0.35, 0.35)
        kn = limb(hp, 0.43 * s, sw, sgn * rng.uniform(0.0, 0.15))
        kn[1] = max(kn[1], 0.42 * s)
        an = limb(kn, 0.4 * s, sw - rng.uniform(0.0, 0.3), 0.0)
        an[1] = max(an[1], 0.07 * s)
        add('capsule', side + 'uleg', a=hp, b=kn, r=0.075 * s)
        add('capsule', side + 'lleg', a=kn, b=an, r=0.058 * s)
        toe = an + fz * 0.13 * s
        toe[1] = 0.04 * s
        add('capsule', side + 'foot', a=an, b=toe, r=0.045 * s)
    ctr = base + up * 0.95 * s
    return SceneObject(T_FIGURE, prims, codes, (ctr, 1.05 * s))


# ----------------------------------------------------------------------------
# Ray casting. All routines take ray origins ``o`` (3,) and unit directions
# ``d`` (N, 3) and return (t (N,), normals (N, 3)) with t = inf on a miss.


def _bound_hit(o, d, c, r):
    oc = o - c
    b = d @ oc
    cc = oc @ oc - r * r
    disc = b * b - cc
    return (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0), \
        -b - np.sqrt(np.maximum(disc, 0))


def _sphere(o, d, c, r):
    oc = o - c
    b = d @ oc
    disc = b * b - (oc @ oc - r * r)
    ok = disc >= 0
    t = np.where(ok, -b - np.sqrt(np.maximum(disc, 0)), _INF)
    t = np.where(t > 1e-4, t, _INF)
    n = (o + t[:, None] * d - c) / r
    return t, n


def _capsule(o, d, a, b, r):
    ba = b - a
    oa = o - a
    baba = ba @ ba
    bard = d @ ba
    baoa = oa @ ba
    rdoa = d @ oa
    oaoa = oa @ oa
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r * r * baba
    h = qb * qb - qa * qc
    with np.errstate(divide='ignore', invalid='ignore'):
        t_body = (-qb - np.sqrt(np.maximum(h, 0))) / qa
    y = baoa + t_body * bard
    body_ok = (h >= 0) & (qa > 1e-12) & (y > 0) & (y < baba)
    # End caps: the sphere at the end the body test fell off of.
    end = np.where((y <= 0)[:, None], a, b)
    oc = o - end
    bc = np.einsum('ij,ij->i', d, oc)
    cc = np.einsum('ij,ij->i', oc, oc) - r * r
    hc = bc * bc - cc
    t_cap = np.where(hc > 0, -bc - np.sqrt(np.maximum(hc, 0)), _INF)
    t = np.where(body_ok, t_body, t_cap)
    t = np.where(t > 1e-4, t, _INF)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    k = np.clip(((p - a) @ ba) / baba, 0.0, 1.0)
    n = (p - (a + k[:, None] * ba)) / r
    return t, n


def _box(o, d, c, h, yaw):
    cy, sy = np.cos(yaw), np.sin(yaw)
    rot = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # local->world
    ol = rot.T @ (o - c)
    dl = d @ rot
    dl = np.where(np.abs(dl) < 1e-9, 1e-9, dl)
    inv = 1.0 / dl
    t1 = (-h - ol) * inv
    t2 = (h - ol) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    axis = np.argmax(tn, axis=1)
    tmin = tn[np.arange(len(tn)), axis]
    tmax = tf.min(axis=1)
    ok = (tmax >= tmin) & (tmin > 1e-4)
    t = np.where(ok, tmin, _INF)
    nl = np.zeros_like(dl)
    nl[np.arange(len(dl)), axis] = -np.sign(dl[np.arange(len(dl)), axis])
    return t, nl @ rot.T


def _cylinder(o, d, c, r, h):
    ox, oz = o[0] - c[0], o[2] - c[2]
    dx, dz = d[:, 0], d[:, 2]
    qa = dx * dx + dz * dz
    qb = ox * dx + oz * dz
    qc = ox * ox + oz * oz - r * r
    disc = qb * qb - qa * qc
    with np.errstate(divide='ignore', invalid='ignore'):
        ts = (-qb - np.sqrt(np.maximum(disc, 0))) / qa
    ys = o[1] + ts * d[:, 1]
    side_ok = (disc >= 0) & (qa > 1e-12) & (ts > 1e-4) & (ys >= c[1]) & \
        (ys <= c[1] + h)
    ts = np.where(side_ok, ts, _INF)
    with np.errstate(divide='ignore', invalid='ignore'):
        tt = (c[1] + h - o[1]) / d[:, 1]
    px = ox + tt * dx
    pz = oz + tt * dz
    top_ok = (tt > 1e-4) & (px * px + pz * pz <= r * r) & (o[1] > c[1] + h)
    tt = np.where(top_ok, tt, _INF)
    t = np.minimum(ts, tt)
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([(p[:, 0] - c[0]) / r, np.zeros_like(t),
                  (p[:, 2] - c[2]) / r], axis=1)
    n[tt < ts] = (0.0, 1.0, 0.0)
    return t, n


_PRIM_FN = {
    'sphere': lambda o, d, p: _sphere(o, d, p['c'], p['r']),
    'capsule': lambda o, d, p: _capsule(o, d, p['a'], p['b'], p['r']),
    'box': lambda o, d, p: _box(o, d, p['c'], p['h'], p['yaw']),
    'cylinder': lambda o, d, p: _cylinder(o, d, p['c'], p['r'], p['h']),
}


def render(scene, rng=None, noise_sigma=4.0):
    """Ray cast a scene.

    Args:
        scene (Scene): From :func:`sample_scene`.
        rng (np.random.Generator, optional): Noise source (default: seeded
            from the scene, so rendering is deterministic).
        noise_sigma (float): Std of the additive Gaussian pixel noise (0..255
            scale).

    Returns:
        dict: ``image`` uint8 HxWx3 RGB; ``depth`` float32 HxW (z-depth, m);
        ``normals`` float32 HxWx3 (camera frame, unit); ``stype`` uint8 HxW
        (surface type, ``T_*``); ``surface`` int32 HxW (surface id: 0..5 room
        planes, then one per primitive); ``instance`` int32 HxW (0 room,
        k = k-th object); ``part_code`` uint8 HxW (0 or 1 + index into
        ``PART_NAMES``).
    """
    cam = scene.camera
    hgt, wid = cam.height, cam.width
    vv, uu = np.mgrid[0:hgt, 0:wid]
    xs = ((uu.ravel() + 0.5) - wid / 2) / cam.focal
    ys = ((vv.ravel() + 0.5) - hgt / 2) / cam.focal
    dirs = xs[:, None] * cam.right + ys[:, None] * cam.down + cam.forward
    norm = np.linalg.norm(dirs, axis=1)
    d = dirs / norm[:, None]
    zfac = 1.0 / norm  # t (unit ray) -> z-depth
    o = cam.origin
    n_pix = d.shape[0]

    # Room: the nearest of six inward-facing planes.
    rm = scene.room
    planes = [(1, rm['y0'], 1.0, T_FLOOR), (1, rm['ceil'], -1.0, T_CEILING),
              (0, rm['x0'], 1.0, T_WALL), (0, rm['x1'], -1.0, T_WALL),
              (2, rm['z1'], -1.0, T_WALL), (2, rm['z0'], 1.0, T_WALL)]
    ts = np.empty((6, n_pix))
    with np.errstate(divide='ignore', invalid='ignore'):
        for k, (ax, val, _, _) in enumerate(planes):
            tk = (val - o[ax]) / d[:, ax]
            ts[k] = np.where(tk > 1e-6, tk, np.inf)
    surf = np.argmin(ts, axis=0).astype(np.int32)
    t_best = ts[surf, np.arange(n_pix)]
    pn = np.zeros((6, 3))
    for k, (ax, _, sg, _) in enumerate(planes):
        pn[k, ax] = sg
    normal = pn[surf]
    stype_tab = [p[3] for p in planes]
    instance = np.zeros(n_pix, np.int32)
    part_code = np.zeros(n_pix, np.uint8)
    sid = 6
    for oi, obj in enumerate(scene.objects, start=1):
        hit, t_near = _bound_hit(o, d, *obj.bound)
        idx = np.nonzero(hit & (t_near < t_best))[0]
        if idx.size == 0:
            sid += len(obj.prims)
            stype_tab += [obj.otype] * len(obj.prims)
            continue
        dsub = d[idx]
        for prim, code in zip(obj.prims, obj.part_codes):
            stype_tab.append(obj.otype)
            if len(obj.prims) > 1:
                h2, tn2 = _bound_hit(o, dsub, *prim.bound)
                sub = np.nonzero(h2 & (tn2 < t_best[idx]))[0]
            else:
                sub = np.arange(idx.size)
            if sub.size:
                gi = idx[sub]
                t, n = _PRIM_FN[prim.kind](o, dsub[sub], prim.params)
                better = t < t_best[gi]
                gb = gi[better]
                t_best[gb] = t[better]
                normal[gb] = n[better]
                surf[gb] = sid
                instance[gb] = oi
                part_code[gb] = code
            sid += 1
    stype_tab = np.array(stype_tab, np.uint8)
    # Camera-frame normals, unit, facing the camera.
    rot = np.stack([cam.right, cam.down, cam.forward])  # world->camera
    normal = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    n_cam = normal @ rot.T
    flip = np.einsum('ij,ij->i', normal, d) > 0
    n_cam[flip] *= -1
    normal[flip] *= -1
    depth = t_best * zfac
    # Shading: Lambert with a point light + ambient, procedural textures.
    pts = o + t_best[:, None] * d
    to_l = scene.light - pts
    dist = np.linalg.norm(to_l, axis=1)
    lam = np.maximum(np.einsum('ij,ij->i', normal, to_l) / dist, 0.0)
    fall = 1.0 / (1.0 + 0.04 * dist * dist)
    shade = scene.ambient + (1.0 - scene.ambient) * lam * fall * 1.6
    mats = scene.materials
    col = np.array([m['color'] for m in mats], np.float32)[surf]
    tex = np.array([m['tex'] for m in mats])[surf]
    f1 = np.array([m['freq'] for m in mats])[surf]
    f2 = np.array([m['freq2'] for m in mats])[surf]
    amp = np.array([m['amp'] for m in mats], np.float32)[surf]
    s1 = np.sin(np.einsum('ij,ij->i', pts, f1))
    s2 = np.sin(np.einsum('ij,ij->i', pts, f2))
    pattern = np.select([tex == 1, tex == 2, tex == 3],
                        [np.sign(s1), np.sign(s1 * s2), s1 * s2], 0.0)
    albedo = col * (1.0 + amp * pattern)[:, None]
    img = albedo * shade[:, None] * 255.0
    if rng is None:
        rng = np.random.default_rng(int(surf.sum()) + n_pix)
    if noise_sigma > 0:
        img = img + rng.normal(0.0, noise_sigma, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8).reshape(hgt, wid, 3)
    return dict(image=img,
                depth=depth.reshape(hgt, wid).astype(np.float32),
                normals=n_cam.reshape(hgt, wid, 3).astype(np.float32),
                stype=stype_tab[surf].reshape(hgt, wid),
                surface=surf.reshape(hgt, wid),
                instance=instance.reshape(hgt, wid),
                part_code=part_code.reshape(hgt, wid))


def edges_from_render(out, rel_depth_jump=None):
    """Edge map at surface-id changes and depth discontinuities.

    A pixel is an edge when its right or lower neighbour lies on another
    surface (a different room plane, object or figure part), or, if
    ``rel_depth_jump`` is given, when the relative depth jump to it exceeds
    it. Every primitive is convex, so every depth discontinuity of these
    scenes already lies between two surfaces; the depth test is off by
    default because it also fires on planes seen at grazing angles.

    Args:
        out (dict): Output of :func:`render`.
        rel_depth_jump (float): Relative depth threshold.

    Returns:
        np.ndarray: bool HxW.
    """
    s, z = out['surface'], out['depth']
    e = np.zeros(s.shape, bool)
    dx = s[:, 1:] != s[:, :-1]
    dy = s[1:] != s[:-1]
    if rel_depth_jump is not None:
        dx |= np.abs(z[:, 1:] - z[:, :-1]) > rel_depth_jump * np.minimum(
            z[:, 1:], z[:, :-1])
        dy |= np.abs(z[1:] - z[:-1]) > rel_depth_jump * np.minimum(
            z[1:], z[:-1])
    e[:, :-1] |= dx
    e[:-1] |= dy
    return e
