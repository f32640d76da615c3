"""What the sanity checks and the gradient check share: copies of the model, its loss, chance level.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09), section 4.2.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

# Keras has no public backend-neutral gradient API: the gradient check and the
# subset dataset use TensorFlow, the backend this package runs on.

# Relative tolerance of the chance-level loss check. Logits of spread s around
# a common value raise the expected softmax loss by about s**2 / 2 above ln C,
# so 25 % of ln C admits an initial spread of s <= sqrt(ln(C) / 2): 1.07 for
# C = 10, 0.59 for C = 2, i.e. predictions that are still nearly diffuse.
CHANCE_LOSS_TOLERANCE = 0.25


# Gradients below this magnitude sit outside the active range of floating
# point: their relative error measures round-off, not the implementation.
ACTIVE_RANGE = 1e-10


# Layers that add noise in training; the copies used by the checks replace
# them by an identity (regularization zero, deterministic gradients).
_NOISE_LAYERS = (
    keras.layers.Dropout,  # includes SpatialDropout1D/2D/3D
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)


_LOSS_KINDS = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "categorical",
    "binary_crossentropy": "binary",
}


def chance_loss(num_classes: int) -> float:
    """The softmax cross-entropy of a diffuse prediction over `num_classes` classes.

    ```
    loss = -ln(1 / C) = ln C          # 2.302 for C = 10
    ```

    Args:
        num_classes: C, the number of classes (at least 2).

    References: Bakhshi, Training Neural Networks, section 4.2 (look for the
    correct loss at chance performance).
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return -math.log(1.0 / num_classes)


@contextlib.contextmanager
def _floatx(dtype):
    # Layers made without a dtype follow the global dtype policy, losses follow
    # floatx: both must name `dtype` while a copy is made.
    previous_floatx = keras.config.floatx()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def _require_compiled(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a keras.Model, got {type(model).__name__}.")
    if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None:
        raise ValueError(
            f"{what} reads the model's loss: compile the model with a loss first "
            "(model.compile(optimizer=..., loss=...))."
        )
    if isinstance(model.loss, (list, tuple, dict)):
        raise ValueError(
            f"{what} supports one loss on one output; got a {type(model.loss).__name__} "
            "of losses. Check each output with a single-output model."
        )
    if not model.built:
        raise ValueError(f"{what}: build the model first (call it once or give it an Input).")


def _num_examples(x, y):
    leaves_x = [np.asarray(a) for a in keras.tree.flatten(x)]
    leaves_y = [np.asarray(a) for a in keras.tree.flatten(y)]
    if not leaves_x or not leaves_y:
        raise ValueError("x and y must hold at least one array each.")
    sizes = {len(a) for a in leaves_x + leaves_y}
    if len(sizes) != 1:
        raise ValueError(f"x and y must hold the same number of examples; got sizes {sorted(sizes)}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError("x and y are empty: pass at least one example.")
    return n


def _take(data, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _loss_spec(loss):
    """(kind, from_logits) of a compiled loss: kind in sparse/categorical/binary/other."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    fn = getattr(loss, "fn", loss)  # LossFunctionWrapper keeps its function in `fn`
    kind = _LOSS_KINDS.get(getattr(fn, "__name__", ""), "other")
    from_logits = False
    if isinstance(loss, keras.losses.Loss):
        from_logits = bool(loss.get_config().get("from_logits", False))
    return kind, from_logits


def _is_softmax(activation):
    return getattr(activation, "__name__", None) == "softmax"


def _output_layer(model):
    return model.layers[-1] if model.layers else None


def _ends_in_softmax(model):
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return True
    return _is_softmax(getattr(layer, "activation", None))


def _loss_callable(loss, dtype):
    """The compiled loss as a callable computing in `dtype` (a mean over examples)."""
    with _floatx(dtype):
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if isinstance(loss, keras.losses.Loss) and loss.dtype != dtype:
            # A Loss casts its inputs to the dtype it was made with: remake it
            # under the wanted floatx so float64 predictions stay float64.
            try:
                loss = type(loss).from_config(loss.get_config())
            except Exception as error:  # any failure means: cannot recreate
                raise ValueError(
                    f"cannot recreate the loss {type(loss).__name__} in {dtype} from its "
                    "config; give it a working get_config/from_config or compile with a "
                    "loss function."
                ) from error
            if loss.dtype != dtype:
                raise ValueError(
                    f"the loss {type(loss).__name__} computes in {loss.dtype}, not {dtype}; "
                    "compile with a loss that follows keras.config.floatx()."
                )

    def mean_loss(y_true, y_pred):
        # Keras's compiled loss squeezes a trailing unit axis when the ranks of
        # targets and predictions differ by one; a bare loss function does not.
        y_true, y_pred = keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_pred = keras.ops.squeeze(y_pred, -1)
        elif len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = keras.ops.squeeze(y_true, -1)
        return keras.ops.mean(loss(y_true, y_pred))

    return mean_loss


def _clone(model, dtype=None):
    """A copy of `model` with the same weights and noise layers replaced by identities.

    With `dtype`, every layer and floating input is rebuilt in that dtype.
    """

    def clone_layer(layer):
        if isinstance(layer, _NOISE_LAYERS):
            return keras.layers.Identity(name=layer.name, dtype=dtype or layer.dtype_policy)
        config = layer.get_config()
        if dtype is not None:
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    try:
        model_inputs = list(model.inputs or [])
    except AttributeError:  # a subclassed model has no symbolic inputs
        model_inputs = []
    if not model_inputs:
        raise ValueError(
            "the checks run on a copy made by keras.models.clone_model, which needs a "
            f"Functional or Sequential model; {type(model).__name__} has no symbolic inputs. "
            "Build the network with keras.Input/keras.Sequential."
        )
    input_tensors = None
    if dtype is not None:
        input_tensors = [
            keras.Input(
                batch_shape=tensor.shape,
                dtype=dtype if "float" in str(tensor.dtype) else tensor.dtype,
            )
            for tensor in model_inputs
        ]
        if len(input_tensors) == 1:
            input_tensors = input_tensors[0]
    try:
        with _floatx(dtype) if dtype else contextlib.nullcontext():
            copy = keras.models.clone_model(
                model, input_tensors=input_tensors, clone_function=clone_layer, recursive=True
            )
    except ValueError as error:
        raise ValueError(
            f"the checks run on a copy made by keras.models.clone_model, which needs a "
            f"Functional or Sequential model; {type(model).__name__} could not be "
            f"cloned ({error}). Build the network with keras.Input/keras.Sequential."
        ) from error
    copy.set_weights(model.get_weights())
    return copy


def _weight_matrices(model):
    """Trainable variables of rank >= 2: kernels, filters, embeddings (not biases/scales)."""
    return [v for v in model.trainable_variables if len(v.shape) >= 2]


def _predict(model, x, batch_size=256):
    n = _num_examples(x, x)
    parts = [
        keras.ops.convert_to_numpy(model(_take(x, slice(i, i + batch_size)), training=False))
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(parts)


def _accuracy(kind, from_logits, y_true, y_pred):
    y_true = np.asarray(y_true)
    if kind == "binary":
        threshold = 0.0 if from_logits else 0.5
        return float(np.mean((y_pred.reshape(y_true.shape) > threshold) == (y_true > 0.5)))
    labels = np.argmax(y_true, axis=-1) if kind == "categorical" else y_true.reshape(len(y_true))
    return float(np.mean(np.argmax(y_pred, axis=-1) == labels))
