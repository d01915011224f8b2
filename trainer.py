"""The training model of train.py: the network with its loss, optimiser, schedule and strategy.

Loss
    model.stage_losses (the original's Euclidean loss on every stage and both branches, summed;
    see model.masked_l2). Each stage's PAF and heatmap losses and the two branch totals are
    logged.

Optimiser
    SGD with momentum (paper), Adam or AdamW with a step-decay schedule
    lr = learning_rate * lr_decay_rate ** floor(step / lr_decay_steps) (times a plateau factor
    when --reduce_lr_patience is on). As in the original Caffe model, the learning rate of every
    variable in stages 2..T is multiplied by stage_lr_multiplier and that of biases by
    bias_lr_multiplier: the optimiser's per-variable update step is given a scaled learning
    rate, so the multipliers mean the same thing for SGD, Adam and AdamW. For SGD and Adam the
    weight decay is Caffe's L2 term on the kernels (0.5 * weight_decay * |w|^2 added to the loss,
    so it goes through momentum and the multipliers exactly like Caffe's decay); biases are not
    decayed (Caffe's decay_mult 0). AdamW uses its own decoupled decay, again on kernels only.

Weight averaging (--ema_momentum, off by default)
    Keras' use_ema keeps a moving average of the weights inside the compiled step; training
    goes on from the weights, and averaged_weights puts the average in for validation and the
    saved networks (callbacks.AveragedValidation, checkpoints.save_checkpoint).

NaN guard
    A step whose loss or gradients are not finite is not applied (its gradients are zeroed) and
    flags the trainer, so that callbacks.NanGuard stops the run (with mixed float16 the
    loss-scale optimiser skips such steps itself and only a non-finite loss stops the run).

Distribution (--strategy auto|mirrored|multiworker; see make_strategy)
    The global batch (batch_size) is split across replicas; only the chief writes checkpoints
    and logs (worker_role).
"""

from __future__ import annotations

import contextlib
import logging
import os

import keras
import tensorflow as tf

import model as model_module

LOGGER = logging.getLogger("train")


# ---------------------------------------------------------------------------------------------
# The loss (masked_l2, stage_losses) lives in model.py, written in keras.ops, so that any Keras
# backend (the JAX benchmarks on a GPU, too) trains with the same loss.
# (the JAX benchmarks on a GPU, too) trains with the same loss; train.py re-exports them.
masked_l2 = model_module.masked_l2
stage_losses = model_module.stage_losses


# ---------------------------------------------------------------------------------------------
# The training model: the network plus its loss, metrics and NaN guard
# ---------------------------------------------------------------------------------------------
class PoseTrainer(keras.Model):
    """Wraps the Functional network with OpenPose's multi-stage loss (see module docstring).

    Logs: loss, paf_loss, heatmap_loss, stage<t>_paf_loss, stage<t>_heatmap_loss and
    nonfinite_steps (steps of the epoch whose update was dropped as not finite).
    """

    def __init__(self, network, l2_decay=0.0, **kwargs):
        super().__init__(name="pose_trainer", **kwargs)
        self.network = network
        self.num_stages = len(network.outputs) // 2
        self.l2_decay = float(l2_decay)
        names = ["paf_loss", "heatmap_loss"] + [
            f"stage{stage}_{branch}_loss" for stage in range(1, self.num_stages + 1)
            for branch in ("paf", "heatmap")]
        self.part_trackers = [keras.metrics.Mean(name=name) for name in names]
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        self.multi_worker = is_multi_worker(tf.distribute.get_strategy())
        self.built = True

    def call(self, images, training=False):
        return self.network(images, training=training)

    def build_optimizer(self):
        """Create the optimiser's variables (momenta...) under the strategy's scope."""
        if not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.network.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras would pull a batch from the iterator and reduce it across replicas only to
        # create variables; the network is built already, and that reduction of a nested
        # (images, dict) batch fails under MultiWorkerMirroredStrategy. Only the
        # optimiser is left to build.
        self.build_optimizer()

    def _compute_losses(self, images, targets, training):
        outputs = self.network(images, training=training)
        per_stage = model_module.stage_losses(outputs, targets)
        paf_total = tf.add_n([paf for paf, _ in per_stage])
        heatmap_total = tf.add_n([heat for _, heat in per_stage])
        parts = [paf_total, heatmap_total] + [value for pair in per_stage for value in pair]
        return paf_total + heatmap_total, parts

    def _update_trackers(self, total, parts, batch):
        self._loss_tracker.update_state(total, sample_weight=batch)
        for tracker, value in zip(self.part_trackers, parts):
            tracker.update_state(value, sample_weight=batch)
        logs = {"loss": self._loss_tracker.result()}
        logs.update({tracker.name: tracker.result() for tracker in self.part_trackers})
        return logs

    def _reducible(self, logs):
        # Keras averages step outputs over workers with reduce(MEAN, axis=0), which fails
        # on scalars; shape (1,) values reduce to the same scalar mean.
        if not self.multi_worker:
            return logs
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    def _decay_term(self):
        kernels = [v for v in self.network.trainable_variables if _is_kernel(v)]
        if self.l2_decay <= 0 or not kernels:
            return 0.0
        return 0.5 * self.l2_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])

    def train_step(self, data):
        images, targets = data[:2]  # train_on_batch adds a sample-weight slot
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            total, parts = self._compute_losses(images, targets, training=True)
            # Replica gradients are summed, so each replica takes its share of the loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            objective = (total + self._decay_term()) / float(replicas)
            objective = self.optimizer.scale_loss(objective)
        gradients = tape.gradient(objective, variables)
        finite = tf.math.is_finite(total)
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # The loss-scale optimiser already drops non-finite steps; others need this.
            finite = tf.logical_and(finite, tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]))
            gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        logs = self._update_trackers(total, parts, tf.shape(images)[0])
        logs["nonfinite_steps"] = self.nonfinite_tracker.result()
        return self._reducible(logs)

    def test_step(self, data):
        images, targets = data[:2]  # train_on_batch adds a sample-weight slot
        total, parts = self._compute_losses(images, targets, training=False)
        return self._reducible(self._update_trackers(total, parts, tf.shape(images)[0]))


def _is_kernel(variable):
    return variable.path.endswith("kernel") or variable.name == "kernel"


def _is_bias(variable):
    return variable.path.endswith("bias") or variable.name == "bias"


def learning_rate_factor(variable, cfg):
    """The Caffe lr_mult of a variable: stage_lr_multiplier in stages 2..T, times
    bias_lr_multiplier for biases (model.learning_rate_multiplier)."""
    return model_module.learning_rate_multiplier(variable.path, cfg.stage_lr_multiplier,
                                                 cfg.bias_lr_multiplier)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = initial * rate ** floor(step / decay_steps) * factor * anneal.

    factor holds the plateau cuts (callbacks.Checkpointer); anneal the linear fall to zero over
    the end of a time budget (callbacks.TimeBudget, lr_anneal_fraction). Both are variables so
    that the compiled training step reads their current values.
    """

    def __init__(self, initial, decay_steps, rate):
        self.initial, self.decay_steps, self.rate = float(initial), int(decay_steps), rate
        self.factor = tf.Variable(1.0, trainable=False, dtype=tf.float32,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.anneal = tf.Variable(1.0, trainable=False, dtype=tf.float32,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def __call__(self, step):
        value = tf.constant(self.initial, tf.float32) * self.factor * self.anneal
        if self.decay_steps > 0:
            periods = tf.floor(tf.cast(step, tf.float32) / float(self.decay_steps))
            value = value * tf.pow(tf.constant(float(self.rate), tf.float32), periods)
        return value

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "rate": self.rate}


def make_schedule(cfg):
    """The step-decay schedule of cfg (create it under the strategy's scope)."""
    return StepDecay(cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate)


def make_optimizer(cfg, schedule):
    """SGD/Adam/AdamW whose update step multiplies the learning rate per variable."""
    bases = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
             "adamw": keras.optimizers.AdamW}
    name = cfg.optimizer.lower()
    if name not in bases:
        raise ValueError(f"optimizer must be one of {sorted(bases)}, got {cfg.optimizer!r}")

    class WithLearningRateMultipliers(bases[name]):
        def finalize_variable_values(self, var_list):
            # Keras would write the averages into the weights at the end of every fit call;
            # train.py calls fit once per phase and must go on from the weights themselves.
            # The saved networks get the averages through averaged_weights instead.
            pass

        def build(self, variables):
            super().build(variables)
            self.lr_factors = [learning_rate_factor(variable, cfg) for variable in variables]

        def update_step(self, gradient, variable, learning_rate):
            factor = self.lr_factors[self._get_variable_index(variable)]
            if factor != 1.0:
                learning_rate = learning_rate * factor
            return super().update_step(gradient, variable, learning_rate)

    if not 0.0 <= cfg.ema_momentum < 1.0:
        raise ValueError(f"ema_momentum must be in [0, 1), got {cfg.ema_momentum}")
    averaging = dict(use_ema=cfg.ema_momentum > 0.0,
                     ema_momentum=cfg.ema_momentum if cfg.ema_momentum > 0.0 else 0.99)
    if name == "sgd":
        optimizer = WithLearningRateMultipliers(learning_rate=schedule, momentum=cfg.momentum,
                                                **averaging)
    elif name == "adam":
        optimizer = WithLearningRateMultipliers(learning_rate=schedule, **averaging)
    else:
        optimizer = WithLearningRateMultipliers(learning_rate=schedule,
                                                weight_decay=cfg.weight_decay, **averaging)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def _averaging_optimizer(trainer):
    """The optimiser that holds the weight averages (inside a loss-scale one), or None."""
    optimizer = getattr(trainer, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return None
    return optimizer


@contextlib.contextmanager
def averaged_weights(trainer):
    """Within the block the network's trainable weights are the optimiser's averages of them
    (cfg.ema_momentum); after it, the weights training goes on from. Without averaging, or
    before the first step, the block leaves the weights alone.

    The weights are copied out and back rather than swapped by arithmetic, so they come back
    bit for bit.
    """
    optimizer = _averaging_optimizer(trainer)
    if optimizer is None or int(optimizer.iterations.numpy()) == 0:
        yield
        return
    variables = optimizer._trainable_variables
    saved = [variable.numpy() for variable in variables]
    for variable, average in zip(variables, optimizer._model_variables_moving_average):
        variable.assign(average)
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def make_trainer(cfg, network):
    """Compile the training wrapper of `network` (call under the strategy's scope)."""
    schedule = make_schedule(cfg)
    optimizer = make_optimizer(cfg, schedule)
    l2_decay = 0.0 if cfg.optimizer.lower() == "adamw" else cfg.weight_decay
    trainer = PoseTrainer(network, l2_decay=l2_decay)
    trainer.compile(optimizer=optimizer, jit_compile=bool(cfg.jit_compile))
    return trainer, schedule


# ---------------------------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------------------------
def make_strategy(name):
    """The tf.distribute strategy of --strategy: auto, MirroredStrategy over all GPUs when there
    are several, else the default strategy; mirrored, all GPUs, or every logical CPU device
    when there is no GPU; multiworker, MultiWorkerMirroredStrategy from TF_CONFIG."""
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise ValueError(f"strategy must be auto, mirrored or multiworker, got {name!r}")


def is_multi_worker(strategy):
    """True for a MultiWorkerMirroredStrategy that spans several workers (TF_CONFIG)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def worker_role(strategy):
    """(is_chief, task_id) of this process; single-machine strategies are always the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, task_id


def any_worker(strategy, flag):
    """True on every worker when `flag` is true on any of them (a collective on multiworker).

    Decisions that end training must agree, or the workers still training would wait forever
    for the ones that stopped.
    """
    return largest_over_workers(strategy, 1.0 if flag else 0.0) > 0.0


def largest_over_workers(strategy, value):
    """The largest of every worker's `value` (a collective on multiworker), the same on all.

    The time budget's learning-rate anneal is computed from it, so that every worker applies
    the same learning rate to its mirrored variables.
    """
    if not is_multi_worker(strategy):
        return float(value)

    # tf.distribute.ReduceOp has only SUM and MEAN, so every worker gathers all the values
    # (one per replica, rank 1 for gather's axis) and takes their largest itself.
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([float(value)]))
    return float(tf.reduce_max(strategy.gather(values, axis=0)))


def set_precision_policy(cfg):
    """mixed_float16 on GPUs, mixed_bfloat16 on CPUs (float16 is slow there), else float32."""
    if not cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy
