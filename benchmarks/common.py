"""What the benchmarks on the shared AI Challenger annotations have in common.

    import common
    common.one_thread()                        # before numpy, cv2 or TensorFlow are imported
    parser = common.annotation_parser(__doc__)  # --ref (the shared sample), --limit
    args, cfg, references = common.parse_with_config(parser, argv)

ROOT (the repository) is put on sys.path, so that the benchmarks import the project's modules.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# The real AIC validation annotations of the shared sample (488 images, 1,342 people; no images).
SAMPLE_REFERENCE = os.path.join(ROOT, "..", "shared", "data",
                                "aic_keypoint_annotations_sample.json")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def one_thread():
    """Give OpenMP, BLAS and NumPy's helpers one thread, so that timings are of one core.

    They read these variables when they load: call it before numpy, cv2 or TensorFlow are
    imported. OpenCV's own threads are limited by parse_with_config.
    """
    for variable in THREAD_VARIABLES:
        os.environ[variable] = "1"


def annotation_parser(docstring):
    """An ArgumentParser described by the docstring's first paragraph, with --ref (default: the
    shared sample) and --limit N (only the first N images)."""
    parser = argparse.ArgumentParser(description=docstring.split("\n\n")[0])
    parser.add_argument("--ref", default=SAMPLE_REFERENCE,
                        help="AIC annotation JSON (default: the shared 488-image sample)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    return parser


def parse_with_config(parser, argv=None):
    """(args, Config, reference records) of a command line: the parser's options plus every
    Config field; OpenCV is limited to one thread for the timings."""
    import cv2

    import aic_metric
    import config

    config.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    references = aic_metric.load_json_list(args.ref, "reference")[:args.limit]
    return args, config.config_from_args(args), references
