"""The edge application of the video-analytics chapter: decode -> background
subtraction -> tracking -> line counting -> crop classification. It needs only OpenCV,
NumPy and (for the classifier) ONNX Runtime, which is what the edge container ships;
`python video_pipeline.py VIDEO --model M.onnx` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

CLASSES = ("car", "person")
CROP = 32  # the classifier's input: CROP x CROP RGB


def square_crop(
    frame: np.ndarray, box: tuple[float, float, float, float], size: int = CROP
) -> np.ndarray:
    """The box's centre, padded to a square 1.25x its longer side (edges replicated),
    resized to size x size."""
    x, y, w, h = box
    side = max(4, int(round(max(w, h) * 1.25)))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = side
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def to_input(crops: np.ndarray) -> np.ndarray:
    """uint8 crops (N, H, W, 3) BGR -> float32 (N, 3, H, W) in [0, 1]: the classifier's
    input."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def foreground_boxes(
    mask: np.ndarray, min_area: float
) -> list[tuple[int, int, int, int]]:
    """Clean a foreground mask (open, then close) and return the boxes of the blobs of
    at least min_area pixels."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [
        tuple(int(v) for v in stats[i, :4])
        for i in range(1, n)
        if stats[i, 4] >= min_area
    ]


@dataclass
class Track:
    track_id: int
    cx: float
    cy: float
    box: tuple[int, int, int, int]
    vx: float = 0.0
    vy: float = 0.0
    hits: int = 1
    missed: int = 0
    counted: bool = False


@dataclass
class CentroidTracker:
    """Greedy nearest-centroid matching with a constant-velocity prediction and a
    distance gate."""

    gate_px: float
    max_missed: int = 2
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0

    def update(
        self, boxes: list[tuple[int, int, int, int]]
    ) -> list[tuple[Track, float]]:
        """Match boxes to tracks; return (track, previous centre x) for every track
        matched in this step."""
        centres = [(x + w / 2, y + h / 2) for x, y, w, h in boxes]
        pairs = []
        for ti, t in enumerate(self.tracks):
            px, py = t.cx + t.vx * (t.missed + 1), t.cy + t.vy * (t.missed + 1)
            for di, (cx, cy) in enumerate(centres):
                d = float(np.hypot(cx - px, cy - py))
                if d <= self.gate_px:
                    pairs.append((d, ti, di))
        pairs.sort()
        used_t, used_d, matched = set(), set(), []
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t = self.tracks[ti]
            cx, cy = centres[di]
            prev_cx = t.cx
            t.vx, t.vy = (cx - t.cx) / (t.missed + 1), (cy - t.cy) / (t.missed + 1)
            t.cx, t.cy, t.box, t.hits, t.missed = cx, cy, boxes[di], t.hits + 1, 0
            matched.append((t, prev_cx))
        kept = []
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.missed += 1
            if t.missed <= self.max_missed:
                kept.append(t)
        for di, (cx, cy) in enumerate(centres):
            if di not in used_d:
                kept.append(Track(self.next_id, cx, cy, boxes[di]))
                self.next_id += 1
        self.tracks = kept
        return matched


def count_video(
    video_path: str,
    *,
    line_x_frac: float = 0.5,
    skip: int = 1,
    scale: float = 1.0,
    min_area_px: float = 60.0,
    gate_px: float = 8.0,
    gate_px_per_skip: float = 5.0,
    classify=None,
    keep_crops: bool = False,
    heartbeat: str | None = None,
) -> dict:
    """Run the pipeline on a video file. Geometry parameters are in full-resolution
    pixels.

    Every frame is decoded (grab); every `skip`-th is retrieved, resized by `scale` and
    processed. Returns the crossing events, the wall and CPU time, and the CPU time of
    every processed frame in ms (its decode included: CPU time, not wall time, is what a
    pod's CPU limit pays for). With `heartbeat`, that file's time is renewed after every
    processed frame: the pod's probes read its age."""
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video_path}")
    subtractor = cv2.createBackgroundSubtractorMOG2(
        history=200, varThreshold=25, detectShadows=False
    )
    tracker = CentroidTracker(gate_px=(gate_px + gate_px_per_skip * skip) * scale)
    events, cpu_ms, index = [], [], -1
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        c0 = time.process_time()
        if not cap.grab():
            break
        index += 1
        if index % skip:
            continue
        ok, frame = cap.retrieve()
        if not ok:
            break
        small = (
            frame
            if scale == 1.0
            else cv2.resize(
                frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA
            )
        )
        line_x = small.shape[1] * line_x_frac
        mask = subtractor.apply(small)
        boxes = foreground_boxes(mask, min_area_px * scale * scale)
        for track, prev_cx in tracker.update(boxes):
            crossed = (prev_cx < line_x <= track.cx) - (prev_cx >= line_x > track.cx)
            if crossed and not track.counted and track.hits >= 3:
                track.counted = True
                full_box = tuple(v / scale for v in track.box)
                event = {
                    "frame": index,
                    "direction": int(crossed),
                    "track_id": track.track_id,
                    "box": [round(v, 1) for v in full_box],
                }
                if classify is not None or keep_crops:
                    crop = square_crop(frame, full_box)
                    if classify is not None:
                        event["label"] = classify(crop)
                    if keep_crops:
                        event["crop"] = crop
                events.append(event)
        if heartbeat:
            os.utime(heartbeat) if os.path.exists(heartbeat) else open(
                heartbeat, "w"
            ).close()
        cpu_ms.append((time.process_time() - c0) * 1000)
    cap.release()
    return {
        "events": events,
        "frames": index + 1,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "cpu_ms": cpu_ms,
    }


def onnx_classifier(model_path: str):
    """A crop -> class-name function backed by a single-threaded ONNX Runtime
    session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model_path, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def classify(crop: np.ndarray) -> str:
        logits = session.run(None, {name: to_input(crop[None])})[0]
        return CLASSES[int(logits[0].argmax())]

    return classify


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss would include the
    parent's memory at fork, which Linux carries across exec), ru_maxrss elsewhere."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Count cars and people crossing a line in a video."
    )
    parser.add_argument("video")
    parser.add_argument("--model", help="ONNX crop classifier")
    parser.add_argument("--skip", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--heartbeat", help="file renewed after every frame (probes)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    classify = onnx_classifier(args.model) if args.model else None
    result = count_video(
        args.video,
        skip=args.skip,
        scale=args.scale,
        classify=classify,
        heartbeat=args.heartbeat,
    )
    counts: dict[str, int] = {}
    for e in result["events"]:
        key = f"{e.get('label', 'object')}:{'right' if e['direction'] > 0 else 'left'}"
        counts[key] = counts.get(key, 0) + 1
    lat = sorted(result["cpu_ms"])
    print(
        json.dumps(
            {
                "frames": result["frames"],
                "counts": dict(sorted(counts.items())),
                "fps_cpu": result["frames"] / result["cpu_s"],
                "fps_wall": result["frames"] / result["wall_s"],
                "p95_cpu_ms": lat[max(0, -(-95 * len(lat) // 100) - 1)],
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
