"""The simulated street and LiDAR of the driving-perception chapter: a world of
oriented boxes, a ray-cast 32-beam sensor with range noise, dropout and spurious
returns, and a box-drawing helper for the plots. Plumbing for the chapter, which
teaches what happens to these sweeps."""

import numpy as np
from matplotlib.patches import Polygon

BEAM_ELEVATIONS_DEG = np.linspace(
    -30.67, 10.67, 32
)  # HDL-32E-like fan: 32 beams, 1.33 degrees apart
SENSOR_HEIGHT_M = 1.8
GROUND_SLOPE = (0.02, -0.012)  # dz/dx, dz/dy of the road surface
CLASSES = ("car", "pedestrian", "clutter")
GROUND_ID, SPURIOUS_ID = -1, -2


def ground_z(x, y):
    return GROUND_SLOPE[0] * x + GROUND_SLOPE[1] * y - SENSOR_HEIGHT_M


def make_world(rng, n_cars=14, n_pedestrians=10, n_clutter=16):
    # Objects as dicts: class index, position at t=0, heading, velocity, box size
    # (length, width, height).
    lane_speed = {
        -5.25: rng.uniform(6, 14),
        -1.75: rng.uniform(6, 14),
        1.75: rng.uniform(6, 14),
        5.25: rng.uniform(6, 14),
        -8.6: 0.0,
        8.6: 0.0,
    }  # |y| = 8.6: parked
    objects = []

    def free(x, y, radius):
        return np.hypot(x, y) > 5 and all(
            np.hypot(x - o["x"], y - o["y"]) > radius + 0.5 * np.hypot(*o["size"][:2])
            for o in objects
        )

    while sum(o["cls"] == 0 for o in objects) < n_cars:
        lane = float(rng.choice(list(lane_speed)))
        x, y = rng.uniform(-55, 55), lane + rng.normal(0, 0.15)
        if free(x, y, 3.5):  # same lane, same speed: cars never drive into each other
            direction = 1 if lane < 0 else -1
            objects.append(
                dict(
                    cls=0,
                    x=x,
                    y=y,
                    yaw=(0.0 if direction > 0 else np.pi) + rng.normal(0, 0.03),
                    vx=direction * lane_speed[lane],
                    vy=0.0,
                    size=(
                        rng.uniform(3.9, 4.9),
                        rng.uniform(1.7, 1.95),
                        rng.uniform(1.4, 1.7),
                    ),
                )
            )
    while sum(o["cls"] == 1 for o in objects) < n_pedestrians:
        x, y = rng.uniform(-40, 40), rng.choice([-1, 1]) * rng.uniform(10.5, 12)
        if free(x, y, 1.0):
            speed = rng.uniform(0.8, 1.6) * rng.choice([-1, 1])
            objects.append(
                dict(
                    cls=1,
                    x=x,
                    y=y,
                    yaw=0.0 if speed > 0 else np.pi,
                    vx=speed,
                    vy=rng.normal(0, 0.1),
                    size=(
                        rng.uniform(0.45, 0.65),
                        rng.uniform(0.45, 0.65),
                        rng.uniform(1.55, 1.9),
                    ),
                )
            )
    while sum(o["cls"] == 2 for o in objects) < n_clutter:
        kind = rng.choice(["pole", "bush", "bin"])
        size = {
            "pole": (0.25, 0.25, rng.uniform(3, 6)),
            "bin": (0.6, 0.6, 1.0),
            "bush": (rng.uniform(1, 3), rng.uniform(1, 2.5), rng.uniform(0.6, 1.4)),
        }[kind]
        x, y = rng.uniform(-55, 55), rng.choice([-1, 1]) * rng.uniform(13.5, 18)
        if free(x, y, 1.5):
            objects.append(
                dict(
                    cls=2,
                    x=x,
                    y=y,
                    yaw=rng.uniform(0, np.pi),
                    vx=0.0,
                    vy=0.0,
                    size=size,
                )
            )
    return objects


def position(obj, frame, frame_s):
    """An object's centre (x, y) at `frame`, `frame_s` seconds apart."""
    t = frame * frame_s
    return obj["x"] + obj["vx"] * t, obj["y"] + obj["vy"] * t


def scan(objects, frame, rng, *, azimuth_steps, max_range_m, frame_s):
    # One sweep: (points N x 3 float32, ids N) where ids are object indices, GROUND_ID
    # or SPURIOUS_ID.
    azimuth = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False)
    A, E = np.meshgrid(
        azimuth, np.deg2rad(BEAM_ELEVATIONS_DEG)
    )  # rows: beams, columns: azimuth steps
    rays = np.stack([np.cos(A) * np.cos(E), np.sin(A) * np.cos(E), np.sin(E)], -1)
    toward_ground = (
        rays[..., 2] - GROUND_SLOPE[0] * rays[..., 0] - GROUND_SLOPE[1] * rays[..., 1]
    )
    t_hit = np.where(
        toward_ground < -1e-6,
        -SENSOR_HEIGHT_M / np.minimum(toward_ground, -1e-6),
        np.inf,
    )
    hit = np.full(t_hit.shape, GROUND_ID)
    step = 2 * np.pi / azimuth_steps
    for k, obj in enumerate(objects):
        cx, cy = position(obj, frame, frame_s)
        length, width, height = obj["size"]
        half_angle = np.arcsin(
            min(1.0, 0.5 * np.hypot(length, width) / np.hypot(cx, cy))
        )
        centre = np.arctan2(cy, cx) + np.pi
        cols = (
            np.arange(
                int((centre - half_angle) / step), int((centre + half_angle) / step) + 2
            )
            % azimuth_steps
        )
        c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
        r = rays[:, cols]
        local = np.stack(
            [c * r[..., 0] + s * r[..., 1], -s * r[..., 0] + c * r[..., 1], r[..., 2]],
            -1,
        )
        origin = np.array(
            [-c * cx - s * cy, s * cx - c * cy, 0.0]
        )  # the sensor in the box's frame
        bottom = ground_z(cx, cy)
        lo = np.array([-length / 2, -width / 2, bottom])
        hi = np.array([length / 2, width / 2, bottom + height])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origin) / local, (hi - origin) / local
        t_near = np.nanmax(np.minimum(t1, t2), -1)
        t_far = np.nanmin(np.maximum(t1, t2), -1)
        nearer = (t_far >= t_near) & (t_near > 0) & (t_near < t_hit[:, cols])
        t_hit[:, cols] = np.where(nearer, t_near, t_hit[:, cols])
        hit[:, cols] = np.where(nearer, k, hit[:, cols])
    rays, t_hit, hit = rays.reshape(-1, 3), t_hit.ravel(), hit.ravel()
    in_range = np.minimum(t_hit, max_range_m)
    keep = (t_hit < max_range_m) & (
        rng.random(t_hit.size) > 0.03 + 0.45 * (in_range / max_range_m) ** 2
    )
    ranges = t_hit[keep] + rng.normal(0, 0.02, keep.sum())
    points = rays[keep] * ranges[:, None]
    n_spurious = int(0.002 * t_hit.size)
    spurious = np.column_stack(
        [
            rng.uniform(-40, 40, n_spurious),
            rng.uniform(-40, 40, n_spurious),
            rng.uniform(-1.5, 1.5, n_spurious),
        ]
    )
    return (
        np.vstack([points, spurious]).astype(np.float32),
        np.concatenate([hit[keep], np.full(n_spurious, SPURIOUS_ID)]),
    )


def draw_box(ax, centre, length, width, yaw, **style):
    c, s = np.cos(yaw), np.sin(yaw)
    corners = (
        np.array(
            [[length, width], [length, -width], [-length, -width], [-length, width]]
        )
        / 2
    )
    ax.add_patch(
        Polygon(
            corners @ np.array([[c, s], [-s, c]]) + centre,
            closed=True,
            fill=False,
            **style,
        )
    )
