"""`Wrappable`: build a model class around the layers of an existing Keras model."""

from __future__ import annotations

import keras


def inputs_outputs(model: keras.Model, input_shape=None):
    """The functional inputs and outputs of `model`, calling it on new inputs if it has none."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if inputs and outputs:
        # A one-element list would make the new model's output a list.
        inputs = inputs[0] if len(inputs) == 1 else inputs
        outputs = outputs[0] if len(outputs) == 1 else outputs
        return inputs, outputs
    if input_shape is None:
        raise ValueError(
            f"Cannot wrap {type(model).__name__} {model.name!r}: it has no "
            "defined inputs. Pass `input_shape=` (without the batch axis), "
            "e.g. `wrap(model, input_shape=(32, 32, 3))`."
        )
    inputs = keras.Input(shape=tuple(input_shape))
    return inputs, model(inputs)


class Wrappable:
    """Mixin of the model classes: `Cls.wrap(model, **options)`."""

    @classmethod
    def wrap(cls, model: keras.Model, *, input_shape=None, name=None, **kwargs):
        """A model of this class that shares the layers (and weights) of `model`.

        Works for Functional and Sequential models with known inputs, and for
        subclassed models given `input_shape` (the shape without the batch axis).

        Args:
            model: the model to train with this class's method.
            input_shape: needed only when `model` has no defined inputs.
                Defaults to None.
            name: the new model's name. Defaults to `model.name`.
            **kwargs: the options of this class.
        """
        inputs, outputs = inputs_outputs(model, input_shape)
        return cls(inputs, outputs, name=name or model.name, **kwargs)
