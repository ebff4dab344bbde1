"""The parts of the industrial-inspection chapter: machined washers, good or with one
defect of a kind, drawn as a line camera would see them; and the probe that scores
parts in a separate process, as the inspection container would. Plumbing for the
chapter, which teaches what is done with these images."""

import json
import sys
import time

import numpy as np

DEFECT_TYPES = ("scratch", "spot", "missing", "bore")
KNOWN_TYPES = DEFECT_TYPES[:3]  # the catalogue; "bore" is new


def draw_part(rng, S):
    """A good part: a machined washer (ring with a bore) with concentric turning marks,
    placed by a fixture to within a fraction of a pixel and lit slightly differently
    each time, on a dark belt, with sensor noise."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    cx, cy = S / 2 + rng.normal(0, 0.3), S / 2 + rng.normal(0, 0.3)
    r = np.hypot(xx - cx, yy - cy)
    outer, inner = (
        S * 0.42 * rng.uniform(0.995, 1.005),
        S * 0.16 * rng.uniform(0.99, 1.01),
    )
    # anti-aliased edges
    part = np.clip(outer - r + 0.5, 0, 1) * np.clip(r - inner + 0.5, 0, 1)
    angle = np.arctan2(yy - cy, xx - cx)
    light = rng.uniform(0.85, 1.15)
    turning = 0.5 + 0.5 * np.sin(r * 2.8 + rng.uniform(0, 2 * np.pi))
    shading = 0.8 + 0.2 * np.cos(angle - rng.uniform(0, 2 * np.pi))  # lit from one side
    img = part * (150 + 12 * turning) * shading * light + (1 - part) * 35
    img = img + rng.normal(0, 4, (S, S))
    return np.clip(img, 0, 255).astype(np.float32), (cx, cy, outer, inner)


def add_defect(img, geometry, kind, rng, S):
    """Draw one defect of `kind` onto a part image (in place)."""
    import cv2  # here, so that the probe process loads no OpenCV

    cx, cy, outer, inner = geometry
    theta = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(inner + 3, outer - 3)
    px, py = cx + rad * np.cos(theta), cy + rad * np.sin(theta)
    if kind == "scratch":
        length, phi = rng.uniform(8, 18) * S / 64, rng.uniform(0, np.pi)
        dx, dy = length / 2 * np.cos(phi), length / 2 * np.sin(phi)
        value = float(rng.choice([45.0, 235.0]))
        cv2.line(
            img,
            (int(px - dx), int(py - dy)),
            (int(px + dx), int(py + dy)),
            value,
            1,
            cv2.LINE_AA,
        )
    elif kind == "spot":
        cv2.circle(
            img,
            (int(px), int(py)),
            int(rng.integers(3, 5) * S / 64),
            float(rng.uniform(40, 70)),
            -1,
            cv2.LINE_AA,
        )
    elif kind == "bore":  # an oversize bore: the belt shows through a wider hole
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        hole = np.clip(
            inner * rng.uniform(1.15, 1.3) - np.hypot(xx - cx, yy - cy), 0, 1
        )
        img[:] = hole * (35 + rng.normal(0, 4, (S, S))) + (1 - hole) * img
    else:  # a chipped rim: a bite out of the outer edge shows the belt
        bx, by = cx + outer * np.cos(theta), cy + outer * np.sin(theta)
        cv2.circle(
            img,
            (int(bx), int(by)),
            int(rng.uniform(4, 6) * S / 64),
            38.0,
            -1,
            cv2.LINE_AA,
        )
    return img


def make_parts(n, rng, defect_rate, kinds=DEFECT_TYPES, *, S=64):
    """n parts, a share `defect_rate` of them with one defect of a kind from `kinds`.
    Returns 8-bit images scaled to [0, 1], (n, 1, S, S), and a label per part ("good"
    or the defect kind)."""
    images, labels = np.empty((n, 1, S, S), np.float32), []
    for i in range(n):
        img, geometry = draw_part(rng, S)
        label = "good"
        if rng.random() < defect_rate:
            label = str(rng.choice(kinds))
            add_defect(img, geometry, label, rng, S)
        images[i, 0] = np.rint(img) / 255.0  # whole grey levels, as a camera delivers
        labels.append(label)
    return images, np.array(labels)


def probe(model_path, parts_path):
    """Score saved parts one at a time, as the container would, importing only ONNX
    Runtime and NumPy; return the p95 CPU time per part and the peak memory."""

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options)
    cpu = []
    for part in np.load(parts_path):
        c0 = time.process_time()
        session.run(None, {"input": part[None]})
        cpu.append((time.process_time() - c0) * 1000)
    status = open("/proc/self/status").read().splitlines()
    hwm = int(next(s for s in status if s.startswith("VmHWM:")).split()[1]) / 1024
    cpu.sort()
    p95 = cpu[int(0.95 * len(cpu)) - 1]
    return {"p95_cpu_ms": p95, "peak_rss_mib": hwm}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
