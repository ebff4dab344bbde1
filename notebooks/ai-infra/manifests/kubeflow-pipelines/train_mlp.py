"""Katib trial: train the MLP once and print
validation-accuracy=<value> after every epoch.

Written by kubeflow-pipelines.ipynb from the functions the pipeline's train step runs.
"""

import argparse


def load_split(path: str, split: str):
    """Features and labels of one split ('train', 'valid' or 'test') of the CSV that
    the ingest step writes."""
    import numpy as np

    table = np.loadtxt(path, delimiter=",", skiprows=1)
    rows = table[table[:, -1] == {"train": 0, "valid": 1, "test": 2}[split]]
    return rows[:, :-2], rows[:, -2].astype(int)


def fit_mlp(
    x,
    y,
    learning_rate: float,
    hidden_units: int,
    alpha: float,
    epochs: int,
    seed: int,
    on_epoch=None,
):
    """Train a one-hidden-layer MLP for `epochs` passes over (x, y).

    Calls on_epoch(epoch, model) after each pass."""
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=(hidden_units,),
        learning_rate_init=learning_rate,
        alpha=alpha,
        random_state=seed,
    )
    for epoch in range(1, epochs + 1):
        model.partial_fit(x, y, classes=[0, 1])
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--hidden-units", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.0001)
    args = parser.parse_args()
    x, y = load_split(args.data, "train")
    x_valid, y_valid = load_split(args.data, "valid")

    def report(epoch, model):
        accuracy = (model.predict(x_valid) == y_valid).mean()
        print(f"epoch={epoch}", flush=True)
        print(f"validation-accuracy={accuracy:.4f}", flush=True)

    fit_mlp(
        x,
        y,
        args.learning_rate,
        args.hidden_units,
        args.alpha,
        args.epochs,
        args.seed,
        on_epoch=report,
    )
