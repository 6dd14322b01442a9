"""Known answers for every path from a model to a metric, through the code the assets call.

The model is a real two-tower torch module with fixed weights (`StripeModel`): image feature j is
the mean brightness of vertical stripe j, and the prompt of category j embeds as row j of a fixed
table. Images light the stripes of their labels, so with the identity table category c's prompt is
nearest to exactly the images labelled c, and every number below is worked out by hand.

The evaluation set is ten patients holding the same six images each (`PATTERN`): whichever
patients a split sends to TEST, the test set is whole copies of the pattern, and AUC, F1 and
accuracy of k copies equal those of one copy. The hand computations therefore use the six
pattern images only.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.datasets import LabelledImages
from evaluation.encode import image_tensor
from evaluation.finetune import FinetuneConfig, run_finetune
from evaluation.metrics import classification_report, rank_auc
from evaluation.retrieval import evaluate_retrieval, prompt_gallery, with_no_finding
from evaluation.segmentation import dice_iou, predict_masks, summarise
from evaluation.zero_shot import evaluate_zero_shot
from knowledge.base import NO_FINDING, category_prompts, load_knowledge
from medfilip_model.zero_shot import TextCategories, per_class_auc, prompt_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORIES = ["effusion", "cardiomegaly", "pneumothorax", "atelectasis"]
STRIPES = [*CATEGORIES, NO_FINDING]  # the fifth stripe lights up on images without a finding
# One patient's images, as label rows over CATEGORIES.
PATTERN = np.array([[1, 0, 0, 0],   # 0: effusion
                    [0, 1, 0, 0],   # 1: cardiomegaly
                    [1, 1, 0, 0],   # 2: effusion + cardiomegaly
                    [0, 0, 1, 0],   # 3: pneumothorax
                    [0, 0, 0, 1],   # 4: atelectasis
                    [0, 0, 0, 0]],  # 5: no finding
                   dtype=np.int8)
PATIENTS = 10
SIZE = 20  # five stripes of 4 pixels


class StripeModel(nn.Module):
    """Image feature j = mean brightness of stripe j (a fixed linear map); the text with token j
    embeds as row j of `text_rows` (identity: e_j). Both unit-normalised, as MedFilipModel's."""

    def __init__(self, text_rows: torch.Tensor | None = None, size: int = SIZE, stripes: int = len(STRIPES)):
        super().__init__()
        width = size // stripes
        pool = torch.zeros(stripes, size, size)
        for j in range(stripes):
            pool[j, :, j * width:(j + 1) * width] = 1.0 / (size * width)
        self.image_proj = nn.Linear(size * size, stripes, bias=False)
        self.text_table = nn.Embedding(stripes, stripes)
        with torch.no_grad():
            self.image_proj.weight.copy_(pool.flatten(1))
            self.text_table.weight.copy_(torch.eye(stripes) if text_rows is None else text_rows)
        self.config = {"embed_dim": stripes}
        self.image_size = size

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_proj(images.flatten(1))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text_table(tokens)
        return F.normalize(features, dim=-1) if normalize else features


class PromptTokenizer:
    """Token j for the prompt of STRIPES[j]; any other text is an error, never a silent token."""

    def __init__(self):
        prompts = category_prompts(load_knowledge(), STRIPES)
        assert list(prompts) == STRIPES, "the knowledge base must describe every stripe's category"
        self.ids = {text: j for j, text in enumerate(prompts.values())}

    def __call__(self, texts) -> torch.Tensor:
        return torch.tensor([self.ids[text] for text in texts])


def swap_rows(a: int, b: int, sign: float = 1.0) -> torch.Tensor:
    """The text table with the prompts of categories a and b exchanged."""
    order = list(range(len(STRIPES)))
    order[a], order[b] = order[b], order[a]
    return sign * torch.eye(len(STRIPES))[order]


def stripe_images(labels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 [N, size, size]: stripe j white where label j, the last stripe where no label."""
    width = size // len(STRIPES)
    images = np.zeros((len(labels), size, size), dtype=np.uint8)
    for i, row in enumerate(labels):
        lit = np.flatnonzero(row) if row.any() else [len(STRIPES) - 1]
        for j in lit:
            images[i, :, j * width:(j + 1) * width] = 255
    return images


def pattern_set(patients: int = PATIENTS, size: int = SIZE) -> LabelledImages:
    labels = np.tile(PATTERN, (patients, 1))
    patient_ids = [f"p{p}" for p in range(patients) for _ in PATTERN]
    return LabelledImages(name="stripes", image_ids=[f"i{i}" for i in range(len(labels))], patient_ids=patient_ids,
                          categories=list(CATEGORIES), labels=labels, arrays=stripe_images(labels, size))


def zero_shot(text_rows: torch.Tensor | None = None) -> dict:
    return evaluate_zero_shot(StripeModel(text_rows), PromptTokenizer(), pattern_set(), load_knowledge(), n_boot=50)


# --- zero-shot: prompts -> embeddings -> scores -> per-class AUC, F1 at validation thresholds ---


def test_zero_shot_each_prompt_nearest_its_own_images_gives_auc_one_and_f1_one():
    report = zero_shot()
    assert report["split"] == {"val": 3 * len(PATTERN), "test": 7 * len(PATTERN)}  # 3 / 7 of the 10 patients
    assert sorted(report["per_class"]) == sorted(CATEGORIES)
    for category, entry in report["per_class"].items():
        assert entry["auc"] == 1.0 and entry["auc_ci"] == (1.0, 1.0), category
        # Positives score 1 (alone) or 1/sqrt(2) (effusion + cardiomegaly), negatives 0: the best
        # validation cut is the lowest positive score, which finds every test positive.
        assert entry["f1"] == 1.0 and entry["acc"] == 1.0, category
    assert report["per_class"]["effusion"]["threshold"] == pytest.approx(2 ** -0.5, abs=1e-6)
    assert report["per_class"]["pneumothorax"]["threshold"] == pytest.approx(1.0, abs=1e-6)
    assert report["mean_auc"] == 1.0 and report["mean_f1"] == 1.0


def test_zero_shot_with_two_prompts_swapped_gives_the_hand_computed_auc_and_f1():
    """Effusion's prompt embeds as cardiomegaly's and vice versa. Effusion's scores are then the
    cardiomegaly stripe: positives (images 0, 2) score 0 and 1/sqrt(2); negatives (1, 3, 4, 5)
    score 1, 0, 0, 0. Pairs: image 0 loses to 1 and ties 3 negatives (1.5), image 2 loses to 1 and
    beats 3 (3): AUC = 4.5 / 8 = 0.5625; cardiomegaly alike by symmetry. At validation, the cut
    1/sqrt(2) (predict images 1 and 2: F1 2/4) ties the cut 0 (predict all: F1 4/8) and the higher
    cut wins; on test it gives F1 0.5 and accuracy 4/6."""
    report = zero_shot(swap_rows(0, 1))
    for category in ("effusion", "cardiomegaly"):
        entry = report["per_class"][category]
        assert entry["auc"] == pytest.approx(0.5625, abs=1e-12), category
        assert entry["threshold"] == pytest.approx(2 ** -0.5, abs=1e-6), category
        assert entry["f1"] == pytest.approx(0.5, abs=1e-12) and entry["acc"] == pytest.approx(4 / 6, abs=1e-12)
    for category in ("pneumothorax", "atelectasis"):
        assert report["per_class"][category]["auc"] == 1.0 and report["per_class"][category]["f1"] == 1.0
    assert report["mean_auc"] == pytest.approx((2 * 0.5625 + 2) / 4, abs=1e-12)
    assert report["mean_f1"] == pytest.approx(0.75, abs=1e-12)
    assert report["mean_acc"] == pytest.approx((2 * 4 / 6 + 2) / 4, abs=1e-12)


def test_zero_shot_with_inverted_embeddings_gives_auc_zero():
    """Every prompt embedded as minus its category: each positive now scores below every negative."""
    report = zero_shot(-torch.eye(len(STRIPES)))
    assert all(entry["auc"] == 0.0 for entry in report["per_class"].values())
    assert report["mean_auc"] == 0.0


def test_per_class_auc_on_hand_worked_scores():
    """Column 0: positives 0.9 (beats 0.8, 0.3, 0.4: 3) and 0.4 (beats 0.3, ties 0.4: 1.5), so
    AUC = 4.5 / 6 = 0.75; column 1 is column 0's scores negated: 1 - 0.75; column 2 has no
    positive and no AUC."""
    labels = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    column = np.array([0.9, 0.8, 0.4, 0.3, 0.4])
    scores = np.stack([column, -column, column], axis=1)
    assert per_class_auc(labels, scores, ["a", "b", "c"]) == {"a": pytest.approx(0.75, abs=1e-12),
                                                              "b": pytest.approx(0.25, abs=1e-12)}
    # The bootstrap's rank statistic is the same number.
    np.testing.assert_allclose(rank_auc(labels[:, :2].T, scores[:, :2].T), [0.75, 0.25], atol=1e-12)


def test_training_validation_auc_from_text_ids_and_prompt_embeddings(tmp_path):
    """The per-epoch metric of training.loop: labels from the images' text ids (negated texts do
    not count), prompt features from the text tower, scores = image features @ prompts."""
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text_id": [10, 11, 12, 13, 14],
                             "category": ["effusion", "cardiomegaly", "effusion", "pneumothorax", "atelectasis"],
                             "negated": [False, False, True, False, False]}), texts)
    # Image rows of PATTERN, but image 0's effusion text is the negated one (12): no effusion label.
    image_text_ids = [[12], [11], [10, 11], [13], [14], []]
    labels = TextCategories(texts).labels(image_text_ids, CATEGORIES)
    expected = PATTERN.copy()
    expected[0, 0] = 0
    np.testing.assert_array_equal(labels, expected)
    model = StripeModel()
    prompts = category_prompts(load_knowledge(), CATEGORIES)
    prompt_features = prompt_embeddings(model.encode_text, PromptTokenizer(), prompts)
    image_features = model.encode_image(torch.from_numpy(stripe_images(PATTERN)).float()[:, None] / 255)
    scores = (image_features @ prompt_features.T).detach().numpy()
    per_class = per_class_auc(labels, scores, CATEGORIES)
    # Effusion: positive image 2 (1/sqrt(2)) against negatives 0 (1, the image still shows the
    # stripe), 1, 3, 4, 5 (0): wins 4 of 5 pairs.
    assert per_class == {"effusion": pytest.approx(0.8, abs=1e-12), "cardiomegaly": 1.0,
                         "pneumothorax": 1.0, "atelectasis": 1.0}


def test_f1_and_accuracy_at_validation_thresholds_on_hand_worked_data():
    """Validation cuts for labels 1 1 0 0 0, scores .9 .6 .7 .2 .1: at .9 F1 2/3, at .7 2/4, at
    .6 4/5 (best), at .2 4/6, at .1 4/7. Test at >= .6: predicted .65 (pos), .6 (neg: equal to the
    cut counts as predicted), .95 (pos), .61 (neg); missed .5 (pos): F1 = 2*2 / (4 + 3) = 4/7,
    accuracy 3/6. AUC on test: positives .65, .5, .95 beat 3, 1, 3 of the negatives .6 .3 .61: 7/9."""
    val_labels, val_scores = np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    test_labels, test_scores = np.array([1, 0, 1, 0, 1, 0]), np.array([0.65, 0.6, 0.5, 0.3, 0.95, 0.61])
    report = classification_report(val_labels, val_scores, test_labels, test_scores, ["x"], n_boot=20)
    entry = report["per_class"]["x"]
    assert entry["threshold"] == 0.6
    assert entry["f1"] == pytest.approx(4 / 7, abs=1e-12) and entry["acc"] == pytest.approx(0.5, abs=1e-12)
    assert entry["auc"] == pytest.approx(7 / 9, abs=1e-12)


# --- retrieval: a hand-worked gallery -------------------------------------------------------


def test_retrieval_recall_and_precision_at_k_on_a_hand_worked_gallery():
    """Six images (PATTERN, image 5 labelled "no finding") against the five prompts.
    Image -> text: each one-finding image has its own prompt first (recall 1 at every K; precision
    1, 1/2, 1/5 at K = 1, 2, 5); image 2 ties effusion and cardiomegaly, both relevant: recall 1/2
    at K = 1 and 1 from K = 2, precision 1, 1, 2/5. Text -> image: effusion's relevant images are 0
    (score 1) and 2 (1/sqrt(2)): recall 1/2 then 1, precision 1, 1, 2/5; cardiomegaly alike; the
    three one-image prompts: recall 1, precision 1, 1/2, 1/5."""
    data = with_no_finding(pattern_set(patients=1))
    texts, text_labels = prompt_gallery(load_knowledge(), data.categories)
    result = evaluate_retrieval(StripeModel(), PromptTokenizer(), data, texts, text_labels, ks=(1, 2, 5))
    expected = {
        "image_to_text": {"recall@1": 5.5 / 6, "recall@2": 1.0, "recall@5": 1.0,
                          "precision@1": 1.0, "precision@2": 3.5 / 6, "precision@5": 1.4 / 6},
        "text_to_image": {"recall@1": 4 / 5, "recall@2": 1.0, "recall@5": 1.0,
                          "precision@1": 1.0, "precision@2": 3.5 / 5, "precision@5": 1.4 / 5},
    }
    for direction, metrics in expected.items():
        for name, value in metrics.items():
            assert result[direction][name] == pytest.approx(value, abs=1e-12), (direction, name)
        assert result[direction]["queries_without_relevant"] == 0


def test_retrieval_with_two_prompts_swapped_gives_the_hand_computed_recall():
    """Effusion's and cardiomegaly's prompts swapped: image 0's top text is now the cardiomegaly
    prompt (irrelevant) and its own comes second; image 1 likewise; image 2 still has both
    relevant prompts on top. Recall@1 image -> text = (0 + 0 + 1/2 + 3) / 6."""
    data = with_no_finding(pattern_set(patients=1))
    texts, text_labels = prompt_gallery(load_knowledge(), data.categories)
    result = evaluate_retrieval(StripeModel(swap_rows(0, 1)), PromptTokenizer(), data, texts, text_labels, ks=(1, 2))
    assert result["image_to_text"]["recall@1"] == pytest.approx(3.5 / 6, abs=1e-12)
    assert result["image_to_text"]["recall@2"] == pytest.approx(1.0, abs=1e-12)
    # Text -> image: the effusion prompt ranks image 1 first (irrelevant), image 2 second.
    assert result["text_to_image"]["recall@1"] == pytest.approx(3 / 5, abs=1e-12)
    assert result["text_to_image"]["recall@2"] == pytest.approx((0.5 + 0.5 + 3) / 5, abs=1e-12)


# --- fine-tuning: a separable case ---------------------------------------------------------


def test_finetune_on_a_separable_set_gives_auc_one():
    """Each class lights its own stripe of a 64-pixel image (the tiny model's size), and every
    test image has identical twins in TRAIN: a linear head on the frozen random encoder, and full
    fine-tuning from it, must rank every positive above every negative of every class."""
    data = pattern_set(size=64)
    # At lr 3e-4 the lowest positive probability stays >= 0.17 above the highest negative in every
    # class (seeds 0-2, measured); at 1e-3 full fine-tuning saturates effusion's sigmoid and that
    # gap shrinks to 1e-13, one rounding away from a tie.
    result = run_finetune(data, "tiny", None, fractions=(1.0,), inits=("random",), seeds=(0,), n_boot=20,
                          config=FinetuneConfig(epochs=2, probe_steps=200, lr=3e-4))
    assert {run["mode"] for run in result["runs"]} == {"linear", "full"}
    for run in result["runs"]:
        report = run["report"]
        assert report["n_test"] == 2 * len(PATTERN) and sorted(report["per_class"]) == sorted(CATEGORIES)
        assert {c: e["auc"] for c, e in report["per_class"].items()} == dict.fromkeys(CATEGORIES, 1.0), run["mode"]


# --- segmentation: Dice of a mask offset by k pixels ---------------------------------------


class ShiftNet(nn.Module):
    """A fixed convolution whose logit at (y, x) is +20 where the input is white at (y - dy, x - dx)
    and -20 where it is black: it predicts the input mask moved by (dy, dx) pixels."""

    def __init__(self, dy: int, dx: int, reach: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2 * reach + 1, padding=reach)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, reach - dy, reach - dx] = 40.0
            self.conv.bias.fill_(-20.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


@pytest.mark.parametrize(("dy", "dx", "dice", "iou"), [
    (0, 0, 1.0, 1.0),
    # 8 x 8 square moved 2 columns: overlap 8 x 6 = 48; Dice 2*48 / 128, IoU 48 / 80.
    (0, 2, 0.75, 0.6),
    # moved 2 rows and 2 columns: overlap 6 x 6 = 36; Dice 72 / 128, IoU 36 / 92.
    (2, 2, 0.5625, 36 / 92),
    # moved 3 rows: overlap 5 x 8 = 40; Dice 80 / 128, IoU 40 / 88.
    (3, 0, 0.625, 40 / 88),
])
def test_dice_of_a_mask_offset_by_k_pixels(dy, dx, dice, iou):
    truth = np.zeros((2, 1, 24, 24), dtype=bool)
    truth[0, 0, 6:14, 8:16] = True  # image 0: an 8 x 8 square
    # image 1: no pneumothorax, and none predicted: Dice = IoU = 1 (the SIIM rule)
    images = torch.from_numpy(truth.astype(np.uint8) * 255)
    predicted = predict_masks(ShiftNet(dy, dx), images, torch.device("cpu")) >= 0.5
    assert predicted[0].sum() == 64  # the whole square, moved, is predicted
    dices, ious = dice_iou(predicted, truth)
    assert dices[0] == pytest.approx(dice, abs=1e-12) and ious[0] == pytest.approx(iou, abs=1e-12)
    assert dices[1] == 1.0 and ious[1] == 1.0


def test_dice_split_into_images_with_and_without_a_mask():
    """Four test images: two mask-free (one predicted empty: Dice 1; one with a false speck: 0)
    and two with a mask (Dice 0.75 and 1). Mean 2.75 / 4; with a mask 1.75 / 2; mask-free images
    predicted empty 1 / 2."""
    dice = np.array([1.0, 0.0, 0.75, 1.0])
    summary = summarise(dice, dice, n_boot=10, seed=0, with_mask=np.array([False, False, True, True]))
    assert summary["mean_dice"] == pytest.approx(0.6875, abs=1e-12)
    assert summary["mean_dice_with_mask"] == pytest.approx(0.875, abs=1e-12)
    assert summary["empty_predicted_without_mask"] == pytest.approx(0.5, abs=1e-12)
    assert summary["test_images_with_mask"] == 2


def test_image_tensor_keeps_the_stripes_where_they_were_drawn():
    """The known answers above rest on the decode keeping pixels in place at the model's size."""
    data = pattern_set(patients=1)
    np.testing.assert_array_equal(image_tensor(data, SIZE)[:, 0].numpy(), data.arrays)
