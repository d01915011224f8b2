"""The tf.data input pipeline of train.py: records -> shuffled, sharded, batched samples.

``make_dataset`` turns the records that pre-process.py wrote into batches of (uint8 images,
{"heatmaps", "pafs", "mask"}). It owns what is the same whatever makes the samples: sharding
over input pipelines (tf.distribute), shuffling and repeating, batching, prefetching, handing
training to tf.data service workers, and the size of TensorFlow's intra-op pool.

Two pipelines make the samples (cfg.pipeline)
    "tf" (the default): tf_pipeline.py makes each sample with TensorFlow graph ops inside
    tf.data's parallel map (read, decode, warp, colour jitter, targets, mask), so it runs on as
    many cores as tf.data gives it and can run on tf.data service workers (see
    distribute_on_service and data_service.py). "numpy": data_generator.py's functions, one
    ``tf.numpy_function`` call per sample; OpenCV and file reads release the GIL but the
    Python and numpy work between them does not, so it does not scale past a few cores. The
    numpy functions stay the reference: the tests check that the graph ops give the same
    targets, keypoints and masks. In both, randomness comes from the seed (cfg.seed, shard, n)
    where n counts the samples drawn, so a sample does not depend on which thread made it
    (np.random.default_rng in one, stateless TF random ops in the other: the two pipelines
    draw different numbers).

Imports point one way: dataset -> tf_pipeline -> data_generator, and dataset -> data_generator.
TensorFlow is imported inside the functions, so that importing this module does not start it
(configure_host_threads must run before it starts).
"""

from __future__ import annotations

import logging
import os
import socket

import numpy as np

import data_generator
from config import NUM_HEATMAPS, NUM_PAFS

LOGGER = logging.getLogger("dataset")


def resolve_shard(shard, input_context):
    """(num_shards, shard_index, per-replica batch or None) from a tuple or an InputContext."""
    if shard is not None and hasattr(shard, "num_input_pipelines"):
        shard, input_context = None, shard
    if input_context is not None:
        return (input_context.num_input_pipelines, input_context.input_pipeline_id,
                input_context.get_per_replica_batch_size)
    if shard is None:
        return 1, 0, None
    num_shards, shard_index = (int(value) for value in shard)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is not in 0..{num_shards - 1}")
    return num_shards, shard_index, None


PIPELINES = ("tf", "numpy")


def pipeline_problem(cfg):
    """What is wrong with cfg.pipeline and cfg.data_service_address, in one line, or ""."""
    if cfg.pipeline not in PIPELINES:
        return f"--pipeline must be one of {', '.join(PIPELINES)}, got {cfg.pipeline!r}"
    if cfg.data_service_address and cfg.pipeline != "tf":
        return "--data_service_address needs --pipeline tf (tf.data service runs graph ops only)"
    if cfg.intra_op_threads < -1:
        return f"--intra_op_threads must be -1 (auto), 0 (TensorFlow's default) or more, got " \
               f"{cfg.intra_op_threads}"
    return ""


def intra_op_threads(setting, accelerators):
    """The size of TensorFlow's intra-op thread pool to ask for; 0 leaves TensorFlow's default.

    setting: cfg.intra_op_threads (-1 auto, 0 default, N threads); accelerators: whether the
    model trains on GPUs. Auto picks 1 there: the host's cores then only make samples, each
    tf.data thread its own, and the pool is where XLA splits every large loop of the tf
    pipeline's kernels (the warp, the targets) into one piece per thread and makes the calling
    thread wait for them. With every core busy with other samples, that split costs more than it
    gains: on two cores, two tf.data threads gave 1.95 times one thread's rate with a pool of 1
    and 1.65 times with TensorFlow's default pool (benchmarks/bench_pipeline.py against
    bench_pipeline.py --intra_op_threads 0). A model trained on the CPU needs the pool, so auto
    leaves TensorFlow's default there.
    """
    if setting == -1:
        return 1 if accelerators else 0
    return setting


def configure_host_threads(cfg, accelerators=None):
    """Apply cfg.intra_op_threads (see intra_op_threads) before TensorFlow starts its pools.

    accelerators: None asks TensorFlow whether a GPU is visible (this does not start it).
    Returns the pool size asked for (0: TensorFlow's default). Once TensorFlow has started, the
    pool cannot change: a warning says so and the pool stays as it is.
    """
    import tensorflow as tf

    if accelerators is None:
        accelerators = bool(tf.config.list_physical_devices("GPU"))
    threads = intra_op_threads(cfg.intra_op_threads, accelerators)
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            LOGGER.warning("TensorFlow has already started; its intra-op pool stays at its size "
                           "rather than --intra_op_threads %d", threads)
            return tf.config.threading.get_intra_op_parallelism_threads()
    return threads


def make_dataset(cfg, split, training, shard=None, input_context=None, skip_counts=None):
    """Batched tf.data.Dataset of (images, {"heatmaps", "pafs", "mask"}) for `split`.

    images uint8 (B, S, S, 3) RGB; heatmaps (B, g, g, 15), pafs (B, g, g, 30),
    mask (B, g, g, 1) float32 with S = cfg.input_size, g = S // cfg.stride. training=True:
    shuffled with cfg.seed, augmented, repeated forever, full batches only; training=False:
    deterministic single pass, letterboxed, last batch may be short. shard: (num_shards,
    shard_index) or a tf.distribute.InputContext (also accepted as input_context, which then
    sets the per-replica batch size). skip_counts: a Counter that receives the number of
    skipped samples per reason. cfg.pipeline picks how samples are made: "tf" (tf_pipeline.py,
    graph ops, the default) or "numpy" (this module's functions in a tf.numpy_function).
    With cfg.data_service_address set, training batches are made by tf.data service workers
    (see distribute_on_service); skip_counts then stays empty and the workers log the skips.
    """
    import tensorflow as tf

    problem = pipeline_problem(cfg)
    if problem:
        raise ValueError(problem)
    service = training and bool(cfg.data_service_address)
    records = data_generator.load_records(cfg, split)
    if service:  # the workers run elsewhere, in other folders: they need absolute paths
        records.paths = [os.path.abspath(path) for path in records.paths]
    num_shards, shard_index, per_replica = resolve_shard(shard, input_context)
    batch_size = per_replica(cfg.batch_size) if per_replica else cfg.batch_size
    dataset = tf.data.Dataset.range(len(records))
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)
    if training:
        dataset = dataset.shuffle(len(records) // num_shards + 1, seed=cfg.seed,
                                  reshuffle_each_iteration=True).repeat()
    if cfg.pipeline == "tf":
        import tf_pipeline

        reporter = None if service else data_generator.SkipReporter(skip_counts)
        samples = tf_pipeline.sample_dataset(cfg, records, dataset.enumerate(), training,
                                             shard_index, reporter)
    else:
        samples = _numpy_samples(cfg, records, dataset.enumerate(), training, shard_index,
                                 skip_counts)
    dataset = batched(samples, batch_size, training)
    if service:
        dataset = distribute_on_service(dataset, cfg.data_service_address)
    return dataset.prefetch(tf.data.AUTOTUNE)


def batched(samples, batch_size, training):
    """Batches of (uint8 images, targets) from unbatched pairs; training drops a short last batch.

    The images stay uint8: the model's float32 input casts them (Keras casts a Functional
    model's inputs to the Input's dtype), inside the training step and so on the accelerator.
    A cast here cost about 0.4 ms of host CPU per 368 x 368 sample, a tenth of the pipeline's
    work, and would send four times the bytes to the device.
    """
    import tensorflow as tf

    return samples.batch(batch_size, drop_remainder=training,
                         num_parallel_calls=tf.data.AUTOTUNE)


def _numpy_samples(cfg, records, indices, training, shard_index, skip_counts):
    """Unbatched (uint8 image, targets) made by SampleLoader in a tf.numpy_function."""
    import tensorflow as tf

    loader = data_generator.SampleLoader(cfg, records, training, skip_counts, shard_index)
    outputs = (tf.uint8, tf.float32, tf.float32, tf.float32, tf.int32)

    def load(draw, index):
        return tf.numpy_function(loader, [index, draw], outputs, stateful=False)

    samples = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    samples = samples.filter(lambda *sample: tf.equal(sample[-1], 0))
    return samples.map(_shape_sample(cfg), num_parallel_calls=tf.data.AUTOTUNE)


def service_problem(address, timeout=5.0):
    """What keeps the tf.data service dispatcher at `address` ("grpc://host:port") from being
    used, in one line, or "" when something accepts connections there.

    tf.data service's client retries an absent dispatcher for as long as training would run,
    silently; a plain TCP connection tells a mistyped address or a dispatcher that is not up
    in seconds instead.
    """
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"--data_service_address {address}: expected grpc://HOST:PORT"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        return (f"--data_service_address {address}: no dispatcher answers there "
                f"({error.strerror or error}); start one with "
                f"python data_service.py dispatcher --port {port}")
    return ""


def distribute_on_service(dataset, address):
    """`dataset`'s elements, made by the tf.data service whose dispatcher is at `address`.

    address: "grpc://host:port". Sharding policy DYNAMIC (a "distributed epoch"): the dispatcher
    hands out the record indices in splits, so each worker makes different samples and a worker
    can join or leave; which worker gets which split, and so the order of the batches, depends
    on timing. The dataset is serialised with its graph (records included) and sent to the
    dispatcher, which is why the pipeline must be graph ops only.
    """
    import tensorflow as tf

    service = tf.data.experimental.service
    return dataset.apply(service.distribute(
        processing_mode=service.ShardingPolicy.DYNAMIC, service=address))


def synthetic_dataset(cfg, split, training, shard=None, input_context=None, batches=2):
    """Random images and maps with make_dataset's shapes, for benchmarks and smoke tests.

    Same signature and batching rules as make_dataset; `batches` distinct
    per-replica batches are drawn (from cfg.seed, the split and the input pipeline) and repeated
    forever when training, or given once otherwise. The values mean nothing.
    """
    import tensorflow as tf

    pipeline, batch_size = 0, cfg.batch_size
    if shard is not None and hasattr(shard, "num_input_pipelines"):
        input_context = shard
    elif shard is not None:
        pipeline = int(shard[1])
    if input_context is not None:
        pipeline = input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(cfg.batch_size)
    rng = np.random.default_rng((cfg.seed, pipeline, 0 if split == "train" else 1))
    size, grid, count = cfg.input_size, cfg.input_size // cfg.stride, batches * batch_size
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    targets = {"heatmaps": rng.uniform(0, 1, (count, grid, grid, NUM_HEATMAPS)).astype(np.float32),
               "pafs": rng.uniform(-1, 1, (count, grid, grid, NUM_PAFS)).astype(np.float32),
               "mask": (rng.uniform(0, 1, (count, grid, grid, 1)) < 0.9).astype(np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch_size)
    return dataset.cache().repeat() if training else dataset


def count_records(cfg, split):
    """Number of non-empty lines of {records_dir}/{split}.jsonl (0 when the file is missing)."""
    path = os.path.join(cfg.records_dir, f"{split}.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path, "r", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _shape_sample(cfg):
    """The graph function that gives a sample its static shapes and the target dict."""
    import tensorflow as tf

    size, grid = cfg.input_size, cfg.input_size // cfg.stride

    def shape(image, heatmaps, pafs, mask, reason):
        targets = {"heatmaps": tf.ensure_shape(heatmaps, (grid, grid, NUM_HEATMAPS)),
                   "pafs": tf.ensure_shape(pafs, (grid, grid, NUM_PAFS)),
                   "mask": tf.ensure_shape(mask, (grid, grid, 1))}
        return tf.ensure_shape(image, (size, size, 3)), targets

    return shape
