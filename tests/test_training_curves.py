"""The training curves MLflow shows are readable: both axes labelled and every label inside the
saved image (issue 16: training_curves.png cut its axis labels)."""

from tracking.training_runs import curves_figure


def test_curves_have_labelled_axes_that_fit_in_the_figure():
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "zero_shot_mean_auc": 0.5 + e / 20}
               for e in range(1, 5)]
    fig = curves_figure(history)
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        box = ax.get_tightbbox(renderer)
        assert box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1
        assert box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1
