"""Babysitting the learning process: a callback that watches what a loss curve hides.

`TrainingMonitor` logs, per epoch, the update:weight ratio of every weight
matrix, the train/validation gap and, on a fixed probe batch, the fraction of
dead ReLU units; with a `log_dir` it also writes activation and gradient
histograms (and every logged number) to TensorBoard event files.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
section 4.3 "Babysitting the Learning Process" (4.3.2 train/val accuracy,
4.3.3 ratio of weights:updates, 4.3.4 activation/gradient distributions per
layer); Karpathy, CS231n course notes, "Neural Networks Part 3: Learning and
Evaluation" (the ratio as `norm(update) / norm(W)`).
"""

from __future__ import annotations

import glob
import math
import os
import warnings

import keras
import numpy as np

# Public Keras has no event-file writer; tf.summary.write (unlike
# tf.summary.scalar/histogram) works without the tensorboard package.
import tensorflow as tf

# The rule of thumb is a ratio "somewhere around 1e-3"; the default band
# allows one decade either way before warning.
RATIO_TARGET = 1e-3
RATIO_BAND = (1e-4, 1e-2)


class UpdateRatioWarning(UserWarning):
    """An update:weight ratio fell outside the band around 1e-3."""


# --------------------------------------------------------------------------- pure rules


def update_ratio(before, after) -> float:
    """The update:weight ratio of one variable over one update.

    ```
    ratio = ||after - before||_2 / ||before||_2       (Frobenius norms)
            0 when nothing moved, inf when a zero variable moved
    ```

    Args:
        before: the variable's values before the update.
        after: its values after the update.

    References: Bakhshi, Training Neural Networks, section 4.3.3 (ratio of
    weights:updates, "somewhere around 1e-3").
    """
    before = np.asarray(before, np.float64)
    after = np.asarray(after, np.float64)
    if before.shape != after.shape:
        raise ValueError(f"before and after differ in shape: {before.shape} vs {after.shape}.")
    update_norm = float(np.linalg.norm((after - before).ravel()))
    weight_norm = float(np.linalg.norm(before.ravel()))
    if weight_norm == 0.0:
        return 0.0 if update_norm == 0.0 else math.inf
    return update_norm / weight_norm


def dead_fraction(activations, channel_axis=-1) -> float:
    """Fraction of ReLU units that output zero for every example of a batch.

    ```
    unit c is dead  <=>  activations[..., c, ...] <= 0 for every example and position
    dead_fraction = (dead units) / (units)
    ```
    A unit is one channel along `channel_axis` (a Dense feature, or a
    convolution filter over all positions).

    Args:
        activations: a ReLU layer's output on a batch, examples first.
        channel_axis: the axis of the units. Defaults to -1.

    References: Bakhshi, Training Neural Networks, sections 1.2.5 and 4.3.4.
    """
    values = np.asarray(activations)
    if values.ndim < 2:
        raise ValueError(f"activations need an examples axis and a units axis, got shape {values.shape}.")
    values = np.moveaxis(values, channel_axis, -1).reshape(-1, values.shape[channel_axis])
    alive = np.any(values > 0, axis=0)
    return float(1.0 - alive.mean())


def histogram_buckets(values, num_bins=30) -> np.ndarray:
    """TensorBoard histogram buckets of `values`: rows of (left edge, right edge, count).

    ```
    finite values only; equal-width bins over [min, max]; one bucket if min == max
    ```

    Args:
        values: any array.
        num_bins: number of bins. Defaults to 30.

    References: the TensorBoard histogram summary format (a `[k, 3]` tensor).
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.array([[low, high, float(values.size)]])
    counts, edges = np.histogram(values, bins=num_bins, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def ratio_key(variable_path, model_name) -> str:
    """The History key of a variable's ratio: `update_ratio/<layer>` for a kernel.

    ```
    "sequential/dense/kernel" -> "update_ratio/dense"       (model name dropped)
    "conv/depthwise_kernel"   -> "update_ratio/conv/depthwise_kernel"
    ```

    Args:
        variable_path: the variable's `path`.
        model_name: the name of the model being trained.
    """
    parts = variable_path.split("/")
    if len(parts) > 1 and parts[0] == model_name:
        parts = parts[1:]
    if len(parts) > 1 and parts[-1] == "kernel":
        parts = parts[:-1]
    return "update_ratio/" + "/".join(parts)


def _metadata(plugin_name):
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin_name
    return metadata


def read_summaries(log_dir) -> dict:
    """Read the values `TrainingMonitor` wrote: `{tag: [(step, array), ...]}`.

    Scalars come back as 0-d arrays, histograms as `[k, 3]` bucket arrays.
    Needs no tensorboard package.

    Args:
        log_dir: the directory given to `TrainingMonitor`.
    """
    files = sorted(glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*")))
    if not files:
        raise ValueError(f"no event files in {log_dir!r}; was TrainingMonitor given log_dir={log_dir!r}?")
    summaries = {}
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                summaries.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    for values in summaries.values():
        values.sort(key=lambda item: item[0])
    return summaries


# --------------------------------------------------------------------------- callback


def _is_relu_layer(layer):
    if isinstance(layer, keras.layers.ReLU):
        return not getattr(layer, "negative_slope", 0.0)
    return getattr(getattr(layer, "activation", None), "__name__", None) == "relu"


def _channel_axis(layer):
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


class TrainingMonitor(keras.callbacks.Callback):
    """Log update:weight ratios, the train/val gap, dead ReLUs and histograms each epoch.

    ```
    each epoch, over its first training step (W = each trainable variable of
    rank >= 2: kernels, filters, embeddings; W0 before the step, W1 after):
        logs["update_ratio/<layer>"] = ||W1 - W0|| / ||W0||
        warn (UpdateRatioWarning) if a ratio is outside ratio_band (~1e-3)
    with validation data:
        logs["train_val_gap"]          = val_loss - loss
        logs["train_val_accuracy_gap"] = accuracy - val_accuracy
    every histogram_freq epochs, on probe_data = (x, y), in inference mode:
        logs["dead_relu/<layer>"] = fraction of units zero on every probe example
        log_dir: histograms activations/<layer>, activation_gradients/<layer>
                 (d loss / d output), gradients/<variable>; and every number
                 in logs as a scalar (step = epoch index, from 0)
    ```
    The ratio measures the update the optimizer actually applied, not
    learning rate x gradient, so it is right for momentum, Adam and MCV
    models. It covers one step (with `steps_per_execution = k`, the first k
    steps); measuring only the first step of each epoch keeps the cost to one
    copy of the weight matrices per epoch. Biases and normalisation scales are
    left out: they start at 0 or 1, so their ratio says little about the
    learning rate. Keras gives callbacks no access to the validation data,
    so the probe batch is given explicitly; pass a fixed slice of the
    validation set, e.g. `(x_val[:256], y_val[:256])`. `loss` is the epoch's
    running mean in training mode (dropout on, penalties included) while
    `val_loss` is measured at its end in inference mode, so part of the gap
    is not overfitting. Put the monitor before other callbacks that read the
    logs (the History callback always comes last).

    Args:
        log_dir: directory for TensorBoard event files. Defaults to None (no
            files; the numbers still go into the logs).
        probe_data: a fixed `(x, y)` batch for dead-ReLU fractions and
            histograms. Defaults to None (none computed); required when
            `log_dir` is given and `histogram_freq > 0`.
        histogram_freq: compute the probe quantities every this many epochs;
            0 turns them off. Defaults to 1.
        ratio_band: `(low, high)`: warn when a ratio leaves it; None never
            warns. Defaults to (1e-4, 1e-2).
        num_bins: bins per histogram. Defaults to 30.

    References: Bakhshi, Training Neural Networks (Computer Vision, lecture
    09), section 4.3 "Babysitting the Learning Process".
    """

    def __init__(self, log_dir=None, probe_data=None, histogram_freq=1,
                 ratio_band=RATIO_BAND, num_bins=30):
        super().__init__()
        if isinstance(histogram_freq, bool) or int(histogram_freq) != histogram_freq or histogram_freq < 0:
            raise ValueError(
                f"histogram_freq must be an integer >= 0 (0 turns histograms off), got {histogram_freq!r}."
            )
        if ratio_band is not None:
            try:
                low, high = (float(v) for v in ratio_band)
            except (TypeError, ValueError):
                raise ValueError(f"ratio_band must be a pair (low, high) or None, got {ratio_band!r}.") from None
            if not 0 < low < high:
                raise ValueError(f"ratio_band must satisfy 0 < low < high, got {ratio_band!r}.")
            ratio_band = (low, high)
        if int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")
        if probe_data is not None:
            if not isinstance(probe_data, (tuple, list)) or len(probe_data) != 2:
                raise ValueError(
                    "probe_data must be a pair (x, y), e.g. (x_val[:256], y_val[:256]); got "
                    f"{type(probe_data).__name__}."
                )
            sizes = {len(np.asarray(a)) for a in keras.tree.flatten(list(probe_data))}
            if len(sizes) != 1 or 0 in sizes:
                raise ValueError(
                    f"probe_data x and y must hold the same, non-zero number of examples; got sizes {sorted(sizes)}."
                )
        elif log_dir is not None and histogram_freq > 0:
            raise ValueError(
                "TrainingMonitor(log_dir=...) writes histograms of a probe batch and needs "
                "probe_data=(x, y): Keras does not hand validation data to callbacks. Pass a "
                "fixed batch such as (x_val[:256], y_val[:256]), or histogram_freq=0 for "
                "scalars only."
            )
        self.log_dir = None if log_dir is None else str(log_dir)
        self.probe_data = probe_data
        self.histogram_freq = int(histogram_freq)
        self.ratio_band = ratio_band
        self.num_bins = int(num_bins)
        self._writer = None
        self._tracked = []
        self._keys = []
        self._before = None
        self._first_step_pending = False
        self._ratios = {}
        self._probe_model = None
        self._probe_layers = []
        self._prediction_index = []

    # ------------------------------------------------------------------ set-up

    def on_train_begin(self, logs=None):
        model = self.model
        self._tracked = [v for v in model.trainable_variables if len(v.shape) >= 2]
        self._keys = [ratio_key(v.path, model.name) for v in self._tracked]
        if self.probe_data is not None and self.histogram_freq > 0:
            self._build_probe_model()
        if self.log_dir is not None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _build_probe_model(self):
        model = self.model
        if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
            raise ValueError(
                "TrainingMonitor's probe histograms read every layer's output, which needs a "
                f"Functional or Sequential model; {type(model).__name__} has no symbolic "
                "inputs/outputs. Pass probe_data=None (or histogram_freq=0) for ratios and gaps only."
            )
        layers, outputs = [], []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                output = layer.output
            except (AttributeError, ValueError):  # a layer called more than once has no single output
                continue
            if isinstance(output, (list, tuple, dict)):
                continue
            layers.append(layer)
            outputs.append(output)
        # A model output that is also a probed layer's output is not fetched
        # twice: as one tensor, d loss / d output reaches it.
        prediction_index = []
        for tensor in model.outputs:
            matches = [i for i, output in enumerate(outputs) if output is tensor]
            if not matches:
                outputs.append(tensor)
                matches = [len(outputs) - 1]
            prediction_index.append(matches[0])
        self._probe_layers = layers
        self._prediction_index = prediction_index
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self._probe_model = keras.Model(inputs, outputs)

    # ------------------------------------------------------------------ ratio

    def on_epoch_begin(self, epoch, logs=None):
        self._before = None
        self._ratios = {}
        self._first_step_pending = True

    def on_train_batch_begin(self, batch, logs=None):
        if self._first_step_pending and self._tracked:
            self._before = [v.numpy() for v in self._tracked]

    def on_train_batch_end(self, batch, logs=None):
        if not self._first_step_pending or self._before is None:
            return
        self._first_step_pending = False
        for key, variable, before in zip(self._keys, self._tracked, self._before):
            self._ratios[key] = update_ratio(before, variable.numpy())
        self._before = None

    # ------------------------------------------------------------------ epoch end

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs.update(self._ratios)
        self._warn_ratios(epoch)
        if "loss" in logs and "val_loss" in logs:
            logs["train_val_gap"] = float(logs["val_loss"]) - float(logs["loss"])
        accuracy_key = next(
            (k for k in logs if (k == "acc" or k.endswith("accuracy")) and not k.startswith("val_")
             and "val_" + k in logs),
            None,
        )
        if accuracy_key is not None:
            logs["train_val_accuracy_gap"] = float(logs[accuracy_key]) - float(logs["val_" + accuracy_key])
        histograms = {}
        if self._probe_model is not None and (epoch + 1) % self.histogram_freq == 0:
            histograms = self._probe(logs)
        if self._writer is not None:
            self._write(epoch, logs, histograms)

    def _warn_ratios(self, epoch):
        if self.ratio_band is None or not self._ratios:
            return
        low, high = self.ratio_band
        outside = []
        for key, ratio in self._ratios.items():
            if ratio < low:
                outside.append(f"{key} = {ratio:.2e} (low: learning rate may be too low)")
            elif not ratio <= high:
                outside.append(f"{key} = {ratio:.2e} (high: learning rate likely too high)")
        if outside:
            warnings.warn(
                f"epoch {epoch + 1}: update:weight ratio outside [{low:g}, {high:g}] "
                f"(rule of thumb: about {RATIO_TARGET:g}): " + "; ".join(outside),
                UpdateRatioWarning,
                stacklevel=2,
            )

    def _probe(self, logs):
        x, y = self.probe_data
        n_layers = len(self._probe_layers)
        with tf.GradientTape() as tape:
            outputs = self._probe_model(x, training=False)
            activations = outputs[:n_layers]
            predictions = [outputs[i] for i in self._prediction_index]
            y_pred = predictions[0] if len(predictions) == 1 else predictions
            loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        variables = list(self.model.trainable_variables)
        gradients = tape.gradient(loss, list(activations) + variables)
        histograms = {}
        for layer, activation, gradient in zip(self._probe_layers, activations, gradients[:n_layers]):
            values = keras.ops.convert_to_numpy(activation)
            histograms[f"activations/{layer.name}"] = values
            if gradient is not None:
                histograms[f"activation_gradients/{layer.name}"] = keras.ops.convert_to_numpy(gradient)
            if _is_relu_layer(layer):
                logs[f"dead_relu/{layer.name}"] = dead_fraction(values, _channel_axis(layer))
        for variable, gradient in zip(variables, gradients[n_layers:]):
            if gradient is not None:
                histograms[f"gradients/{variable.path}"] = keras.ops.convert_to_numpy(gradient)
        return histograms

    def _write(self, epoch, logs, histograms):
        scalar, histogram = _metadata("scalars"), _metadata("histograms")
        with self._writer.as_default(step=epoch):
            for tag, value in logs.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                tf.summary.write(tag, tf.constant(number, tf.float32), metadata=scalar)
            for tag, values in histograms.items():
                buckets = histogram_buckets(values, self.num_bins)
                tf.summary.write(tag, tf.constant(buckets, tf.float64), metadata=histogram)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
