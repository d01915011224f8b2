"""Oracle accuracy and speed of the parser (parsing.parse_poses) on real AIC annotations.

    python benchmarks/bench_parser.py [--limit N] [--repeats 5] [--no-ablations] [config options]

For every image of ../shared/data/aic_keypoint_annotations_sample.json (488 images, 1,342
people) the ground-truth maps are rendered with data_generator.render_targets as the network
would see them: the image is scaled to cfg.inference_height rows (368) on a grid of cfg.stride
(8). The images themselves are not in the sample, so the canvas is the annotations' extent
(labelled keypoints and boxes) plus a margin, exactly as `evaluate.py --oracle` does
(evaluate.oracle_canvas: extent * 1.05 + 8 px). The maps are parsed, mapped back to original
pixels and scored with the official metric (evaluate.aic_map): this "oracle" mAP is the ceiling
that the parser leaves to a perfect network.

Parsing time is measured on one core (OpenMP/BLAS/OpenCV threads set to 1) with the maps already
computed: per image the best of --repeats runs, then the median over images, for the whole
parse_poses call and for its parts: peaks (find_peaks), scoring (score_limbs), matching
(match_limbs) and assembly (assemble_people + conversion to pixels).

Defaults are the paper preset's (stride 8, sigma 7 px, PAF half-width 1 cell); any Config field
can be overridden (e.g. --peak_smoothing 0.5). Unless --no-ablations, a few variants of the
parser settings are scored too, among them both limb-acceptance rules (more than, or at least,
paf_min_fraction of the samples) and both output formats (sub-pixel floats, or whole pixels,
which the official evaluator floor-divides); a variant equal to the configuration scores the
same as it. The "limb-graph ceiling" row is what a perfect assembly along
config.LIMBS alone could score: a person whose connecting joint is unlabelled (a neck cut off
by the image border) falls apart into fragments that no PAF joins, which is why the parser
joins fragments across missing joints. The last line is JSON.
"""

from __future__ import annotations

import common

common.one_thread()

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import config  # noqa: E402
import evaluate  # noqa: E402
import parsing  # noqa: E402
# Parser variants scored besides the configuration given (name, field overrides).
ABLATIONS = (
    ("greedy matching", {"limb_matching": "greedy"}),
    ("no fragment joining", {"fragment_join_ratio": 0.0}),
    ("peak_smoothing 0", {"peak_smoothing": 0.0}),
    ("peak_smoothing 1", {"peak_smoothing": 1.0}),
    ("min_limb_length 1", {"min_limb_length": 1.0}),
    ("limbs: >= 8 of 10", {"limb_acceptance": "at_least"}),
    ("limbs: > 8 of 10", {"limb_acceptance": "more_than"}),
    ("integer output", {"integer_output": True}),
    ("sub-pixel output", {"integer_output": False}),
)


def render_all(references, cfg):
    """[(heatmaps, pafs, factor)] per reference record (evaluate.oracle_maps), and the mean
    render time in ms."""
    started = time.perf_counter()
    rendered = [evaluate.oracle_maps(record, cfg) for record in references]
    return rendered, 1000.0 * (time.perf_counter() - started) / max(len(references), 1)


def parse_timed(heatmaps, pafs, factor, cfg):
    """parse_poses split into its parts: (people, seconds per part as a dict)."""
    times = {}
    started = time.perf_counter()
    parsing.check_maps(heatmaps, pafs)
    peaks = parsing.find_peaks(heatmaps, cfg)
    times["peaks"] = time.perf_counter() - started
    started = time.perf_counter()
    candidates = parsing.score_limbs(peaks, pafs, cfg)
    times["scoring"] = time.perf_counter() - started
    started = time.perf_counter()
    connections = parsing.match_limbs(
        candidates, peaks, cfg.limb_matching)
    times["matching"] = time.perf_counter() - started
    started = time.perf_counter()
    members, _ = parsing.assemble_people(peaks, connections, cfg)
    people = parsing.people_from_members(peaks, members, cfg.stride, (factor, factor))
    times["assembly"] = time.perf_counter() - started
    return people, times


def time_parsing(rendered, cfg, repeats):
    """Median over images of the best-of-`repeats` milliseconds, per part and in total."""
    best = {}
    for index, (heatmaps, pafs, factor) in enumerate(rendered):
        for _ in range(repeats):
            started = time.perf_counter()
            parsing.parse_poses(heatmaps, pafs, cfg, stride=cfg.stride, scale=(factor, factor))
            total = time.perf_counter() - started
            _, parts = parse_timed(heatmaps, pafs, factor, cfg)
            parts["total"] = total
            for name, seconds in parts.items():
                row = best.setdefault(name, np.full(len(rendered), np.inf))
                row[index] = min(row[index], seconds)
    return {name: {"median_ms": float(np.median(values) * 1000.0),
                   "p90_ms": float(np.percentile(values, 90) * 1000.0),
                   "mean_ms": float(np.mean(values) * 1000.0)} for name, values in best.items()}


def oracle_score(rendered, references, cfg):
    """evaluate.aic_map of the parsed ground-truth maps (evaluate.oracle_entry)."""
    predictions = [evaluate.oracle_entry(record["image_id"], heatmaps, pafs, factor, cfg)
                   for (heatmaps, pafs, factor), record in zip(rendered, references)]
    return evaluate.aic_map(predictions, references)


def limb_components(labelled):
    """Lists of joints connected by config.LIMBS among the labelled ones (bool (14,))."""
    component = list(range(config.NUM_JOINTS))

    def root(joint):
        while component[joint] != joint:
            joint = component[joint]
        return joint

    for a, b in config.LIMBS:
        if labelled[a] and labelled[b]:
            component[root(a)] = root(b)
    groups = {}
    for joint in np.nonzero(labelled)[0]:
        groups.setdefault(root(joint), []).append(joint)
    return list(groups.values())


def connectivity_ceiling(references, min_parts):
    """The score of a parser that assembles every person perfectly but only along the limb
    graph: each person's labelled joints (v 1 or 2) split into limb-connected components, and
    each component with >= min_parts joints is a predicted person (at the true positions).
    What the oracle scores above this comes from joining fragments across missing joints."""
    predictions = []
    for record in references:
        keypoints, _ = evaluate.reference_keypoints(record)
        people = {}
        for person in keypoints:
            for joints in limb_components((person[:, 2] == 1) | (person[:, 2] == 2)):
                if len(joints) >= min_parts:
                    predicted = np.zeros((config.NUM_JOINTS, 3))
                    predicted[joints, :2], predicted[joints, 2] = person[joints, :2], 1
                    people[f"human{len(people) + 1}"] = \
                        np.rint(predicted).astype(int).reshape(-1).tolist()
        predictions.append({"image_id": record["image_id"], "keypoint_annotations": people})
    return evaluate.aic_map(predictions, references)


def summary(result):
    keys = ("score", "ap50", "ap75", "num_gt", "num_pred", "missed_people", "spurious_people")
    return {key: result[key] for key in keys}


def print_report(cfg, result, timing, render_ms, ablations, ceiling):
    print(f"oracle on {result['num_images']} images, {result['num_gt']} people; stride "
          f"{cfg.stride}, sigma {cfg.heatmap_sigma}, paf_width {cfg.paf_width}, inference "
          f"height {cfg.inference_height}; rendering {render_ms:.2f} ms/image")
    print(f"{'':24s}{'mAP':>9s}{'AP50':>8s}{'AP75':>8s}{'missed':>8s}{'spurious':>9s}")
    rows = ([("configuration", result)] + [(name, value) for name, value in ablations]
            + [("limb-graph ceiling", ceiling)])
    for name, row in rows:
        print(f"{name:24s}{row['score']:9.5f}{row['ap50']:8.4f}{row['ap75']:8.4f}"
              f"{row['missed_people']:8d}{row['spurious_people']:9d}")
    print("\nparsing, one core, ms/image (best of repeats per image):")
    print(f"{'part':12s}{'median':>9s}{'p90':>9s}{'mean':>9s}")
    for name in ("peaks", "scoring", "matching", "assembly", "total"):
        print(f"{name:12s}{timing[name]['median_ms']:9.3f}{timing[name]['p90_ms']:9.3f}"
              f"{timing[name]['mean_ms']:9.3f}")
    per_keypoint = result["per_keypoint"]
    print("\nper-keypoint accuracy: " + ", ".join(
        f"{name} {value:.3f}" for name, value in zip(config.JOINT_NAMES, per_keypoint)
        if value is not None))


def main(argv=None):
    parser = common.annotation_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timing runs per image")
    parser.add_argument("--no-ablations", "--no_ablations", action="store_true",
                        help="score only the configuration given")
    args, cfg, references = common.parse_with_config(parser, argv)
    rendered, render_ms = render_all(references, cfg)
    result = oracle_score(rendered, references, cfg)
    ablations = [] if args.no_ablations else [
        (name, oracle_score(rendered, references, dataclasses.replace(cfg, **overrides)))
        for name, overrides in ABLATIONS]
    ceiling = connectivity_ceiling(references, cfg.min_parts)
    timing = time_parsing(rendered, cfg, max(args.repeats, 1))
    print_report(cfg, result, timing, render_ms, ablations, ceiling)
    parser_settings = {name: getattr(cfg, name) for name in (
        "peak_threshold", "peak_smoothing", "paf_threshold", "paf_samples", "paf_min_fraction",
        "min_limb_length", "min_parts", "min_person_score", "limb_matching", "fragment_join_ratio",
        "max_peaks_per_joint", "limb_acceptance", "integer_output")}
    print(json.dumps({
        "oracle_map": round(result["score"], 6), "goal_map": 0.98,
        "parse_ms_median": round(timing["total"]["median_ms"], 4), "goal_ms": 5.0,
        "parse_ms_split": {name: round(timing[name]["median_ms"], 4)
                           for name in ("peaks", "scoring", "matching", "assembly")},
        "render_ms_mean": round(render_ms, 3), "images": result["num_images"],
        "oracle": summary(result), "settings": parser_settings,
        "limb_graph_ceiling": summary(ceiling),
        "ablations": {name: summary(value) for name, value in ablations},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
